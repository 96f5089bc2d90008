//! `ftlab run`: one fine-tuning (or in-context) run from a [`RunConfig`] to a run folder.
//!
//! Data flow (shared/DESIGN.md §1): model and tokenizer ← `config.model`; k-shot training set,
//! demonstrations and eval sets ← `config.task`; objective and adapters ← the registry; then
//! `prepare` (methods' precomputation), epochs of training with evaluation after each, and a
//! record with the configuration, versions, metrics, time and memory.

pub mod config;
pub mod data;
pub mod optim;
pub mod record;
pub mod train;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ftlab_registry::Registry;
use ftlab_sdk::Role;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use config::RunConfig;

use self::data::{DataSummary, RunData};
use self::optim::AdamW;
use self::record::{RunDir, GIT_REVISION};
use self::train::{EpochMetrics, Progress};
use crate::data::dataset::EvalSet;
use crate::device::Platform;
use crate::error::{Error, Result};
use crate::eval::harness::{self, EvalOptions, EvalReport};
use crate::eval::{PhaseMeter, PhaseResources};
use crate::methods::MethodRun;
use crate::model::{LoadOptions, Model, ModelOrigin};

/// How to run beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the run folder's checkpoint.
    pub resume: bool,
    /// Replace a finished run's folder.
    pub force: bool,
    /// Stop after this many epochs in this invocation (resume later with `resume`).
    pub epochs_budget: Option<usize>,
}

/// A method's provenance in the record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodProvenance {
    /// Method name.
    pub name: String,
    /// `objective` or `adapter`.
    pub role: Role,
    /// Library version.
    pub version: String,
    /// Library file.
    pub library: std::path::PathBuf,
    /// SHA-256 of the library file.
    pub sha256: String,
}

/// Headline numbers of one evaluation, for tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Headline {
    /// In-domain accuracy (argmax over the verbalizer).
    pub acc_in: f64,
    /// Mean accuracy over the out-of-domain sets (`None` without any).
    pub acc_ood: Option<f64>,
    /// The full harness report.
    pub report: serde_json::Value,
}

/// Wall-clock seconds of each phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Loading model, data and methods.
    pub load: f64,
    /// Methods' precomputation (`prepare`, e.g. teacher distributions).
    pub prepare: f64,
    /// Training.
    pub train: f64,
    /// Evaluation.
    pub eval: f64,
    /// Everything.
    pub total: f64,
}

/// How a run stands; `record.json` holds it as lowercase text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// In progress (never written to a final record).
    Running,
    /// Stopped after `epochs_budget` epochs; `--resume` continues it (no record is written).
    Paused,
    /// Every epoch ran and was evaluated.
    Completed,
    /// It stopped with an error, kept in the record's `error`.
    Failed,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Failed => "failed",
        })
    }
}

/// The final record of a run (`record.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run folder's name.
    pub name: String,
    /// `completed` or `failed` in a written record.
    pub status: RunStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// The resolved configuration.
    pub config: RunConfig,
    /// Model id, hub revision and weight files.
    pub model: Option<ModelOrigin>,
    /// The device, CPU kernel set and thread count the run computed with.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// The methods' versions and library hashes.
    pub methods: Vec<MethodProvenance>,
    /// The ftlab git revision that ran.
    pub git_revision: String,
    /// ftlab's version.
    pub ftlab_version: String,
    /// Sampling facts.
    pub data: Option<DataSummary>,
    /// Trainable scalars (0 for ICL).
    pub trainable_parameters: i64,
    /// Evaluation before training: the zero-shot model (or the in-context one, for ICL).
    pub zero_shot: Option<Headline>,
    /// In-context learning with `eval.icl_shots` demonstrations on the untrained model: the
    /// teacher a distilled model is compared with.
    pub icl_reference: Option<Headline>,
    /// Evaluation after the last epoch.
    pub last: Option<Headline>,
    /// The epoch (1-based; 0 = before training) with the best in-domain accuracy, and its scores.
    pub best: Option<(usize, Headline)>,
    /// Phase timings.
    pub timings: Timings,
    /// Time, tokens/s and peak memory (RSS; CUDA allocator on GPU) of the training epochs run
    /// in this invocation. Evaluation's are in each eval set's report.
    pub train_resources: Option<PhaseResources>,
    /// Peak resident memory of the process, in bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Unix seconds at start and end.
    pub started_at: u64,
    /// Unix seconds at the end.
    pub finished_at: u64,
}

impl RunRecord {
    /// The record of `config` with `status` before anything ran (started and finished now).
    pub fn new(config: &RunConfig, status: RunStatus) -> Self {
        Self {
            name: config.run_name(),
            status,
            error: None,
            config: config.clone(),
            model: None,
            platform: None,
            methods: Vec::new(),
            git_revision: GIT_REVISION.into(),
            ftlab_version: env!("CARGO_PKG_VERSION").into(),
            data: None,
            trainable_parameters: 0,
            zero_shot: None,
            icl_reference: None,
            last: None,
            best: None,
            timings: Timings::default(),
            train_resources: None,
            peak_rss_bytes: None,
            started_at: now(),
            finished_at: now(),
        }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Runs `config`, writing its folder under `config.out`; a failure is recorded, then returned.
pub fn run(config: &RunConfig, options: &RunOptions, registry: &Registry) -> Result<RunRecord> {
    let dir = RunDir::create(&config.out.join(config.run_name()))?;
    if dir.record().is_file() && !options.force {
        return Err(Error::RunConfig(format!(
            "{} is already finished (pass --force to run it again)",
            dir.path.display()
        )));
    }
    if !options.resume {
        for stale in [dir.metrics(), dir.record()] {
            let _ = std::fs::remove_file(stale);
        }
        let _ = std::fs::remove_dir_all(dir.checkpoint());
    }
    dir.write_json(&dir.config(), config)?;
    let mut record = RunRecord::new(config, RunStatus::Running);
    let outcome = execute(config, options, registry, &dir, &mut record);
    record.finished_at = now();
    record.peak_rss_bytes = crate::eval::resources::process_peak_rss_bytes();
    match outcome {
        Ok(true) => record.status = RunStatus::Completed,
        Ok(false) => {
            record.status = RunStatus::Paused;
            return Ok(record);
        }
        Err(e) => {
            record.status = RunStatus::Failed;
            record.error = Some(e.to_string());
            dir.write_json(&dir.record(), &record)?;
            return Err(e);
        }
    }
    dir.write_json(&dir.record(), &record)?;
    Ok(record)
}

/// The run itself; `Ok(false)` when it stopped early for `epochs_budget`.
fn execute(
    config: &RunConfig,
    options: &RunOptions,
    registry: &Registry,
    dir: &RunDir,
    record: &mut RunRecord,
) -> Result<bool> {
    let start = Instant::now();
    let (device, dtype) = (config.device.resolve()?, config.dtype);
    let model = Model::load(&config.model, LoadOptions { device, dtype, weights_format: None })?;
    record.model = Some(model.origin.clone());
    record.platform = Some(Platform::of(device)?);
    let data = RunData::load(config, &model.tokenizer)?;
    record.data = Some(data.summary.clone());
    let mut run = MethodRun::new(&model, registry, &config.method, &config.adapters, data.task_info(), config.seed)?;
    // The ICL reference: by default for objectives that distil a context into the model.
    let distils = run.objective.inputs == ftlab_sdk::Inputs::Unlabelled;
    if config.eval.icl_reference.unwrap_or(distils) && !options.resume {
        record.icl_reference = Some(icl_reference(config, registry, &model, &data)?);
        // The reference froze the base model for itself; restore this run's choice.
        run.apply_trainability()?;
    }
    record.methods = provenance(config, registry)?;
    record.timings.load = start.elapsed().as_secs_f64();

    let t = Instant::now();
    config.train.autocast.run(device, || run.prepare(data.prepare_data(&model.tokenizer, device)))?;
    record.timings.prepare = t.elapsed().as_secs_f64();

    let mut optimizer = AdamW::new(run.trainable(), &config.train);
    record.trainable_parameters = optimizer.num_parameters();
    let trains = record.trainable_parameters > 0;
    // Steps and epochs count the rows the objective trains on (labelled or unlabelled).
    let rows = data.training_set(run.objective.inputs).0.len();
    let total = if trains { train::total_steps(config, rows) } else { 0 };
    let per_epoch = rows.div_ceil(config.train.batch_size);
    let epochs = if trains { config.train.max_steps.map_or(config.train.epochs, |s| s.div_ceil(per_epoch)) } else { 0 };
    let mut progress = if options.resume && dir.checkpoint().join("progress.json").is_file() {
        train::load_checkpoint(dir, &mut optimizer)?
    } else {
        Progress::default()
    };
    let mut best = read_best(dir)?;
    if progress.epochs_done == 0 && !options.resume {
        // Before training: the zero-shot (or in-context) model, as epoch 0.
        let (headline, seconds) = evaluate(&mut run, &data, &model, config)?;
        record.timings.eval += seconds;
        log_epoch(
            dir,
            EpochMetrics {
                epoch: 0,
                step: 0,
                train_loss: f64::NAN,
                lr: 0.0,
                tokens: 0,
                method_metrics: vec![],
                eval: Some(serde_json::to_value(&headline).unwrap_or_default()),
            },
        )?;
        best = Some((0, headline.clone()));
        record.zero_shot = Some(headline.clone());
        record.last = Some(headline);
    }
    let mut ran = 0;
    for epoch in progress.epochs_done..epochs {
        if options.epochs_budget.is_some_and(|budget| ran >= budget) {
            return Ok(false);
        }
        let mut meter = PhaseMeter::start(device);
        let mut metrics = train::train_epoch(config, &mut run, &data, &model.tokenizer, &mut optimizer, epoch, total)?;
        meter.add_tokens(metrics.tokens);
        let used = meter.finish();
        record.timings.train += used.wall_seconds;
        record.train_resources = Some(match record.train_resources.take() {
            Some(before) => before.then(used),
            None => used,
        });
        if config.train.eval_every_epoch || epoch + 1 == epochs {
            let (headline, seconds) = evaluate(&mut run, &data, &model, config)?;
            record.timings.eval += seconds;
            if best.as_ref().is_none_or(|(_, b)| headline.acc_in > b.acc_in) {
                best = Some((epoch + 1, headline.clone()));
            }
            metrics.eval = Some(serde_json::to_value(&headline).unwrap_or_default());
            record.last = Some(headline);
        }
        tracing::info!(
            epoch = epoch + 1,
            loss = metrics.train_loss,
            acc_in = record.last.as_ref().map(|h| h.acc_in),
            "epoch done"
        );
        log_epoch(dir, metrics)?;
        progress = Progress { epochs_done: epoch + 1, steps: optimizer.step };
        if config.train.checkpoint {
            train::save_checkpoint(dir, &optimizer, &progress)?;
        }
        ran += 1;
    }
    if record.last.is_none() || (options.resume && ran == 0) {
        let (headline, seconds) = evaluate(&mut run, &data, &model, config)?;
        record.timings.eval += seconds;
        record.last = Some(headline);
    }
    record.best = best;
    run.export_adapters(&dir.path)?;
    record.timings.total = start.elapsed().as_secs_f64() + record.timings.total;
    Ok(true)
}

/// In-context learning on the untrained model: `eval.icl_method` with `eval.icl_shots`
/// demonstrations as the prepare data's `context`.
fn icl_reference(config: &RunConfig, registry: &Registry, model: &Model, data: &RunData) -> Result<Headline> {
    let mut icl = MethodRun::new(model, registry, &config.eval.icl_method, &[], data.task_info(), config.seed)?;
    let mut prepare = data.prepare_data(&model.tokenizer, model.device());
    prepare.json["context"] = data.context_of(config.eval.icl_shots, config.data_seed)?.into();
    config.train.autocast.run(model.device(), || icl.prepare(prepare))?;
    Ok(evaluate(&mut icl, data, model, config)?.0)
}

fn log_epoch(dir: &RunDir, metrics: EpochMetrics) -> Result<()> {
    dir.append_metrics(&metrics)
}

/// The best evaluation logged so far in `metrics.jsonl` (for resumed runs).
fn read_best(dir: &RunDir) -> Result<Option<(usize, Headline)>> {
    let Ok(text) = std::fs::read_to_string(dir.metrics()) else { return Ok(None) };
    let mut best: Option<(usize, Headline)> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).map_err(Error::json(dir.metrics()))?;
        let (Some(epoch), Some(eval)) = (value["epoch"].as_u64(), value.get("eval").filter(|e| !e.is_null())) else {
            continue;
        };
        let headline: Headline = serde_json::from_value(eval.clone()).map_err(Error::json(dir.metrics()))?;
        if best.as_ref().is_none_or(|(_, b)| headline.acc_in > b.acc_in) {
            best = Some((epoch as usize, headline));
        }
    }
    Ok(best)
}

/// Scores every eval set with the objective's `predict`; returns the headline and seconds.
fn evaluate(run: &mut MethodRun, data: &RunData, model: &Model, config: &RunConfig) -> Result<(Headline, f64)> {
    run.set_train(false)?;
    let options = EvalOptions {
        batch_size: config.eval.batch_size,
        max_length: config.train.max_length,
        context: String::new(),
        device: model.device(),
        metrics: data.task.metrics.to_vec(),
    };
    let mut reports: Vec<EvalReport> = Vec::new();
    let bar = train::progress_bar(data.eval.len() as u64, "eval");
    for set in &data.eval {
        let mut scorer = |b: &crate::data::batch::Batch| {
            config.train.autocast.run(model.device(), || run.predict(data.method_batch(b, &set.data, false)))
        };
        reports.push(harness::evaluate(
            std::slice::from_ref(set),
            &data.prompt,
            &model.tokenizer,
            &options,
            &mut scorer,
        )?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = reports.iter().map(|r| r.resources.wall_seconds).sum();
    Ok((headline(&data.eval, reports), seconds))
}

fn headline(sets: &[EvalSet], reports: Vec<EvalReport>) -> Headline {
    let accuracy = |r: &EvalReport| r.sets.first().map_or(f64::NAN, |s| s.scores.verbalizer.accuracy);
    let acc_in = sets.iter().zip(&reports).find(|(s, _)| s.in_domain).map_or(f64::NAN, |(_, r)| accuracy(r));
    let ood: Vec<f64> = sets.iter().zip(&reports).filter(|(s, _)| !s.in_domain).map(|(_, r)| accuracy(r)).collect();
    let acc_ood = (!ood.is_empty()).then(|| ood.iter().sum::<f64>() / ood.len() as f64);
    let sets: Vec<_> = reports.into_iter().flat_map(|r| r.sets).collect();
    Headline { acc_in, acc_ood, report: serde_json::to_value(sets).unwrap_or_default() }
}

fn provenance(config: &RunConfig, registry: &Registry) -> Result<Vec<MethodProvenance>> {
    let roles =
        std::iter::once((&config.method, Role::Objective)).chain(config.adapters.iter().map(|a| (a, Role::Adapter)));
    roles
        .map(|(m, role)| {
            let d = registry.find(&m.name, role)?;
            let bytes = std::fs::read(&d.library).map_err(Error::io(&d.library))?;
            let sha256 = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            Ok(MethodProvenance {
                name: d.name.clone(),
                role,
                version: d.version.clone(),
                library: d.library.clone(),
                sha256,
            })
        })
        .collect()
}
