//! `pbft`: pattern-based fine-tuning, the paper's main method (Mosbach et al., 2023,
//! <https://arxiv.org/abs/2305.16938>, after PET, <https://arxiv.org/abs/2001.07676>): the
//! prompt ends where the label word would follow, and the loss is the cross-entropy of the LM
//! head's logits at the last prompt token against the gold label word's token — over the full
//! vocabulary, as llmft's `OPTWithLMClassifier` does, or over the verbalizer tokens only.
//! Prediction scores each class by its verbalizer token's logit.

use ftlab_sdk::prelude::*;

/// Hyperparameters, set in an experiment file under `pbft`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    /// Cross-entropy over the verbalizer tokens only, instead of the full vocabulary (default
    /// false, the paper's setting). The full-vocabulary loss also pushes down every other word.
    pub restrict_to_verbalizer: bool,
}

/// The LM head as the classifier.
pub struct Pbft {
    config: Config,
}

impl Method for Pbft {
    const NAME: &'static str = "pbft";
    const ROLE: Role = Role::Objective;
    const DESCRIPTION: &'static str = "Pattern-based fine-tuning: cross-entropy of the LM logits at the last prompt \
        token against the label word (https://arxiv.org/abs/2305.16938).";
    type Config = Config;

    fn new(config: Config, _: &mut Host) -> Result<Self> {
        Ok(Self { config })
    }

    fn loss(&mut self, host: &mut Host, batch: &Batch) -> Result<Loss> {
        if self.config.restrict_to_verbalizer {
            let scores = verbalizer_logits(host, batch, true)?; // (B, C)
            return Ok(Loss::new(scores.to_kind(Kind::Float).cross_entropy_for_logits(batch.labels()?)));
        }
        let request = ForwardRequest { logits: Logits::Last, ..Default::default() };
        let out = host.forward(batch.input_ids()?, batch.attention_mask()?, &request)?;
        let logits = out.logits.ok_or_else(|| Error::msg("the host returned no logits"))?; // (B, V)
        Ok(Loss::new(logits.to_kind(Kind::Float).cross_entropy_for_logits(batch.label_token_ids()?)))
    }
}

ftlab_sdk::export_library!(Pbft);
