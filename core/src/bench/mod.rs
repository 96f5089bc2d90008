//! What `ftlab bench` measures. Every benchmark times ftlab against a baseline in the same
//! invocation (transformers, no hooks, full fine-tuning, re-encoding, llmft's protocol) and the
//! CLI prints the ratio; the methods measured are parameters, so any plugin can be benchmarked.
//!
//! - [`throughput`]: the machine's matmul rate; forward and training-step tokens/s of an OPT
//!   shape, and the cost of the plugin ABI's hooks;
//! - [`reference`]: the same measurements in PyTorch + transformers, through Python;
//! - [`memory`]: peak memory of training with each adapter, each in its own process;
//! - [`icl`], [`protocol`], [`distill`]: in-context scoring with cached keys/values, ftlab's
//!   training protocol against llmft's, and context distillation's costs.

pub mod distill;
pub mod icl;
pub mod memory;
pub mod protocol;
pub mod reference;
pub mod throughput;

use std::path::PathBuf;
use std::time::Instant;

pub use throughput::{
    flops_per_token, forward_throughput, hook_overhead, matmul_gflops, train_step_throughput, Throughput,
};

use crate::error::{Error, Result};
use crate::model::config::OPT_125M_CONFIG;
use crate::model::{tiny, LoadOptions, Model, OptConfig};

/// The OPT shape and batch a benchmark measures, on random weights.
#[derive(Debug, Clone)]
pub struct Shape {
    /// A `config.json` to take the shape from (default: facebook/opt-125m's).
    pub config: Option<PathBuf>,
    /// Sequences per batch.
    pub batch: i64,
    /// Tokens per sequence.
    pub seq: i64,
    /// libtorch's intra-op threads.
    pub threads: i32,
}

impl Shape {
    /// The shape's `config.json` as text and parsed; sets libtorch to the shape's threads.
    pub fn load(&self) -> Result<(String, OptConfig)> {
        let text = match &self.config {
            Some(path) => std::fs::read_to_string(path).map_err(Error::io(path))?,
            None => OPT_125M_CONFIG.to_string(),
        };
        let config = OptConfig::from_json(&text, self.config.as_deref().unwrap_or("<opt-125m>".as_ref()))?;
        tch::set_num_threads(self.threads);
        Ok((text, config))
    }
}

/// A model of `config` with random weights (seed 0) on `device`; the embedded tokenizer only
/// supplies ids below the model's vocabulary.
pub fn random_model(config: &OptConfig, device: tch::Device) -> Result<Model> {
    Model::random(config, tiny::tokenizer()?, 0, LoadOptions { device, ..Default::default() })
}

/// The median of `values` (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Seconds `work` takes.
fn seconds(work: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    work()?;
    Ok(start.elapsed().as_secs_f64())
}
