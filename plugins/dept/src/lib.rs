//! `dept`: decomposed prompt tuning (Shi & Lipani, 2024, "DePT: Decomposed Prompt Tuning for
//! Parameter-Efficient Fine-tuning", <https://arxiv.org/abs/2309.05173>), an adapter: a shorter
//! soft prompt (m vectors, read first as `prompt_tuning`'s) plus a trainable low-rank offset
//! of the input token embeddings by position, `E[t] + (alpha / √r)·(A·B)[t]` with A
//! `[max_length, r]` Kaiming-uniform and B `[r, E]` zero, so training starts from plain prompt
//! tuning — as the authors' code (ZhengxiangShi/DePT, `PromptEmbeddingLoRA`) defines it.
//!
//! DePT trains the two parts at two learning rates: `train.lr` is the prompt's and
//! `train.lr_groups = { "dept.lora_embedding" = … }` the offset's (the paper's GLUE runs: 3e-1
//! and one of 5e-3, 3e-1, 5e-4). Defaults are its GLUE scripts': m = 40, r = 45, alpha = 8 (its
//! config's default), 256 positions. Saved as, and loaded from, the authors' PEFT fork's
//! `PROMPT_TUNING_LORA` adapter (`prompt_embeddings`, `prompt_encoder.lora_embedding_A`,
//! `prompt_encoder.lora_embedding_B`); it cannot be merged into weights.

use ftlab_sdk::peft::{bad_key, get, number, require_default};
use ftlab_sdk::prelude::*;
use ftlab_sdk::serde_json::{json, Value};
use ftlab_sdk::soft_prompt::PromptSpec;
use ftlab_sdk::ModelInfo;

/// Hyperparameters, set in an experiment file under `dept` (the authors' names in brackets).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    /// The soft prompt (40 vectors, random, by default).
    #[serde(flatten)]
    pub prompt: PromptSpec,
    /// Rank of the embedding offset (`r`); default 45.
    pub rank: i64,
    /// The offset is scaled by `alpha / √rank` (`lora_alpha`); default 8.
    pub alpha: f64,
    /// Input positions the offset covers (`max_length`, the authors' padded input length);
    /// default 256. A longer input is an error.
    pub max_length: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self { prompt: PromptSpec::random(40), rank: 45, alpha: 8.0, max_length: 256 }
    }
}

/// The soft prompt and the embedding offset's factors.
pub struct Dept {
    prompt: Tensor,
    a: Tensor,
    b: Tensor,
    config: Config,
    model: ModelInfo,
}

impl Dept {
    /// The saved tensors by name: PEFT saves a prompt without the model's prefix.
    fn tensors(&self) -> [(String, &Tensor); 3] {
        [
            ("prompt_embeddings".into(), &self.prompt),
            ("prompt_encoder.lora_embedding_A".into(), &self.a),
            ("prompt_encoder.lora_embedding_B".into(), &self.b),
        ]
    }
}

impl Method for Dept {
    const NAME: &'static str = "dept";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "DePT: a shorter soft prompt plus a trainable low-rank offset of the input \
        token embeddings by position, each at its own learning rate (https://arxiv.org/abs/2309.05173).";
    type Config = Config;
    const EXPORT_TYPE: Option<&'static str> = Some("PROMPT_TUNING_LORA");

    fn new(config: Config, host: &mut Host) -> Result<Self> {
        if config.rank <= 0 || config.max_length <= 0 || !config.alpha.is_finite() {
            return Err(Error::msg(format!(
                "dept: rank and max_length must be positive and alpha finite; got {}, {}, {}",
                config.rank, config.max_length, config.alpha
            )));
        }
        let model = host.model()?;
        let prompt = config.prompt.create(host, &model)?;
        let a = host.parameter(
            "lora_embedding_A",
            &[config.max_length, config.rank],
            Init::KaimingUniform { fan_in: config.rank },
        )?;
        let b = host.parameter("lora_embedding_B", &[config.rank, model.word_embed_proj_dim], Init::Zeros)?;
        Ok(Self { prompt, a, b, config, model })
    }

    fn config_from_export(c: &Value) -> Result<Config> {
        for (key, default) in [("load_lora_embeddings", json!(true)), ("load_lora_embedding_B", json!(true))] {
            require_default(c, key, &default)?;
        }
        let prompt = PromptSpec::from_peft(c)?;
        let positive = |key: &str, default: i64| match get(c, key) {
            None => Ok(default),
            Some(v) => v.as_i64().filter(|&n| n > 0).ok_or_else(|| bad_key(key, "expected a positive integer")),
        };
        let alpha = get(c, "lora_alpha")
            .map_or(Some(8.0), Value::as_f64)
            .ok_or_else(|| bad_key("lora_alpha", "expected a number"))?;
        Ok(Config { prompt, rank: positive("r", 8)?, alpha, max_length: positive("max_length", 256)? })
    }

    fn export(&self) -> Result<Option<Export>> {
        let mut config = self.config.prompt.peft_config("PROMPT_TUNING_LORA", &self.model);
        for (key, value) in [
            ("r", json!(self.config.rank)),
            ("lora_alpha", number(self.config.alpha)),
            ("max_length", json!(self.config.max_length)),
            ("hidden_size", json!(self.model.hidden_size)),
            ("save_lora_embeddings", json!(true)),
            ("load_lora_embeddings", json!(true)),
            ("load_lora_embedding_B", json!(true)),
        ] {
            config[key] = value;
        }
        let tensors = self.tensors().into_iter().map(|(name, t)| (name, t.detach().copy())).collect();
        Ok(Some(Export { config, tensors }))
    }

    fn import(&mut self, weights: &Tensors) -> Result<()> {
        ftlab_sdk::peft::import_prefixed("", self.tensors().into_iter(), weights)
    }

    fn sites(&self) -> Result<Vec<Site>> {
        Ok(vec![Site::Prompt, Site::Embeddings])
    }

    fn prompt(&self) -> Result<Option<Tensor>> {
        Ok(Some(self.prompt.shallow_clone()))
    }

    /// The tokens follow the prompt (and whatever else the kept keys/values hold), so their
    /// input positions start after it.
    fn embeddings(&self, embeds: Tensor, mask: Tensor) -> Result<(Tensor, Tensor)> {
        let t = embeds.size()[1];
        let start = mask.size()[1] - t - self.config.prompt.tokens;
        if start < 0 || start + t > self.config.max_length {
            return Err(Error::msg(format!(
                "dept: input positions {start}..{} are outside the offset's max_length {}",
                start + t,
                self.config.max_length
            )));
        }
        let scale = self.config.alpha / (self.config.rank as f64).sqrt();
        let offset = self.a.narrow(0, start, t).matmul(&self.b) * scale; // (T, E)
        Ok((&embeds + offset.to_kind(embeds.kind()).unsqueeze(0), mask))
    }
}

ftlab_sdk::export_library!(Dept);
