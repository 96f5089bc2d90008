//! OPT's tokenizer: GPT-2 byte-level BPE with `</s>` prepended.
//!
//! The facebook/opt-* repositories ship `vocab.json` + `merges.txt` and no `tokenizer.json`, so
//! the byte-level pipeline HF's `GPT2TokenizerFast` builds is rebuilt here: byte-level
//! pre-tokenisation with GPT-2's regex and no prefix space, BPE, and a template that prepends
//! `</s>` (id 2) and appends nothing. A `tokenizer.json` is used as written when present.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use crate::error::{Error, Result};

/// OPT's beginning-of-sequence token, prepended to every input.
pub const BOS_TOKEN: &str = "</s>";
/// OPT's padding token.
pub const PAD_TOKEN: &str = "<pad>";
/// OPT's vocabulary starts with these four, in this order (ids 0–3).
pub const SPECIAL_TOKENS: [&str; 4] = ["<s>", PAD_TOKEN, BOS_TOKEN, "<unk>"];

/// Which side padding goes on when a batch is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// Pad after the tokens (training, classification).
    #[default]
    Right,
    /// Pad before the tokens, so every row ends at the same position (generation, scoring the
    /// next token of many prompts at once).
    Left,
}

/// A batch of encoded texts.
#[derive(Debug)]
pub struct Batch {
    /// int64 `[B, T]`, padded with the pad id.
    pub input_ids: Tensor,
    /// int64 `[B, T]`, 1 on tokens, 0 on padding.
    pub attention_mask: Tensor,
}

/// An OPT tokenizer, or the place of one that a model folder lacks.
///
/// `model.save_pretrained` writes no tokenizer files, and such a folder must still load for
/// everything that reads no text (token ids in, logits out), as in transformers, where the
/// tokenizer is loaded separately. An absent tokenizer knows OPT's special ids (from the
/// model's config) and fails only where text must be encoded or decoded, naming the folder, the
/// files looked for and `--tokenizer`.
pub struct Tokenizer {
    /// `None` for a folder without tokenizer files.
    inner: Option<HfTokenizer>,
    bos_id: i64,
    pad_id: i64,
    source: PathBuf,
    /// Bytes of the longest token: no token covers more of a text.
    max_token_bytes: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("source", &self.source).field("vocab_size", &self.vocab_size()).finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` from `dir` if present, else `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        for file in [&vocab, &merges] {
            if !file.is_file() {
                return Err(Error::Tokenizer {
                    path: dir.into(),
                    message: format!(
                        "no tokenizer.json, and `{}` is missing",
                        file.file_name().unwrap_or_default().to_string_lossy()
                    ),
                });
            }
        }
        Self::from_vocab_merges(&vocab, &merges)
    }

    /// Reads a `tokenizer.json` (HF tokenizers' format), trusting its own post-processor.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let inner = HfTokenizer::from_file(path).map_err(|e| tokenizer_error(path, e))?;
        Self::wrap(inner, path)
    }

    /// Builds OPT's byte-level BPE from GPT-2 style `vocab.json` and `merges.txt`.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self> {
        let (v, m) = (vocab.to_string_lossy(), merges.to_string_lossy());
        let bpe = BPE::from_file(&v, &m).build().map_err(|e| tokenizer_error(vocab, e))?;
        let mut inner = HfTokenizer::new(bpe);
        byte_level_pipeline(&mut inner, vocab)?;
        Self::wrap(inner, vocab)
    }

    /// Trains a byte-level BPE of `vocab_size` tokens on `corpus` lines, with OPT's special
    /// tokens at ids 0–3 and OPT's pipeline. Deterministic for a given corpus.
    pub fn train(corpus: &[&str], vocab_size: usize) -> Result<Self> {
        let source = Path::new("<embedded>");
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect())
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let mut inner = HfTokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.train(&mut trainer, corpus.iter()).map_err(|e| tokenizer_error(source, e))?;
        byte_level_pipeline(&mut inner, source)?;
        Self::wrap(inner, source)
    }

    fn wrap(inner: HfTokenizer, source: &Path) -> Result<Self> {
        let id = |token: &str| {
            inner.token_to_id(token).map(i64::from).ok_or_else(|| Error::Tokenizer {
                path: source.into(),
                message: format!("the vocabulary has no `{token}` token, which OPT needs"),
            })
        };
        // Byte-level BPE spells each byte as one symbol, so a token's length in symbols is its
        // length in bytes (added tokens such as `</s>` are longer than any text they stand for).
        let max_token_bytes = inner.get_vocab(false).keys().map(|t| t.chars().count()).max().unwrap_or(1).max(1);
        Ok(Self {
            bos_id: id(BOS_TOKEN)?,
            pad_id: id(PAD_TOKEN)?,
            inner: Some(inner),
            source: source.into(),
            max_token_bytes,
        })
    }

    /// The tokenizer of a model folder `dir` that has no tokenizer files: OPT's special ids from
    /// the model's config, and an error wherever text must be encoded.
    pub fn absent(dir: &Path, bos_id: i64, pad_id: i64) -> Self {
        Self { inner: None, bos_id, pad_id, source: dir.into(), max_token_bytes: 1 }
    }

    /// Whether `dir` holds tokenizer files (`tokenizer.json`, `vocab.json` or `merges.txt`).
    pub fn files_in(dir: &Path) -> bool {
        ["tokenizer.json", "vocab.json", "merges.txt"].iter().any(|f| dir.join(f).is_file())
    }

    /// Whether this is a real tokenizer (not [`Tokenizer::absent`]).
    pub fn is_present(&self) -> bool {
        self.inner.is_some()
    }

    /// The tokenizer, or an error naming the folder that has none.
    fn hf(&self) -> Result<&HfTokenizer> {
        self.inner.as_ref().ok_or_else(|| Error::Tokenizer {
            path: self.source.clone(),
            message: "this model folder has no tokenizer (looked for tokenizer.json, or vocab.json + merges.txt); \
                      text needs one: pass `--tokenizer MODEL` (a folder or hub id), or set `tokenizer` in the experiment"
                .into(),
        })
    }

    /// The start of `text` that holds its first `max_tokens` tokens, so a text of any length is
    /// tokenized only as far as a length limit can use: every token covers at most
    /// `max_token_bytes` bytes, and twice that margin keeps the merges at the cut far past the
    /// tokens kept. `None` when `text` is short enough to encode whole.
    pub fn prefix_within<'t>(&self, text: &'t str, max_tokens: usize) -> Option<&'t str> {
        let cap = 2 * (max_tokens + 16) * self.max_token_bytes;
        if text.len() <= cap {
            return None;
        }
        let end = (0..=cap).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        Some(&text[..end])
    }

    /// Token ids of `text`, starting with `</s>`.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self.hf()?.encode(text, true).map_err(|e| tokenizer_error(&self.source, e))?;
        Ok(encoding.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// Token ids of `text` with no `</s>` added (for continuations such as a label word).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self.hf()?.encode(text, false).map_err(|e| tokenizer_error(&self.source, e))?;
        Ok(encoding.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// The token strings of `ids` (byte-level symbols, e.g. `Ġhello`).
    pub fn tokens(&self, ids: &[i64]) -> Vec<String> {
        let token = |i: i64| self.inner.as_ref().and_then(|t| t.id_to_token(i as u32)).unwrap_or_default();
        ids.iter().map(|&i| token(i)).collect()
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.hf()?.decode(&ids, true).map_err(|e| tokenizer_error(&self.source, e))
    }

    /// Encodes texts into a padded batch on `device`.
    pub fn encode_batch(&self, texts: &[&str], padding: Padding, device: Device) -> Result<Batch> {
        let rows = texts.iter().map(|t| self.encode(t)).collect::<Result<Vec<_>>>()?;
        Ok(self.pad(&rows, padding, device))
    }

    /// Pads id rows into a batch on `device`.
    pub fn pad(&self, rows: &[Vec<i64>], padding: Padding, device: Device) -> Batch {
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        for row in rows {
            let pad = width - row.len();
            let (before, after) = if padding == Padding::Left { (pad, 0) } else { (0, pad) };
            ids.extend(
                std::iter::repeat_n(self.pad_id, before)
                    .chain(row.iter().copied())
                    .chain(std::iter::repeat_n(self.pad_id, after)),
            );
            mask.extend(
                std::iter::repeat_n(0, before)
                    .chain(std::iter::repeat_n(1, row.len()))
                    .chain(std::iter::repeat_n(0, after)),
            );
        }
        let shape = [rows.len() as i64, width as i64];
        Batch {
            input_ids: Tensor::from_slice(&ids).view(shape).to_device(device),
            attention_mask: Tensor::from_slice(&mask).to_kind(Kind::Int64).view(shape).to_device(device),
        }
    }

    /// Id of a token string, if in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<i64> {
        self.inner.as_ref().and_then(|t| t.token_to_id(token)).map(i64::from)
    }

    /// Every token string, sorted (empty when absent); byte-level BPE writes a leading space as `Ġ`.
    pub fn tokens_of_vocabulary(&self) -> Vec<String> {
        let mut tokens: Vec<String> =
            self.inner.as_ref().map(|t| t.get_vocab(true).into_keys().collect()).unwrap_or_default();
        tokens.sort();
        tokens
    }

    /// Number of tokens, special ones included (0 when absent).
    pub fn vocab_size(&self) -> usize {
        self.inner.as_ref().map_or(0, |t| t.get_vocab_size(true))
    }

    /// `</s>`'s id (2 in OPT).
    pub fn bos_id(&self) -> i64 {
        self.bos_id
    }

    /// `<pad>`'s id (1 in OPT).
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// Writes `tokenizer.json` (e.g. to ship the embedded tokenizer beside a model).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.hf()?.save(path, true).map_err(|e| tokenizer_error(path, e))
    }
}

/// GPT-2's byte-level pre-tokenizer and decoder, and OPT's `</s> $A` template. Only `</s>` and
/// `<pad>` are special when they appear in text, as in facebook/opt's `special_tokens_map.json`.
fn byte_level_pipeline(inner: &mut HfTokenizer, source: &Path) -> Result<()> {
    inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    let bos = inner.token_to_id(BOS_TOKEN).ok_or_else(|| Error::Tokenizer {
        path: source.into(),
        message: format!("the vocabulary has no `{BOS_TOKEN}` token, which OPT prepends"),
    })?;
    let template = TemplateProcessing::builder()
        .try_single(format!("{BOS_TOKEN} $A"))
        .and_then(|b| b.try_pair(format!("{BOS_TOKEN} $A {BOS_TOKEN} $B")))
        .map_err(|e| tokenizer_error(source, e))?
        .special_tokens(vec![(BOS_TOKEN, bos)])
        .build()
        .map_err(|e| tokenizer_error(source, e))?;
    inner.with_post_processor(Some(template));
    inner.add_special_tokens(&[AddedToken::from(BOS_TOKEN, true), AddedToken::from(PAD_TOKEN, true)]);
    Ok(())
}

fn tokenizer_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer { path: path.into(), message: e.to_string() }
}
