//! `prompt_tuning`: prompt tuning (Lester et al., 2021, <https://arxiv.org/abs/2104.08691>)
//! with HF PEFT's semantics: every input reads m trainable vectors (a soft prompt) before its
//! tokens, positions counting them first, as PEFT feeds OPT (the host reads the prompt once per
//! pass and shares its keys/values with every row: PEFT's logits). Only the prompt trains. It
//! starts as PEFT's does: N(0, 1) (an `nn.Embedding`'s init), or the token embeddings of a text
//! (its ids with `</s>`, repeated or cut to m). A run's prompt is saved as, and loaded from,
//! PEFT's `PROMPT_TUNING` adapter (`prompt_embeddings`, `[m, word_embed_proj_dim]`); it cannot
//! be merged into weights.
//!
//! A teacher that runs without adapters (context distillation's) reads no prompt, so a context
//! can be distilled into the soft prompt. Inputs read after kept keys/values get no second
//! prompt: the kept prefix holds it already.

use ftlab_sdk::prelude::*;
use ftlab_sdk::serde_json::Value;
use ftlab_sdk::soft_prompt::PromptSpec;
use ftlab_sdk::ModelInfo;

/// Hyperparameters, set in an experiment file under `prompt_tuning`: the prompt's (20 vectors,
/// random, by default).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    /// The soft prompt.
    #[serde(flatten)]
    pub prompt: PromptSpec,
}

impl Default for Config {
    fn default() -> Self {
        Self { prompt: PromptSpec::random(20) }
    }
}

/// The soft prompt.
pub struct PromptTuning {
    prompt: Tensor,
    config: Config,
    /// The base model's name, PEFT's `base_model_name_or_path`, and its shape for the export.
    model: ModelInfo,
}

impl Method for PromptTuning {
    const NAME: &'static str = "prompt_tuning";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "Prompt tuning: trainable vectors prepended to the input embeddings, with HF \
        PEFT's semantics and names (https://arxiv.org/abs/2104.08691).";
    type Config = Config;
    const EXPORT_TYPE: Option<&'static str> = Some("PROMPT_TUNING");

    fn new(config: Config, host: &mut Host) -> Result<Self> {
        let model = host.model()?;
        let prompt = config.prompt.create(host, &model)?;
        Ok(Self { prompt, config, model })
    }

    fn config_from_export(c: &Value) -> Result<Config> {
        Ok(Config { prompt: PromptSpec::from_peft(c)? })
    }

    fn export(&self) -> Result<Option<Export>> {
        let config = self.config.prompt.peft_config("PROMPT_TUNING", &self.model);
        Ok(Some(Export { config, tensors: vec![("prompt_embeddings".into(), self.prompt.detach().copy())] }))
    }

    /// PEFT saves the prompt without the wrapped model's prefix.
    fn import(&mut self, weights: &Tensors) -> Result<()> {
        ftlab_sdk::peft::import_prefixed("", std::iter::once(("prompt_embeddings".into(), &self.prompt)), weights)
    }

    fn sites(&self) -> Result<Vec<Site>> {
        Ok(vec![Site::Prompt])
    }

    fn prompt(&self) -> Result<Option<Tensor>> {
        Ok(Some(self.prompt.shallow_clone()))
    }
}

ftlab_sdk::export_library!(PromptTuning);
