//! The training loop: batches → the objective's loss → backward → clipped AdamW step, epoch by
//! epoch, evaluating after each epoch and checkpointing so an interrupted run resumes exactly.

use ftlab_sdk::Inputs;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::config::RunConfig;
use super::data::RunData;
use super::optim::{learning_rate, AdamW};
use super::record::RunDir;
use super::{Headline, Timings};
use crate::data::batch::{self, BatchOrder};
use crate::error::{Error, Result};
use crate::eval::PhaseResources;
use crate::methods::MethodRun;
use crate::tokenizer::Tokenizer;

/// Where training stands, and what the run has cost and measured so far; saved beside each
/// checkpoint so a resumed run's record covers every segment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Seconds of every phase so far (`total`: wall time of the segments up to this checkpoint).
    #[serde(default)]
    pub timings: Timings,
    /// Training time, tokens and peak memory so far.
    #[serde(default)]
    pub train_resources: Option<PhaseResources>,
    /// The evaluation before training.
    #[serde(default)]
    pub zero_shot: Option<Headline>,
    /// The in-context reference, when scored.
    #[serde(default)]
    pub icl_reference: Option<Headline>,
    /// Where in the next epoch a run stopped on request (SIGTERM), if it stopped mid-epoch.
    #[serde(default)]
    pub partial: Option<PartialEpoch>,
}

/// An epoch stopped after some of its optimizer steps: how far it got and its sums so far, so
/// the rest of it runs as if it had never stopped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// Optimizer steps (groups of micro-batches) of the epoch done.
    pub groups_done: usize,
    /// Sum of the micro-batch losses so far.
    pub loss_sum: f64,
    /// Micro-batches so far.
    pub loss_count: usize,
    /// Tokens trained on so far.
    pub tokens: usize,
    /// The learning rate of the last step.
    pub lr: f64,
    /// The methods' metrics so far (each micro-batch's).
    pub method_metrics: Vec<(String, f64)>,
}

/// How an epoch ended.
#[derive(Debug)]
pub enum EpochEnd {
    /// It ran to its end.
    Done(EpochMetrics),
    /// A stop was requested ([`super::stop`]); it stopped after a whole step.
    Stopped(PartialEpoch),
}

/// One epoch's line in `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Non-padding tokens trained on.
    pub tokens: usize,
    /// Metrics the methods logged (averaged over the epoch).
    pub method_metrics: Vec<(String, f64)>,
    /// Evaluation after this epoch, if any.
    pub eval: Option<serde_json::Value>,
}

/// Optimizer steps of the whole run over `examples` training rows.
pub fn total_steps(config: &RunConfig, examples: usize) -> usize {
    let per_epoch = examples.div_ceil(config.train.batch_size);
    config.train.max_steps.unwrap_or(per_epoch * config.train.epochs)
}

/// Runs one epoch (`epoch` is 0-based); returns its metrics without evaluation.
pub fn train_epoch(
    config: &RunConfig,
    run: &mut MethodRun,
    data: &RunData,
    tokenizer: &Tokenizer,
    optimizer: &mut AdamW,
    epoch: usize,
    total: usize,
) -> Result<EpochMetrics> {
    match train_epoch_from(config, run, data, tokenizer, optimizer, (epoch, total), None)? {
        EpochEnd::Done(metrics) => Ok(metrics),
        EpochEnd::Stopped(_) => Err(Error::Terminated { step: optimizer.step, epoch: epoch + 1, saved: String::new() }),
    }
}

/// Runs epoch `epoch` (0-based) of `total` steps in all, from where `from` stopped (or its
/// start), until its end or a requested stop.
pub fn train_epoch_from(
    config: &RunConfig,
    run: &mut MethodRun,
    data: &RunData,
    tokenizer: &Tokenizer,
    optimizer: &mut AdamW,
    (epoch, total): (usize, usize),
    from: Option<PartialEpoch>,
) -> Result<EpochEnd> {
    run.set_train(true)?;
    // Batch order depends only on (seed, epoch) and dropout on (seed, epoch, step): a run
    // resumed at an epoch boundary or mid-epoch repeats them.
    let epoch_seed = config.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64);
    let micro = config.train.batch_size / config.train.grad_accum;
    let device = run.model.device();
    let inputs = run.objective.inputs;
    let (encoded, examples) = data.training_set(inputs);
    let order = BatchOrder::BucketedShuffled { seed: epoch_seed };
    let batches = batch::batches(tokenizer, encoded, &data.prompt.word_ids, micro, order, device);
    let bar = progress_bar(batches.len() as u64, &format!("epoch {}", epoch + 1));
    let mut done = from.unwrap_or_default();
    bar.inc((done.groups_done * config.train.grad_accum) as u64);
    for (g, group) in batches.chunks(config.train.grad_accum).enumerate().skip(done.groups_done) {
        if optimizer.step >= total {
            break;
        }
        if super::stop::requested() {
            bar.finish_and_clear();
            return Ok(EpochEnd::Stopped(done));
        }
        tch::manual_seed(epoch_seed.wrapping_mul(1_000_003).wrapping_add(g as u64) as i64);
        optimizer.zero_grad();
        for b in group {
            let batch = data.method_batch(b, examples, inputs == Inputs::Unlabelled);
            let (loss, metrics) = config.train.autocast.run(device, || run.loss(batch))?;
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                return Err(Error::NonFiniteLoss { value, step: optimizer.step + 1 });
            }
            (loss * (optimizer.loss_scale.scale / group.len() as f64)).backward();
            done.loss_sum += value;
            done.loss_count += 1;
            done.tokens += b.tokens;
            done.method_metrics.extend(metrics);
            bar.inc(1);
        }
        optimizer.unscale_grads();
        let norm = optimizer.clip_grad_norm(config.train.grad_clip);
        if optimizer.loss_scale.update(norm.is_finite()) {
            done.lr = learning_rate(&config.train, optimizer.step, total);
            optimizer.step(done.lr)?;
            for (name, from) in run.step_done(optimizer.step)? {
                optimizer.move_moments(&name, &from)?;
            }
        } else {
            tracing::debug!(scale = optimizer.loss_scale.scale, "fp16 gradients overflowed: step skipped");
        }
        done.groups_done = g + 1;
        bar.set_message(format!("loss {:.4}", done.loss_sum / done.loss_count.max(1) as f64));
    }
    bar.finish_and_clear();
    Ok(EpochEnd::Done(EpochMetrics {
        epoch: epoch + 1,
        step: optimizer.step,
        train_loss: done.loss_sum / done.loss_count.max(1) as f64,
        lr: done.lr,
        tokens: done.tokens,
        method_metrics: average(done.method_metrics),
        eval: None,
    }))
}

fn average(metrics: Vec<(String, f64)>) -> Vec<(String, f64)> {
    let mut sums: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    for (name, value) in metrics {
        let entry = sums.entry(name).or_default();
        entry.0 += value;
        entry.1 += 1;
    }
    sums.into_iter().map(|(name, (sum, n))| (name, sum / n as f64)).collect()
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(length: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(length);
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
        .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_prefix(prefix.to_string());
    bar
}

/// Saves the optimizer state, the methods' own state (`method/<method>/<name>`) and progress
/// into the run's checkpoint folder (atomically).
pub fn save_checkpoint(dir: &RunDir, optimizer: &AdamW, run: &MethodRun, progress: &Progress) -> Result<()> {
    let folder = dir.checkpoint();
    std::fs::create_dir_all(&folder).map_err(Error::io(&folder))?;
    let state = folder.join("state.safetensors");
    let partial = folder.join("state.safetensors.partial");
    let methods = run.method_states()?.into_iter().map(|(n, t)| (format!("{METHOD_STATE}{n}"), t));
    let tensors: Vec<(String, Tensor)> =
        optimizer.state().into_iter().chain(methods).map(|(n, t)| (n, t.to_device(tch::Device::Cpu))).collect();
    let written = Tensor::write_safetensors(&tensors, &partial)
        .map_err(Error::from)
        .and_then(|()| std::fs::rename(&partial, &state).map_err(Error::io(&state)));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written?;
    dir.write_json(&folder.join("progress.json"), progress)
}

/// Where the run's checkpoint says training stopped.
pub fn read_progress(dir: &RunDir) -> Result<Progress> {
    let progress_path = dir.checkpoint().join("progress.json");
    let text = std::fs::read_to_string(&progress_path).map_err(Error::io(&progress_path))?;
    serde_json::from_str(&text).map_err(Error::json(&progress_path))
}

impl Progress {
    /// The epoch whose trainable tensors the checkpoint's optimizer state holds: the one it
    /// stopped inside, else the last one completed.
    pub fn state_epoch(&self) -> usize {
        if self.partial.is_some() {
            self.epochs_done
        } else {
            self.epochs_done.saturating_sub(1)
        }
    }
}

/// Where the methods' own state sits among a checkpoint's tensors.
const METHOD_STATE: &str = "method/";

/// Restores the checkpoint's optimizer state into `optimizer` (built over the trainable tensors
/// of [`Progress::state_epoch`]), the values of tensors that trained before into the run's
/// tensors, and the methods' own state.
pub fn load_checkpoint(dir: &RunDir, optimizer: &mut AdamW, run: &mut MethodRun, progress: &Progress) -> Result<()> {
    let state_path = dir.checkpoint().join("state.safetensors");
    let (methods, state): (Vec<_>, Vec<_>) =
        Tensor::read_safetensors(&state_path)?.into_iter().partition(|(n, _)| n.starts_with(METHOD_STATE));
    let tensors = run.tensors();
    optimizer.load_state(&state, progress.steps, &state_path, |name| tensors.get(name).map(Tensor::shallow_clone))?;
    let device = run.model.device();
    let methods: Vec<(String, Tensor)> =
        methods.into_iter().map(|(n, t)| (n[METHOD_STATE.len()..].to_string(), t.to_device(device))).collect();
    run.load_method_states(&methods)
}
