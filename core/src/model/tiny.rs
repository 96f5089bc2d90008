//! The embedded default model: a tiny OPT that needs no download.
//!
//! `tiny-opt` is pretrained to learn the synthetic NLI task in context: its weights
//! ([`WEIGHTS`], 1.3 MB) were made with the stages of `scripts/pretrain-embedded`, which trains
//! the random model with ftlab's `lm` plugin on few-shot episodes
//! ([`crate::data::synthetic::episodes`]): its first five, run one by one while the recipe was
//! developed (the README's "The embedded model" compares the script's own output).
//! `tiny-opt-random` is the same shape randomly initialised from a fixed seed (like a fresh HF
//! model with `init_std`), for tests that need a model that knows nothing. Both share a
//! byte-level BPE tokenizer trained at load time on a small English corpus shipped in the
//! binary, with OPT's special tokens at ids 0–3 and OPT's `</s>` prefix. Every code path of a
//! real OPT runs on them, in milliseconds.

use std::path::Path;

use super::config::OptConfig;
use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// The pretrained embedded model's weights (safetensors, HF key names, float32).
pub(crate) const WEIGHTS: &[u8] = include_bytes!("../../assets/tiny-opt.safetensors");

/// Seed of the embedded model's random initialisation.
pub const SEED: i64 = 0;

/// Corpus the embedded tokenizer is trained on (also the `text` task's documents without a
/// file, one per line).
pub(crate) const CORPUS: &str = include_str!("../../assets/tiny-corpus.txt");

/// Upper bound on the embedded tokenizer's vocabulary; the model's `vocab_size` is this, as
/// OPT's 50272 rows cover its 50265 tokens.
const VOCAB_SIZE: usize = 1024;

/// The embedded model's `config.json`: an opt-125m shape shrunk to 4 layers of width 64, with
/// room for 1024 positions so many-shot ICL contexts fit.
pub const CONFIG_JSON: &str = r#"{
  "model_type": "opt",
  "vocab_size": 1024,
  "hidden_size": 64,
  "num_hidden_layers": 4,
  "num_attention_heads": 4,
  "ffn_dim": 256,
  "max_position_embeddings": 1024,
  "do_layer_norm_before": true,
  "word_embed_proj_dim": 64,
  "activation_function": "relu",
  "dropout": 0.1,
  "attention_dropout": 0.0,
  "init_std": 0.02,
  "pad_token_id": 1,
  "bos_token_id": 2,
  "eos_token_id": 2
}"#;

/// The embedded model's configuration.
pub fn config() -> Result<OptConfig> {
    OptConfig::from_json(CONFIG_JSON, Path::new("<embedded tiny-opt config>"))
}

/// The embedded tokenizer, trained on the shipped corpus (deterministic).
pub fn tokenizer() -> Result<Tokenizer> {
    let lines: Vec<&str> = CORPUS.lines().collect();
    Tokenizer::train(&lines, VOCAB_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_deterministic_and_opt_shaped() {
        let (a, b) = (tokenizer().unwrap(), tokenizer().unwrap());
        let text = "The cat sat on the mat. question: Yes or No? answer: Yes";
        let ids = a.encode(text).unwrap();
        assert_eq!(ids, b.encode(text).unwrap());
        assert_eq!((a.bos_id(), a.pad_id()), (2, 1));
        assert_eq!(ids[0], 2, "OPT prepends </s>");
        assert_eq!(a.decode(&ids).unwrap(), text);
        assert!(a.vocab_size() <= config().unwrap().vocab_size as usize);
        // Frequent words are single tokens (the corpus taught the merges).
        assert_eq!(a.encode_plain(" Yes").unwrap().len(), 1);
    }
}
