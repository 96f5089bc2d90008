//! Soft prompts, for the methods that learn one (prompt tuning, DePT): the prompt's start as
//! PEFT makes it and the prompt fields of PEFT's prompt-learning `adapter_config.json`. The
//! host reads the prompt ([`crate::Method::prompt`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::Tensor;

use crate::host::{Host, Init, ModelInfo};
use crate::peft::{bad_key, get, require_default};
use crate::{Error, Result};

/// How the prompt starts (PEFT's `prompt_tuning_init`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PromptInit {
    /// N(0, 1), as PEFT's prompt embedding (an `nn.Embedding`) is initialised.
    #[default]
    Random,
    /// The token embeddings of a text.
    Text,
}

/// A soft prompt's shape and start: the settings a soft-prompt method's config holds
/// (`#[serde(flatten)]`), PEFT's names in brackets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PromptSpec {
    /// Soft prompt vectors (`num_virtual_tokens`).
    pub tokens: i64,
    /// `random` or `text` (`prompt_tuning_init`).
    pub init: PromptInit,
    /// With `init = "text"`: the text whose token embeddings start the prompt
    /// (`prompt_tuning_init_text`).
    pub init_text: Option<String>,
}

impl PromptSpec {
    /// `tokens` vectors drawn at random.
    pub fn random(tokens: i64) -> Self {
        Self { tokens, init: PromptInit::Random, init_text: None }
    }
}

/// The embedding table's key in the checkpoint.
const EMBED_TOKENS: &str = "model.decoder.embed_tokens.weight";

impl PromptSpec {
    /// The trainable prompt, `prompt_embeddings` `[tokens, word_embed_proj_dim]`: N(0, 1), or
    /// as PEFT starts it from a text, the embeddings of its ids (with `</s>`) repeated and cut
    /// to the prompt's length.
    pub fn create(&self, host: &mut Host<'_>, model: &ModelInfo) -> Result<Tensor> {
        if self.tokens <= 0 {
            return Err(Error::msg(format!("`tokens` must be positive, got {}", self.tokens)));
        }
        let shape = [self.tokens, model.word_embed_proj_dim];
        match (self.init, &self.init_text) {
            (PromptInit::Random, _) => host.parameter("prompt_embeddings", &shape, Init::Normal { std: 1.0 }),
            (PromptInit::Text, None) => Err(Error::msg("`init = \"text\"` needs `init_text`")),
            (PromptInit::Text, Some(text)) => {
                let ids = host.encode(text, true)?;
                let ids: Vec<i64> = ids.iter().copied().cycle().take(self.tokens as usize).collect();
                let table = host.parameter(EMBED_TOKENS, &model.parameters[EMBED_TOKENS], Init::Base)?;
                let prompt = host.parameter("prompt_embeddings", &shape, Init::Zeros)?;
                let rows = table.index_select(0, &Tensor::from_slice(&ids).to_device(table.device()));
                tch::no_grad(|| prompt.shallow_clone().f_copy_(&rows))?;
                Ok(prompt)
            }
        }
    }

    /// The prompt of a PEFT prompt-learning config; refuses settings ftlab does not implement.
    pub fn from_peft(c: &Value) -> Result<Self> {
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
        Ok(Self { tokens, init, init_text })
    }

    /// The fields of a PEFT prompt-learning `adapter_config.json` of type `peft_type`, for a
    /// prompt on `model`.
    pub fn peft_config(&self, peft_type: &str, model: &ModelInfo) -> Value {
        json!({
            "auto_mapping": null,
            "base_model_name_or_path": model.name,
            "inference_mode": true,
            "modules_to_save": null,
            "num_attention_heads": model.num_attention_heads,
            "num_layers": model.num_hidden_layers,
            "num_transformer_submodules": 1,
            "num_virtual_tokens": self.tokens,
            "peft_type": peft_type,
            "prompt_tuning_init": if self.init == PromptInit::Text { "TEXT" } else { "RANDOM" },
            "prompt_tuning_init_text": self.init_text,
            "revision": null,
            "task_type": "CAUSAL_LM",
            "token_dim": model.word_embed_proj_dim,
            "tokenizer_kwargs": null,
            "tokenizer_name_or_path": self.init_text.as_ref().map(|_| &model.name),
        })
    }
}
