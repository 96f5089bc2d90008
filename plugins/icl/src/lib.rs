//! `icl`: in-context learning (Brown et al., 2020, <https://arxiv.org/abs/2005.14165>), the
//! paper's baseline: nothing trains; each query is scored by its next-token LM logits (the
//! evaluation reads the verbalizer's and the full vocabulary's argmax) after the run's context
//! of balanced, shuffled demonstrations (rendered by the runtime, shared/DESIGN.md §4).
//!
//! One context serves every query, so `prepare` encodes it once (with `</s>`), keeps its
//! keys/values, and `predict` runs only the query tokens against them: `q·(C + q)` work per
//! query instead of `(C + q)²`. The context and each query are tokenised separately, so the
//! cached and uncached paths see identical tokens (a BPE merge across the boundary, such as
//! `\n\n` + word, is not formed).

use ftlab_sdk::prelude::*;
use ftlab_sdk::serde_json::Value;
use ftlab_sdk::tch::Device;

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

/// The encoded context and, when cached, the id of its keys/values in the host.
struct Context {
    ids: Vec<i64>,
    cache: Option<u64>,
}

/// Scores queries after a fixed context.
pub struct Icl {
    config: Config,
    context: Option<Context>,
}

/// Right-pads `rows` with `pad`: ids and mask, int64 `[B, T]`.
fn pad(rows: &[Vec<i64>], pad: i64, device: Device) -> (Tensor, Tensor) {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for row in rows {
        ids.extend(row.iter().copied().chain(std::iter::repeat(pad)).take(width));
        mask.extend((0..width).map(|i| i64::from(i < row.len())));
    }
    let shape = [rows.len() as i64, width as i64];
    (Tensor::from_slice(&ids).view(shape).to_device(device), Tensor::from_slice(&mask).view(shape).to_device(device))
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
        let text = data.json.get("context").and_then(Value::as_str);
        let text = text.ok_or_else(|| Error::msg("icl needs the run's `context` in the prepare data"))?;
        if let Some(old) = self.context.take().and_then(|c| c.cache) {
            host.free_cache(old)?;
        }
        let ids = host.encode(text, true)?;
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
        self.context = Some(Context { ids, cache });
        Ok(())
    }

    fn loss(&mut self, _: &mut Host, _: &Batch) -> Result<Loss> {
        Err(Error::unsupported("loss (icl trains nothing)"))
    }

    fn predict(&mut self, host: &mut Host, batch: &Batch) -> Result<Tensor> {
        let context = self.context.as_ref().ok_or_else(|| Error::msg("icl predicts only after `prepare`"))?;
        let device = batch.input_ids()?.device();
        let prefix: &[i64] = if context.cache.is_some() { &[] } else { &context.ids };
        let mut rows = Vec::new();
        for (i, prompt) in batch.strings("prompts")?.iter().enumerate() {
            let query = host.encode(prompt, false)?;
            if query.is_empty() {
                return Err(Error::msg(format!("prompt {i} encodes to no tokens")));
            }
            rows.push([prefix, &query].concat());
        }
        let (ids, mut mask) = pad(&rows, host.model()?.pad_token_id, device);
        if context.cache.is_some() {
            let past = Tensor::ones([rows.len() as i64, context.ids.len() as i64], (Kind::Int64, device));
            mask = Tensor::cat(&[past, mask], 1); // (B, P + T)
        }
        let request = ForwardRequest {
            logits: Logits::Last,
            grad: false,
            train: Some(false),
            past: context.cache,
            ..Default::default()
        };
        // Next-token logits (B, V): the evaluation scores the verbalizer and the whole vocabulary.
        host.forward(&ids, &mask, &request)?.logits.ok_or_else(|| Error::msg("the host returned no logits"))
    }
}

ftlab_sdk::export_library!(Icl);
