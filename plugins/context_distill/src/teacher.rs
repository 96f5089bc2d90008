//! The teacher: the frozen pretrained model reading a context of k balanced demonstrations
//! before each input. Its next-token distributions are computed once, in batches, before
//! training, and kept as compact [`Targets`].
//!
//! Each teacher input is `context + in-context query` encoded as one string, as llmft encodes
//! it; a shared context's kept keys/values serve the prefix the joint encodings share with it
//! (`ftlab_sdk::context`), so cached and uncached teachers read the same tokens — as the `icl`
//! plugin does.

use ftlab_sdk::context::after_context;
use ftlab_sdk::prelude::*;
use ftlab_sdk::tch::Device;
use ftlab_sdk::Demonstrations;

use crate::sampler::{balanced, SplitMix64};
use crate::targets::Targets;

/// Inputs per teacher forward pass: bounds the `[B, V]` logits held at once (the targets
/// themselves are compact) while keeping the passes batched.
const TEACHER_BATCH: usize = 16;

/// The stream index of the one shared context (`resample = false`).
const SHARED_STREAM: u64 = u64::MAX;

/// An input distilled on: the fine-tuning query the student reads (and batches name it by), and
/// the in-context query the teacher reads after its context.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Input {
    /// The fine-tuning query.
    pub prompt: String,
    /// The in-context query.
    pub icl: String,
}

/// A context that fits the window with the queries it is read before.
struct Fitted {
    /// Its text.
    text: String,
    /// `context + query`, encoded as one string, per query.
    rows: Vec<Vec<i64>>,
    /// Its demonstrations.
    k: usize,
}

/// What computing the teacher's targets needs.
pub struct Teacher<'a> {
    /// A model loaded for the teacher, or `None` for the run's own model.
    pub model: Option<u64>,
    /// Demonstrations to draw contexts from.
    pub pool: &'a Demonstrations,
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
    /// Tokens of the teacher's greedy continuation to keep per input (0: none).
    pub generate: usize,
    /// The id that ends a continuation (OPT's `</s>`).
    pub eos: i64,
}

/// The teacher's targets, one row per input, and (with `generate`) each input's continuation.
pub type Taught = (Targets, Vec<Vec<i64>>);

impl Teacher<'_> {
    /// One context per input, drawn from the input's own random stream.
    pub fn resampled(&self, host: &mut Host, inputs: &[Input]) -> Result<Taught> {
        let mut rows = Vec::with_capacity(inputs.len());
        let mut ks = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let exclude = self.pool.positions_of(&input.prompt);
            let fitted = self.fit_context(host, std::slice::from_ref(input), i as u64, &exclude)?;
            rows.extend(fitted.rows);
            ks.push(fitted.k);
        }
        self.log_fit(host, &ks)?;
        self.run_batches(host, &rows, None)
    }

    /// One context for every input: encoded once and its keys/values reused (`cache`), or
    /// read whole with every input (the uncached reference).
    pub fn shared(&self, host: &mut Host, inputs: &[Input], cache: bool) -> Result<Taught> {
        let fitted = self.fit_context(host, inputs, SHARED_STREAM, &[])?;
        self.log_fit(host, &[fitted.k])?;
        if !cache {
            return self.run_batches(host, &fitted.rows, None);
        }
        let context = host.encode(&fitted.text, true)?;
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
        let targets = self.run_batches(host, &fitted.rows, Some((id, &context)));
        let freed = host.free_cache(id);
        let targets = targets?;
        freed?;
        Ok(targets)
    }

    /// A balanced context of the largest k' ≤ k (in steps of the number of labels, keeping the
    /// balance) with which every one of `inputs` fits the window.
    fn fit_context(&self, host: &mut Host, inputs: &[Input], stream: u64, exclude: &[usize]) -> Result<Fitted> {
        let step = self.pool.num_labels;
        let mut k = self.k;
        while k >= step {
            let picks = balanced(&self.pool.labels, step, k, exclude, &mut SplitMix64::for_input(self.seed, stream))?;
            let text = self.pool.render(&picks);
            let rows = (inputs.iter())
                .map(|input| host.encode(&format!("{text}{}", input.icl), true))
                .collect::<Result<Vec<_>>>()?;
            if rows.iter().all(|r| r.len() <= self.window) {
                return Ok(Fitted { text, rows, k });
            }
            k -= step;
        }
        Err(Error::msg(format!(
            "{step} demonstrations and the longest query exceed the model's window of {} tokens",
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

    /// The teacher's targets for `rows` of token ids (each `context + query`), `TEACHER_BATCH`
    /// at a time, and with `generate` each row's greedy continuation; with `past` (cache id,
    /// the context's ids) each batch reuses the kept keys/values of the prefix it shares with
    /// the context.
    fn run_batches(&self, host: &mut Host, rows: &[Vec<i64>], past: Option<(u64, &[i64])>) -> Result<Taught> {
        let mut parts = Vec::with_capacity(rows.len().div_ceil(TEACHER_BATCH));
        let mut continuations = Vec::new();
        for chunk in rows.chunks(TEACHER_BATCH) {
            let logits = self.last_logits(host, chunk, past)?; // (B, V)
            parts.push(Targets::from_teacher_logits(&logits, self.tau, self.top_m, &self.verbalizer));
            if self.generate > 0 {
                let first = Vec::<i64>::try_from(logits.argmax(1, false))?;
                continuations.extend(self.continue_greedily(host, chunk, past, first)?);
            }
        }
        Ok((Targets::cat(&parts)?, continuations))
    }

    /// The teacher's next-token logits `[B, V]` after each of `rows`.
    fn last_logits(&self, host: &mut Host, rows: &[Vec<i64>], past: Option<(u64, &[i64])>) -> Result<Tensor> {
        let split = after_context(past.map_or(&[], |(_, ids)| ids), rows.to_vec());
        let (ids, mask) = split.tensors(self.pad, self.device);
        let request = ForwardRequest {
            logits: Logits::Last,
            adapters: false,
            grad: false,
            train: Some(false),
            past: past.filter(|_| split.reused > 0).map(|(id, _)| id),
            past_len: Some(split.reused),
            keep_cache: false,
            model: self.model,
        };
        Ok(host.forward(&ids, &mask, &request)?.logits.ok_or("the host returned no logits")?)
    }

    /// Each row's greedy continuation of up to `generate` tokens from `first` (the argmax after
    /// it), ending at `</s>` or the window: each step reads the rows again with the tokens so far
    /// (a shared context's kept keys/values still serve its prefix).
    fn continue_greedily(
        &self,
        host: &mut Host,
        rows: &[Vec<i64>],
        past: Option<(u64, &[i64])>,
        first: Vec<i64>,
    ) -> Result<Vec<Vec<i64>>> {
        let mut generated: Vec<Vec<i64>> = first.into_iter().map(|t| vec![t]).collect();
        for _ in 1..self.generate {
            let open: Vec<usize> = (0..rows.len())
                .filter(|&i| generated[i].last() != Some(&self.eos) && rows[i].len() + generated[i].len() < self.window)
                .collect();
            if open.is_empty() {
                break;
            }
            let extended: Vec<Vec<i64>> = open.iter().map(|&i| [&rows[i][..], &generated[i][..]].concat()).collect();
            let next = Vec::<i64>::try_from(self.last_logits(host, &extended, past)?.argmax(1, false))?;
            for (&i, token) in open.iter().zip(next) {
                generated[i].push(token);
            }
        }
        Ok(generated)
    }
}
