//! The teacher: the frozen pretrained model reading a context of k balanced demonstrations
//! before each input. Its next-token distributions are computed once, in batches, before
//! training, and kept as compact [`Targets`].
//!
//! Context and query are tokenised separately (the context with `</s>`, the query without), so
//! a shared context's kept keys/values and the same context re-encoded per input see identical
//! tokens — as the `icl` plugin does.

use ftlab_sdk::prelude::*;
use ftlab_sdk::tch::Device;

use crate::sampler::{balanced, SplitMix64};
use crate::targets::Targets;

/// Inputs per teacher forward pass: bounds the `[B, V]` logits held at once (the targets
/// themselves are compact) while keeping the passes batched.
const TEACHER_BATCH: usize = 16;

/// The stream index of the one shared context (`resample = false`).
const SHARED_STREAM: u64 = u64::MAX;

/// The labelled demonstrations contexts are drawn from.
pub struct Pool {
    /// Each labelled example rendered with its label word.
    pub demonstrations: Vec<String>,
    /// Their labels, in `0..num_labels`.
    pub labels: Vec<usize>,
    /// What follows each demonstration in a context.
    pub separator: String,
    /// Labels of the task.
    pub num_labels: usize,
}

impl Pool {
    /// The pool in a `prepare` payload (`demonstrations`, `labels_of_demonstrations`, `separator`).
    pub fn from_data(data: &Tensors, num_labels: usize) -> Result<Self> {
        let demonstrations = data.strings("demonstrations")?;
        let labels: Vec<i64> = ftlab_sdk::serde_json::from_value(
            data.json.get("labels_of_demonstrations").cloned().ok_or("no `labels_of_demonstrations` in the data")?,
        )?;
        if labels.len() != demonstrations.len() {
            return Err(Error::msg(format!(
                "{} demonstrations but {} labels_of_demonstrations",
                demonstrations.len(),
                labels.len()
            )));
        }
        let labels = (labels.iter())
            .map(|&l| usize::try_from(l).ok().filter(|l| *l < num_labels))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::msg(format!("a demonstration's label is outside 0..{num_labels}: {labels:?}")))?;
        let separator = data.json.get("separator").and_then(|s| s.as_str()).ok_or("no `separator` in the data")?;
        Ok(Self { demonstrations, labels, separator: separator.into(), num_labels })
    }

    /// The context text of `positions`: each demonstration followed by the separator, as the
    /// runtime renders the ICL context.
    pub fn render(&self, positions: &[usize]) -> String {
        positions.iter().map(|&p| format!("{}{}", self.demonstrations[p], self.separator)).collect()
    }

    /// Positions of `prompt`'s own demonstration(s) (the prompt followed by a label word), so a
    /// labelled input never reads its own answer in its context.
    pub fn positions_of(&self, prompt: &str) -> Vec<usize> {
        (0..self.demonstrations.len()).filter(|&p| self.demonstrations[p].starts_with(prompt)).collect()
    }
}

/// What computing the teacher's targets needs.
pub struct Teacher<'a> {
    /// A model loaded for the teacher, or `None` for the run's own model.
    pub model: Option<u64>,
    /// Demonstrations to draw contexts from.
    pub pool: &'a Pool,
    /// Demonstrations per context (the most; fewer when the window demands).
    pub k: usize,
    /// The run's seed.
    pub seed: u64,
    /// Temperature of the cached distributions.
    pub tau: f64,
    /// Tokens kept per full-vocabulary target; `None` for verbalizer-only targets.
    pub top_m: Option<usize>,
    /// The verbalizer's token ids, `[C]` on `device`.
    pub verbalizer: Tensor,
    /// The model's window (`max_position_embeddings`).
    pub window: usize,
    /// Padding id.
    pub pad: i64,
    /// Where the model runs.
    pub device: Device,
}

impl Teacher<'_> {
    /// One context per input, drawn from the input's own random stream.
    pub fn resampled(&self, host: &mut Host, inputs: &[String]) -> Result<Targets> {
        let mut rows = Vec::with_capacity(inputs.len());
        let mut ks = Vec::with_capacity(inputs.len());
        for (i, prompt) in inputs.iter().enumerate() {
            let query = encode_query(host, prompt)?;
            let exclude = self.pool.positions_of(prompt);
            let (context, k) = self.fit_context(host, query.len(), i as u64, &exclude)?;
            rows.push([context, query].concat());
            ks.push(k);
        }
        self.log_fit(host, &ks)?;
        self.run_batches(host, &rows, None)
    }

    /// One context for every input: encoded once and its keys/values reused (`cache`), or
    /// prepended to every input (the uncached reference).
    pub fn shared(&self, host: &mut Host, inputs: &[String], cache: bool) -> Result<Targets> {
        let queries = inputs.iter().map(|p| encode_query(host, p)).collect::<Result<Vec<_>>>()?;
        let longest = queries.iter().map(Vec::len).max().unwrap_or(0);
        let (context, k) = self.fit_context(host, longest, SHARED_STREAM, &[])?;
        self.log_fit(host, &[k])?;
        if !cache {
            let rows: Vec<Vec<i64>> = queries.into_iter().map(|q| [context.as_slice(), &q].concat()).collect();
            return self.run_batches(host, &rows, None);
        }
        let input = Tensor::from_slice(&context).view([1, -1]).to_device(self.device);
        let request = ForwardRequest {
            logits: Logits::None,
            adapters: false,
            grad: false,
            train: Some(false),
            keep_cache: true,
            model: self.model,
            ..Default::default()
        };
        let out = host.forward(&input, &input.ones_like(), &request)?;
        let id = out.cache.ok_or("the host kept no keys/values for the context")?;
        let targets = self.run_batches(host, &queries, Some((id, context.len())));
        let freed = host.free_cache(id);
        let targets = targets?;
        freed?;
        Ok(targets)
    }

    /// The token ids of a balanced context of the largest k' ≤ k (in steps of the number of
    /// labels, keeping the balance) with `k'` demonstrations + `query_len` within the window.
    fn fit_context(
        &self,
        host: &mut Host,
        query_len: usize,
        stream: u64,
        exclude: &[usize],
    ) -> Result<(Vec<i64>, usize)> {
        let step = self.pool.num_labels;
        let mut k = self.k;
        while k >= step {
            let picks = balanced(&self.pool.labels, step, k, exclude, &mut SplitMix64::for_input(self.seed, stream))?;
            let ids = host.encode(&self.pool.render(&picks), true)?;
            if ids.len() + query_len <= self.window {
                return Ok((ids, k));
            }
            k -= step;
        }
        Err(Error::msg(format!(
            "{step} demonstrations and a query of {query_len} tokens exceed the model's window of {} tokens",
            self.window
        )))
    }

    /// Logs how many contexts the window shortened and the fewest demonstrations any got.
    fn log_fit(&self, host: &mut Host, ks: &[usize]) -> Result<()> {
        let shortened = ks.iter().filter(|&&k| k < self.k).count();
        if shortened > 0 {
            host.log("contexts_shortened", shortened as f64)?;
            host.log("context_k_min", ks.iter().copied().min().unwrap_or(self.k) as f64)?;
        }
        Ok(())
    }

    /// The teacher's targets for `rows` of token ids, `TEACHER_BATCH` at a time; with `past`
    /// (cache id, its length P) the rows are queries read after the kept context.
    fn run_batches(&self, host: &mut Host, rows: &[Vec<i64>], past: Option<(u64, usize)>) -> Result<Targets> {
        let mut parts = Vec::with_capacity(rows.len().div_ceil(TEACHER_BATCH));
        for chunk in rows.chunks(TEACHER_BATCH) {
            let (ids, mut mask) = pad(chunk, self.pad, self.device);
            if let Some((_, len)) = past {
                let prefix = Tensor::ones([chunk.len() as i64, len as i64], (Kind::Int64, self.device));
                mask = Tensor::cat(&[prefix, mask], 1); // (B, P + T); the host broadcasts the batch-1 cache
            }
            let request = ForwardRequest {
                logits: Logits::Last,
                adapters: false,
                grad: false,
                train: Some(false),
                past: past.map(|(id, _)| id),
                keep_cache: false,
                model: self.model,
            };
            let logits = host.forward(&ids, &mask, &request)?.logits.ok_or("the host returned no logits")?; // (B, V)
            parts.push(Targets::from_teacher_logits(&logits, self.tau, self.top_m, &self.verbalizer));
        }
        Targets::cat(&parts)
    }
}

/// The ids of a query read after a context (no `</s>`); an empty encoding is an error.
fn encode_query(host: &mut Host, prompt: &str) -> Result<Vec<i64>> {
    let ids = host.encode(prompt, false)?;
    if ids.is_empty() {
        return Err(Error::msg(format!("the input `{prompt}` encodes to no tokens")));
    }
    Ok(ids)
}

/// Right-pads `rows` with `pad`: ids and mask, int64 `[B, T]`.
fn pad(rows: &[Vec<i64>], pad: i64, device: Device) -> (Tensor, Tensor) {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let (mut ids, mut mask) = (Vec::with_capacity(rows.len() * width), Vec::with_capacity(rows.len() * width));
    for row in rows {
        ids.extend(row.iter().copied().chain(std::iter::repeat(pad)).take(width));
        mask.extend((0..width).map(|i| i64::from(i < row.len())));
    }
    let shape = [rows.len() as i64, width as i64];
    (Tensor::from_slice(&ids).view(shape).to_device(device), Tensor::from_slice(&mask).view(shape).to_device(device))
}
