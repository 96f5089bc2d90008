//! `otr`: one-token rollout (Ming et al., 2025, "One-Token Rollout: Guiding Supervised
//! Fine-Tuning of LLMs with Policy Gradient", <https://arxiv.org/abs/2509.26313>), an objective.
//!
//! Each target token is a one-step episode: K tokens are sampled from the detached policy at
//! temperature τ, a sample that is the gold token earns reward 1 and any other β, and the loss is
//! the policy gradient's `-mean_k r(a_k) log π(a_k)`. Supervised data so becomes an on-policy
//! signal: the gold token is reinforced as often as the model would say it, and the wrong tokens
//! it does say are pushed down. `estimator = "exact"` takes the expectation instead,
//! `-Σ_a q(a) r(a) log π(a)` with `q = softmax(z / τ)` detached, whose gradient the sampled loss
//! estimates without bias. Samples come from libtorch's generator, which the run seeds per
//! optimizer step, so a resumed run draws the same ones. The rollout objective's value says
//! little about progress (β < 0 makes it negative while wrong tokens are still sampled), so the
//! training loss reported is the gold tokens' cross-entropy, with the rollout's gradient; the
//! objective itself is logged as `rollout`, the share of samples that were gold as `gold_share`.
//!
//! On a classification task the target is the label word after the prompt (where pbft takes its
//! cross-entropy) and prediction scores the verbalizer there. On the `text` task the targets are
//! every response token (every token of a document), averaged over tokens as `lm` does: the
//! paper's setting, an alternative to SFT.

mod loss;

use ftlab_sdk::prelude::*;

pub use loss::{Estimator, Rollout};

/// The rollout objective, at the answer token or at every response token.
pub struct Otr {
    rollout: Rollout,
    documents: bool,
}

impl Method for Otr {
    const NAME: &'static str = "otr";
    const ROLE: Role = Role::Objective;
    const DESCRIPTION: &'static str = "One-token rollout: K tokens sampled from the tempered, detached policy earn \
        reward 1 if gold and beta otherwise; a policy-gradient loss at the answer token, or at every response \
        token on the text task (https://arxiv.org/abs/2509.26313).";
    type Config = Rollout;

    fn new(rollout: Rollout, host: &mut Host) -> Result<Self> {
        rollout.validate()?;
        Ok(Self { rollout, documents: host.task()?.label_words.is_empty() })
    }

    fn loss(&mut self, host: &mut Host, batch: &Batch) -> Result<Loss> {
        let (logits, gold) = if self.documents {
            let (targets, scored) =
                next_token_targets(batch.input_ids()?, batch.attention_mask()?, batch.target_start()?);
            let logits = all_logits(host, batch, true)?.narrow(1, 0, targets.size()[1]);
            let vocab = logits.size()[2];
            (logits.masked_select(&scored.unsqueeze(-1)).reshape([-1, vocab]), targets.masked_select(&scored))
        } else {
            (last_token_logits(host, batch, true)?, batch.label_token_ids()?.shallow_clone())
        };
        if gold.numel() == 0 {
            return Err(Error::msg("no tokens to predict in this batch (empty documents?)"));
        }
        let logits = logits.to_kind(Kind::Float);
        let (rollout, gold_share) = self.rollout.loss(&logits, &gold);
        // Report the gold token's cross-entropy, which falls as the model learns and compares with
        // pbft's and lm's, and backpropagate the rollout's gradient: the two differ by a constant.
        let cross_entropy = logits.detach().cross_entropy_for_logits(&gold);
        let metrics = vec![("rollout".into(), rollout.double_value(&[])), ("gold_share".into(), gold_share)];
        Ok(Loss { loss: &rollout - rollout.detach() + cross_entropy, metrics })
    }

    /// The verbalizer's logits at the answer, or (the `text` task) logits at every position, from
    /// which the run scores held-out perplexity.
    fn predict(&mut self, host: &mut Host, batch: &Batch) -> Result<Tensor> {
        match self.documents {
            true => all_logits(host, batch, false),
            false => last_token_logits(host, batch, false),
        }
    }
}

ftlab_sdk::export_library!(Otr);
