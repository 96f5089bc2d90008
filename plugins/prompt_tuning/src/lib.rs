//! `prompt_tuning`: prompt tuning (Lester et al., 2021, <https://arxiv.org/abs/2104.08691>)
//! with HF PEFT's semantics: m trainable vectors (a soft prompt) are prepended to every input's
//! token embeddings, the attention mask extended by m ones, so positions count them first, as
//! PEFT feeds OPT. Only the prompt trains. It starts as PEFT's does: N(0, 1) (an
//! `nn.Embedding`'s init), or the token embeddings of a text (its ids with `</s>`, repeated or
//! cut to m). A run's prompt is saved as, and loaded from, PEFT's `PROMPT_TUNING` adapter
//! (`prompt_embeddings`, `[m, word_embed_proj_dim]`); it cannot be merged into weights.
//!
//! A teacher that runs without adapters (context distillation's) reads no prompt, so a context
//! can be distilled into the soft prompt. Inputs read after kept keys/values get no second
//! prompt: the kept prefix holds it already.

use ftlab_sdk::peft::{bad_key, get, require_default};
use ftlab_sdk::prelude::*;
use ftlab_sdk::serde_json::{json, Value};
use ftlab_sdk::ModelInfo;

/// How the prompt starts (PEFT's `prompt_tuning_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PromptInit {
    /// N(0, 1), as PEFT's prompt embedding is initialised.
    Random,
    /// The token embeddings of `init_text`.
    Text,
}

/// Hyperparameters, set in an experiment file under `prompt_tuning` (PEFT's names in brackets).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Config {
    /// Soft prompt vectors (`num_virtual_tokens`); default 20.
    pub tokens: i64,
    /// `random` (default) or `text` (`prompt_tuning_init`).
    pub init: PromptInit,
    /// With `init = "text"`: the text whose token embeddings start the prompt
    /// (`prompt_tuning_init_text`).
    pub init_text: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self { tokens: 20, init: PromptInit::Random, init_text: None }
    }
}

/// The soft prompt.
pub struct PromptTuning {
    prompt: Tensor,
    config: Config,
    /// The base model's name, PEFT's `base_model_name_or_path`, and its shape for the export.
    model: ModelInfo,
}

/// The embedding table's key in the checkpoint.
const EMBED_TOKENS: &str = "model.decoder.embed_tokens.weight";

impl Method for PromptTuning {
    const NAME: &'static str = "prompt_tuning";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "Prompt tuning: trainable vectors prepended to the input embeddings, with HF \
        PEFT's semantics and names (https://arxiv.org/abs/2104.08691).";
    type Config = Config;
    const EXPORT_TYPE: Option<&'static str> = Some("PROMPT_TUNING");

    fn new(config: Config, host: &mut Host) -> Result<Self> {
        if config.tokens <= 0 {
            return Err(Error::msg(format!("`tokens` must be positive, got {}", config.tokens)));
        }
        let model = host.model()?;
        let shape = [config.tokens, model.word_embed_proj_dim];
        let prompt = match (config.init, &config.init_text) {
            (PromptInit::Random, _) => host.parameter("prompt_embeddings", &shape, Init::Normal { std: 1.0 })?,
            (PromptInit::Text, None) => return Err(Error::msg("`init = \"text\"` needs `init_text`")),
            (PromptInit::Text, Some(text)) => {
                // PEFT: the text's ids (with `</s>`), repeated and cut to the prompt's length.
                let ids = host.encode(text, true)?;
                let ids: Vec<i64> = ids.iter().copied().cycle().take(config.tokens as usize).collect();
                let table = host.parameter(EMBED_TOKENS, &model.parameters[EMBED_TOKENS], Init::Base)?;
                let prompt = host.parameter("prompt_embeddings", &shape, Init::Zeros)?;
                let rows = table.index_select(0, &Tensor::from_slice(&ids).to_device(table.device()));
                tch::no_grad(|| prompt.shallow_clone().f_copy_(&rows))?;
                prompt
            }
        };
        Ok(Self { prompt, config, model })
    }

    fn config_from_export(c: &Value) -> Result<Config> {
        for (key, default) in [("num_transformer_submodules", json!(1)), ("modules_to_save", Value::Null)] {
            require_default(c, key, &default)?;
        }
        let tokens = get(c, "num_virtual_tokens").and_then(Value::as_i64).filter(|&m| m > 0);
        let tokens = tokens.ok_or_else(|| bad_key("num_virtual_tokens", "expected a positive integer"))?;
        let init = match get(c, "prompt_tuning_init").and_then(Value::as_str).unwrap_or("RANDOM") {
            "RANDOM" => PromptInit::Random,
            "TEXT" => PromptInit::Text,
            other => return Err(bad_key("prompt_tuning_init", format!("`{other}`: expected RANDOM or TEXT"))),
        };
        let init_text = get(c, "prompt_tuning_init_text").and_then(Value::as_str).map(String::from);
        Ok(Config { tokens, init, init_text })
    }

    fn export(&self) -> Result<Option<Export>> {
        let (c, m) = (&self.config, &self.model);
        let config = json!({
            "auto_mapping": null,
            "base_model_name_or_path": m.name,
            "inference_mode": true,
            "modules_to_save": null,
            "num_attention_heads": m.num_attention_heads,
            "num_layers": m.num_hidden_layers,
            "num_transformer_submodules": 1,
            "num_virtual_tokens": c.tokens,
            "peft_type": "PROMPT_TUNING",
            "prompt_tuning_init": if c.init == PromptInit::Text { "TEXT" } else { "RANDOM" },
            "prompt_tuning_init_text": c.init_text,
            "revision": null,
            "task_type": "CAUSAL_LM",
            "token_dim": m.word_embed_proj_dim,
            "tokenizer_kwargs": null,
            "tokenizer_name_or_path": c.init_text.as_ref().map(|_| &m.name),
        });
        Ok(Some(Export { config, tensors: vec![("prompt_embeddings".into(), self.prompt.detach().copy())] }))
    }

    fn import(&mut self, weights: &Tensors) -> Result<()> {
        // PEFT saves the prompt without the wrapped model's prefix.
        let prompt = weights.tensors.iter().find(|(name, _)| name.as_str() == "prompt_embeddings");
        let (_, tensor) = prompt.ok_or("missing tensor `prompt_embeddings`")?;
        if let Some((name, _)) = weights.tensors.iter().find(|(name, _)| name.as_str() != "prompt_embeddings") {
            return Err(Error::msg(format!(
                "unexpected tensor `{name}`: a prompt-tuning adapter holds only `prompt_embeddings`"
            )));
        }
        if tensor.size() != self.prompt.size() {
            let (found, expected) = (tensor.size(), self.prompt.size());
            return Err(Error::msg(format!(
                "tensor `prompt_embeddings` has shape {found:?}, the config implies {expected:?}"
            )));
        }
        tch::no_grad(|| self.prompt.shallow_clone().f_copy_(&tensor.to_kind(self.prompt.kind())))?;
        Ok(())
    }

    fn sites(&self) -> Vec<Site> {
        vec![Site::Embeddings]
    }

    fn embeddings(&self, embeds: Tensor, mask: Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = (embeds.size()[0], embeds.size()[1]);
        if mask.size()[1] > t {
            return Ok((embeds, mask)); // read after kept keys/values, which hold the prompt
        }
        let prompt = self.prompt.to_kind(embeds.kind()).unsqueeze(0).expand([b, -1, -1], false);
        let ones = Tensor::ones([b, self.config.tokens], (mask.kind(), mask.device()));
        Ok((Tensor::cat(&[prompt, embeds], 1), Tensor::cat(&[ones, mask], 1)))
    }
}

ftlab_sdk::export_library!(PromptTuning);
