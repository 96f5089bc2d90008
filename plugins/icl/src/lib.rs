//! `icl`: in-context learning (Brown et al., 2020, <https://arxiv.org/abs/2005.14165>), the
//! paper's baseline: nothing trains; each query is scored by its next-token LM logits (the
//! evaluation reads the verbalizer's and the full vocabulary's argmax) after the run's context
//! of balanced, shuffled demonstrations (rendered by the runtime, shared/DESIGN.md §4).
//!
//! Each input is `context + icl_prompt` encoded as one string, as llmft encodes it (BPE may merge
//! across the boundary: with llmft's literal `\n\n` separator, `n` and the query's first word
//! are one pre-token). One context serves every query, so `prepare` encodes it once (with
//! `</s>`) and keeps its keys/values; `predict` reuses them for the longest token prefix each
//! batch's joint encodings share with the context and runs only the rest: `q·(C + q)` work per
//! query instead of `(C + q)²`, on exactly the tokens of the uncached path.

use ftlab_sdk::context::after_context;
use ftlab_sdk::prelude::*;

/// Hyperparameters, set in an experiment file under `icl`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    /// Encode the context once and reuse its keys/values for every query (default true).
    /// `false` prepends the context's tokens to every query instead: slower, the reference the
    /// cache is tested against.
    pub cache_context: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { cache_context: true }
    }
}

/// The context's text and token ids, when cached the id of its keys/values in the host, and
/// the model's padding id (asked once, not per batch).
struct Context {
    text: String,
    ids: Vec<i64>,
    cache: Option<u64>,
    pad: i64,
}

/// Scores queries after a fixed context.
pub struct Icl {
    config: Config,
    context: Option<Context>,
}

impl Method for Icl {
    const NAME: &'static str = "icl";
    const ROLE: Role = Role::Objective;
    const DESCRIPTION: &'static str = "In-context learning: no training; verbalizer logits after a shared context \
        whose keys/values are computed once (https://arxiv.org/abs/2005.14165).";
    type Config = Config;

    fn new(config: Config, _: &mut Host) -> Result<Self> {
        Ok(Self { config, context: None })
    }

    fn trains(&self, _: &str) -> Option<bool> {
        Some(false)
    }

    fn prepare(&mut self, host: &mut Host, data: &Tensors) -> Result<()> {
        let text = data.context()?;
        if let Some(old) = self.context.take().and_then(|c| c.cache) {
            host.free_cache(old)?;
        }
        let ids = host.encode(&text, true)?;
        let mut cache = None;
        if self.config.cache_context {
            let input = Tensor::from_slice(&ids).view([1, -1]).to_device(data.input_ids()?.device());
            let request = ForwardRequest {
                logits: Logits::None,
                grad: false,
                train: Some(false),
                keep_cache: true,
                ..Default::default()
            };
            let out = host.forward(&input, &input.ones_like(), &request)?;
            cache = Some(out.cache.ok_or_else(|| Error::msg("the host kept no keys/values"))?);
        }
        let pad = host.model()?.pad_token_id;
        self.context = Some(Context { text: text.into(), ids, cache, pad });
        Ok(())
    }

    fn loss(&mut self, _: &mut Host, _: &Batch) -> Result<Loss> {
        Err(Error::unsupported("loss (icl trains nothing)"))
    }

    fn predict(&mut self, host: &mut Host, batch: &Batch) -> Result<Tensor> {
        let context = self.context.as_ref().ok_or_else(|| Error::msg("icl predicts only after `prepare`"))?;
        let device = batch.input_ids()?.device();
        let rows = (batch.strings("icl_prompts")?.iter())
            .map(|prompt| host.encode(&format!("{}{prompt}", context.text), true))
            .collect::<Result<Vec<_>>>()?;
        // Without a cache nothing is reused: every row runs whole.
        let split = after_context(if context.cache.is_some() { &context.ids } else { &[] }, rows);
        let (ids, mask) = split.tensors(context.pad, device);
        let request = ForwardRequest {
            logits: Logits::Last,
            grad: false,
            train: Some(false),
            past: context.cache.filter(|_| split.reused > 0),
            past_len: Some(split.reused),
            ..Default::default()
        };
        // Next-token logits (B, V): the evaluation scores the verbalizer and the whole vocabulary.
        host.forward(&ids, &mask, &request)?.logits.ok_or_else(|| Error::msg("the host returned no logits"))
    }
}

ftlab_sdk::export_library!(Icl);
