//! OPT configuration: a serde mirror of Hugging Face's `config.json`, validated into [`OptConfig`].
//!
//! Field names and defaults are those of `transformers.OPTConfig`, so any `facebook/opt-*`
//! `config.json` loads unchanged. Reference: Zhang et al., 2022, "OPT: Open Pre-trained
//! Transformer Language Models", <https://huggingface.co/docs/transformers/model_doc/opt>.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// facebook/opt-125m's `config.json`, verbatim: the shape benchmarks measure.
pub const OPT_125M_CONFIG: &str = r#"{"_name_or_path": "facebook/opt-125m", "activation_dropout": 0.0, "activation_function": "relu", "architectures": ["OPTForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 2, "do_layer_norm_before": true, "dropout": 0.1, "eos_token_id": 2, "ffn_dim": 3072, "hidden_size": 768, "init_std": 0.02, "layerdrop": 0.0, "max_position_embeddings": 2048, "model_type": "opt", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1, "prefix": "</s>", "torch_dtype": "float16", "transformers_version": "4.21.0.dev0", "use_cache": true, "vocab_size": 50272, "word_embed_proj_dim": 768}"#;

/// `config.json` as HF writes it. Unknown keys (`architectures`, `torch_dtype`, …) are allowed:
/// the file is HF's format, not ours.
#[derive(Debug, Clone, Deserialize, Serialize)]
struct OptConfigFile {
    model_type: Option<String>,
    #[serde(default = "defaults::vocab_size")]
    vocab_size: i64,
    #[serde(default = "defaults::hidden_size")]
    hidden_size: i64,
    #[serde(default = "defaults::num_hidden_layers")]
    num_hidden_layers: i64,
    #[serde(default = "defaults::ffn_dim")]
    ffn_dim: i64,
    #[serde(default = "defaults::max_position_embeddings")]
    max_position_embeddings: i64,
    #[serde(default = "defaults::yes")]
    do_layer_norm_before: bool,
    #[serde(default)]
    _remove_final_layer_norm: bool,
    word_embed_proj_dim: Option<i64>,
    #[serde(default = "defaults::num_attention_heads")]
    num_attention_heads: i64,
    #[serde(default = "defaults::activation_function")]
    activation_function: String,
    #[serde(default = "defaults::dropout")]
    dropout: f64,
    #[serde(default)]
    attention_dropout: f64,
    #[serde(default)]
    activation_dropout: f64,
    #[serde(default = "defaults::yes")]
    enable_bias: bool,
    #[serde(default = "defaults::yes")]
    layer_norm_elementwise_affine: bool,
    #[serde(default = "defaults::init_std")]
    init_std: f64,
    #[serde(default = "defaults::pad_token_id")]
    pad_token_id: i64,
    #[serde(default = "defaults::bos_token_id")]
    bos_token_id: i64,
    #[serde(default = "defaults::eos_token_id")]
    eos_token_id: i64,
}

/// A key of `config.json` and what is wrong with its value.
type Invalid = (&'static str, String);

impl OptConfigFile {
    /// Checks every value a type cannot express: an OPT model, positive sizes, heads that divide
    /// the width, dropout probabilities, special tokens inside the vocabulary.
    fn check(&self) -> std::result::Result<(), Invalid> {
        match self.model_type.as_deref() {
            Some("opt") => {}
            Some(other) => return Err(("model_type", format!("unknown model_type `{other}`: ftlab supports `opt`"))),
            None => return Err(("model_type", "missing: ftlab supports `opt`".into())),
        }
        let projection = self.word_embed_proj_dim.unwrap_or(self.hidden_size);
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("ffn_dim", self.ffn_dim),
            ("max_position_embeddings", self.max_position_embeddings),
            ("num_attention_heads", self.num_attention_heads),
            ("word_embed_proj_dim", projection),
        ] {
            if value <= 0 {
                return Err((key, format!("must be positive, got {value}")));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            let message = format!("{} does not divide hidden_size {}", self.num_attention_heads, self.hidden_size);
            return Err(("num_attention_heads", message));
        }
        for (key, p) in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
            ("activation_dropout", self.activation_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err((key, format!("must be in [0, 1), got {p}")));
            }
        }
        for (key, id) in [
            ("pad_token_id", self.pad_token_id),
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
        ] {
            if !(0..self.vocab_size).contains(&id) {
                return Err((key, format!("{id} is outside the vocabulary of {}", self.vocab_size)));
            }
        }
        Ok(())
    }

    fn activation(&self) -> std::result::Result<Activation, Invalid> {
        match self.activation_function.as_str() {
            "relu" => Ok(Activation::Relu),
            "gelu" => Ok(Activation::Gelu),
            other => Err(("activation_function", format!("unsupported `{other}`: use relu or gelu"))),
        }
    }
}

/// HF `OPTConfig` defaults (those of facebook/opt-350m's architecture, as in transformers).
mod defaults {
    pub fn vocab_size() -> i64 {
        50272
    }
    pub fn hidden_size() -> i64 {
        768
    }
    pub fn num_hidden_layers() -> i64 {
        12
    }
    pub fn ffn_dim() -> i64 {
        3072
    }
    pub fn max_position_embeddings() -> i64 {
        2048
    }
    pub fn num_attention_heads() -> i64 {
        12
    }
    pub fn activation_function() -> String {
        "relu".into()
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn init_std() -> f64 {
        0.02
    }
    pub fn pad_token_id() -> i64 {
        1
    }
    pub fn bos_token_id() -> i64 {
        2
    }
    pub fn eos_token_id() -> i64 {
        2
    }
    pub fn yes() -> bool {
        true
    }
}

/// The MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// ReLU, what every published OPT uses.
    Relu,
    /// Exact GELU.
    Gelu,
}

/// A validated OPT configuration. Field names follow HF's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OptConfig {
    /// Rows of the embedding and LM-head matrices (50272 for OPT; the tokenizer has 50265).
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Number of decoder layers.
    pub num_hidden_layers: i64,
    /// Width of the MLP's inner layer.
    pub ffn_dim: i64,
    /// Longest sequence; the position table has two more rows (OPT's offset of 2).
    pub max_position_embeddings: i64,
    /// Pre-LN (true; every OPT except 350m) or post-LN (350m).
    pub do_layer_norm_before: bool,
    /// Whether a final layer norm follows the last layer (pre-LN models only).
    pub final_layer_norm: bool,
    /// Width of the token embeddings; differs from `hidden_size` only for 350m (512 vs 1024),
    /// which adds `project_in`/`project_out`.
    pub word_embed_proj_dim: i64,
    /// Attention heads per layer.
    pub num_attention_heads: i64,
    /// MLP activation.
    pub activation_function: Activation,
    /// Residual dropout in training mode (after attention and MLP outputs).
    pub dropout: f64,
    /// Dropout on attention probabilities in training mode.
    pub attention_dropout: f64,
    /// Dropout after the MLP activation in training mode.
    pub activation_dropout: f64,
    /// Whether the linear layers carry biases.
    pub enable_bias: bool,
    /// Whether layer norms have weight and bias.
    pub layer_norm_elementwise_affine: bool,
    /// Standard deviation of the normal init used for a randomly initialised model.
    pub init_std: f64,
    /// Padding token id (1 in OPT).
    pub pad_token_id: i64,
    /// Beginning-of-sequence id (`</s>`, 2 in OPT).
    pub bos_token_id: i64,
    /// End-of-sequence id (2 in OPT).
    pub eos_token_id: i64,
}

impl OptConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        Self::from_json(&text, path)
    }

    /// Parses and validates `config.json` text; `path` only names the source in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let file: OptConfigFile = serde_json::from_str(text).map_err(Error::json(path))?;
        Self::validate(file, path)
    }

    fn validate(f: OptConfigFile, path: &Path) -> Result<Self> {
        let bad = |(key, message): Invalid| Error::Config { path: path.into(), key: key.into(), message };
        f.check().map_err(bad)?;
        let activation_function = f.activation().map_err(bad)?;
        let word_embed_proj_dim = f.word_embed_proj_dim.unwrap_or(f.hidden_size);
        Ok(Self {
            vocab_size: f.vocab_size,
            hidden_size: f.hidden_size,
            num_hidden_layers: f.num_hidden_layers,
            ffn_dim: f.ffn_dim,
            max_position_embeddings: f.max_position_embeddings,
            do_layer_norm_before: f.do_layer_norm_before,
            final_layer_norm: f.do_layer_norm_before && !f._remove_final_layer_norm,
            word_embed_proj_dim,
            num_attention_heads: f.num_attention_heads,
            activation_function,
            dropout: f.dropout,
            attention_dropout: f.attention_dropout,
            activation_dropout: f.activation_dropout,
            enable_bias: f.enable_bias,
            layer_norm_elementwise_affine: f.layer_norm_elementwise_affine,
            init_std: f.init_std,
            pad_token_id: f.pad_token_id,
            bos_token_id: f.bos_token_id,
            eos_token_id: f.eos_token_id,
        })
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// Whether the embeddings are projected in and out (opt-350m).
    pub fn has_projections(&self) -> bool {
        self.word_embed_proj_dim != self.hidden_size
    }

    /// The `config.json` HF writes for this configuration (what [`OptConfig::from_json`] reads).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut json = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = json.as_object_mut() {
            map.remove("final_layer_norm");
            map.insert("_remove_final_layer_norm".into(), (self.do_layer_norm_before && !self.final_layer_norm).into());
            map.insert("model_type".into(), "opt".into());
            map.insert("architectures".into(), serde_json::json!(["OPTForCausalLM"]));
        }
        json
    }

    /// Parameter count, with the LM head tied to the embeddings (counted once).
    pub fn num_parameters(&self) -> i64 {
        let (d, f, e) = (self.hidden_size, self.ffn_dim, self.word_embed_proj_dim);
        let b = |n: i64| if self.enable_bias { n } else { 0 };
        let ln = if self.layer_norm_elementwise_affine { 2 * d } else { 0 };
        let attention = 4 * (d * d + b(d));
        let mlp = d * f + b(f) + f * d + b(d);
        let layer = attention + mlp + 2 * ln;
        let embeddings = self.vocab_size * e + (self.max_position_embeddings + 2) * d;
        let projections = if self.has_projections() { 2 * d * e } else { 0 };
        let final_ln = if self.final_layer_norm { ln } else { 0 };
        self.num_hidden_layers * layer + embeddings + projections + final_ln
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPT_125M: &str = OPT_125M_CONFIG;

    #[test]
    fn hf_json_round_trips() {
        for json in [
            OPT_125M.to_string(),
            OPT_125M.replace("\"do_layer_norm_before\": true", "\"do_layer_norm_before\": false"),
        ] {
            let c = OptConfig::from_json(&json, Path::new("config.json")).unwrap();
            let again = OptConfig::from_json(&c.to_hf_json().to_string(), Path::new("again")).unwrap();
            assert_eq!(c, again);
        }
    }

    #[test]
    fn opt_125m_has_125m_parameters() {
        let c = OptConfig::from_json(OPT_125M, Path::new("config.json")).unwrap();
        // HF reports 125,239,296 parameters for OPTForCausalLM (lm_head tied).
        assert_eq!(c.num_parameters(), 125_239_296);
        assert!(c.final_layer_norm && !c.has_projections());
    }

    #[test]
    fn opt_350m_shape_is_post_ln_with_projections() {
        let json = OPT_125M
            .replace("\"do_layer_norm_before\": true", "\"do_layer_norm_before\": false")
            .replace("\"hidden_size\": 768", "\"hidden_size\": 1024")
            .replace("\"word_embed_proj_dim\": 768", "\"word_embed_proj_dim\": 512")
            .replace("\"ffn_dim\": 3072", "\"ffn_dim\": 4096")
            .replace("\"num_hidden_layers\": 12", "\"num_hidden_layers\": 24")
            .replace("\"num_attention_heads\": 12", "\"num_attention_heads\": 16");
        let c = OptConfig::from_json(&json, Path::new("config.json")).unwrap();
        assert!(!c.final_layer_norm && c.has_projections());
        // HF reports 331,196,416 parameters for facebook/opt-350m.
        assert_eq!(c.num_parameters(), 331_196_416);
    }

    #[test]
    fn errors_name_file_and_key() {
        let err = OptConfig::from_json(&OPT_125M.replace("\"opt\"", "\"gpt2\""), Path::new("/m/config.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/m/config.json") && err.contains("model_type") && err.contains("gpt2"), "{err}");
        let err = OptConfig::from_json(
            &OPT_125M.replace("\"num_attention_heads\": 12", "\"num_attention_heads\": 7"),
            Path::new("c.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("num_attention_heads"), "{err}");
        let err = OptConfig::from_json("{\"model_type\": \"opt\", \"hidden_size\": \"big\"}", Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.json") && err.contains("line"), "{err}");
    }
}
