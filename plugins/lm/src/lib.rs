//! `lm`: causal language modelling, the objective models are pretrained with (Radford et al.,
//! 2018) and supervised fine-tuning (SFT) uses: next-token cross-entropy over every token of a
//! document after `</s>`, or only over the response of a prompt/response row, as TRL's
//! `SFTTrainer` does by default for prompt-completion data. It trains on the `text` task
//! (`--task text --file corpus.txt|.jsonl|.parquet`), which the run scores by held-out
//! perplexity; the per-step perplexity is logged beside the loss.

use ftlab_sdk::prelude::*;

/// Hyperparameters, set in an experiment file under `method`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Config {
    /// For prompt/response rows, the loss reads only the response (default true); false: the
    /// prompt's tokens too. Documents always train on every token.
    pub response_only: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { response_only: true }
    }
}

/// Next-token prediction over the rows' target tokens.
pub struct Lm {
    config: Config,
}

impl Method for Lm {
    const NAME: &'static str = "lm";
    const ROLE: Role = Role::Objective;
    const DESCRIPTION: &'static str = "Causal language modelling: next-token cross-entropy over documents, or over \
        responses only (SFT), on the `text` task (--task text --file F).";
    type Config = Config;

    fn new(config: Config, host: &mut Host) -> Result<Self> {
        if !host.task()?.label_words.is_empty() {
            return Err(Error::msg(
                "the lm objective trains on documents: use --task text --file corpus.txt|.jsonl|.parquet",
            ));
        }
        Ok(Self { config })
    }

    fn loss(&mut self, host: &mut Host, batch: &Batch) -> Result<Loss> {
        let starts = match self.config.response_only {
            true => batch.target_start()?.shallow_clone(),
            false => batch.target_start()?.clamp_max(1),
        };
        let (targets, scored) = next_token_targets(batch.input_ids()?, batch.attention_mask()?, &starts);
        if !bool::try_from(scored.any())? {
            return Err(Error::msg("no tokens to predict in this batch (empty documents?)"));
        }
        let targets = targets.masked_fill(&scored.logical_not(), -100);
        let logits = all_logits(host, batch, true)?;
        let loss = token_cross_entropy(&logits.narrow(1, 0, targets.size()[1]), &targets);
        let perplexity = loss.double_value(&[]).exp();
        Ok(Loss { loss, metrics: vec![("perplexity".into(), perplexity)] })
    }

    /// Logits at every position: the run scores held-out loss and perplexity from them.
    fn predict(&mut self, host: &mut Host, batch: &Batch) -> Result<Tensor> {
        all_logits(host, batch, false)
    }
}

ftlab_sdk::export_library!(Lm);
