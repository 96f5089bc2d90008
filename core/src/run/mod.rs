//! `ftlab run`: one fine-tuning (or in-context) run from a [`RunConfig`] to a run folder.
//!
//! Data flow (shared/DESIGN.md §1): model and tokenizer ← `config.model`; k-shot training set,
//! demonstrations and eval sets ← `config.task`; objective and adapters ← the registry; then
//! `prepare` (methods' precomputation), epochs of training with evaluation after each, and a
//! record with the configuration, versions, metrics, time and memory.

pub mod config;
pub mod data;
mod execute;
pub mod optim;
pub mod record;
pub mod stop;
pub mod train;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use ftlab_registry::Registry;
use ftlab_sdk::Role;
use serde::{Deserialize, Serialize};

pub use config::RunConfig;

use self::data::DataSummary;
use self::record::{RunDir, GIT_DIRTY, GIT_REVISION};
use crate::device::Platform;
use crate::error::{Error, Result};
use crate::eval::PhaseResources;
use crate::model::ModelOrigin;

/// How to run beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the run folder's checkpoint.
    pub resume: bool,
    /// Replace a finished run's folder.
    pub force: bool,
    /// Stop after this many epochs in this invocation (resume later with `resume`).
    pub epochs_budget: Option<usize>,
    /// Refuse a model whose weights hold NaN or infinite values (else the record warns).
    pub strict: bool,
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

/// A folder a run exported (an adapter, or the model with `train.save_model`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedFolder {
    /// The folder, relative to the run folder (`adapter`, `adapter-<name>` for several, or
    /// `model`).
    pub folder: std::path::PathBuf,
    /// Bytes of its files (an adapter's `adapter_config.json` and weights; the model's config,
    /// weights and tokenizer).
    pub bytes: u64,
}

impl ExportedFolder {
    /// `folder` (inside `run`) and the size of its files.
    pub fn of(run: &std::path::Path, folder: &std::path::Path) -> Result<Self> {
        let files = std::fs::read_dir(folder).map_err(Error::io(folder))?;
        let mut bytes = 0;
        for file in files {
            let file = file.map_err(Error::io(folder))?;
            bytes += file.metadata().map_err(Error::io(file.path()))?.len();
        }
        let relative = folder.strip_prefix(run).unwrap_or(folder).to_path_buf();
        Ok(Self { folder: relative, bytes })
    }
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

impl Timings {
    /// Adds an earlier segment's seconds to these.
    pub fn add(&mut self, earlier: &Timings) {
        self.load += earlier.load;
        self.prepare += earlier.prepare;
        self.train += earlier.train;
        self.eval += earlier.eval;
        self.total += earlier.total;
    }
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
    /// What a reader of the results should know (e.g. weights that held NaN).
    #[serde(default)]
    pub warnings: Vec<String>,
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
    /// Whether the build had uncommitted changes to tracked files.
    #[serde(default)]
    pub git_dirty: bool,
    /// The adapters the run exported (PEFT-format folders in the run folder), with their size.
    #[serde(default)]
    pub exported_adapters: Vec<ExportedFolder>,
    /// The trained model's folder (`model`) and size, with `train.save_model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_model: Option<ExportedFolder>,
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
            warnings: Vec::new(),
            config: config.clone(),
            model: None,
            platform: None,
            methods: Vec::new(),
            git_revision: GIT_REVISION.into(),
            git_dirty: GIT_DIRTY,
            exported_adapters: Vec::new(),
            saved_model: None,
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
    let dir = open_folder(config, options)?;
    dir.write_json(&dir.config(), config)?;
    let mut record = RunRecord::new(config, RunStatus::Running);
    let outcome = execute::execute(config, options, registry, &dir, &mut record);
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
            // The run's own error is the one to report; a record that cannot be written (a
            // full disk) is logged beside it.
            if let Err(write) = dir.write_json(&dir.record(), &record) {
                tracing::error!("could not record the failure: {write}");
            }
            return Err(e);
        }
    }
    dir.write_json(&dir.record(), &record)?;
    Ok(record)
}

/// The settings `--resume` may change: they do not alter the training trajectory. `train.epochs`
/// and `train.max_steps` may change too when the schedule is `constant` (no warm-up or decay
/// depends on the run's length).
pub const RESUMABLE_CHANGES: [&str; 5] =
    ["eval.", "out", "train.checkpoint", "train.eval_every_epoch", "train.gradient_checkpointing"];

/// The run folder of `config`, made ready: a finished run is kept unless `--force` (which moves
/// it aside to `NAME.N/` when its settings differ, else replaces it); a failed or interrupted
/// run resumes with `--resume` (refused if a setting that shapes training changed) or starts
/// over without it.
fn open_folder(config: &RunConfig, options: &RunOptions) -> Result<RunDir> {
    let path = config.out.join(config.run_name());
    let dir = RunDir::create(&path)?;
    let previous: Option<RunRecord> =
        std::fs::read_to_string(dir.record()).ok().and_then(|text| serde_json::from_str(&text).ok());
    let finished = previous.as_ref().filter(|r| r.status == RunStatus::Completed);
    if let Some(finished) = finished {
        if !options.force {
            return Err(Error::RunConfig(format!(
                "{} is already finished (pass --force to run it again)",
                dir.path.display()
            )));
        }
        if !changed_settings(&finished.config, config).is_empty() {
            // `NAME.N`, appended (a run name may itself hold dots, e.g. `opt-1.3b`).
            let numbered = |n: usize| std::path::PathBuf::from(format!("{}.{n}", path.display()));
            let aside = (1..).map(numbered).find(|p| !p.exists()).unwrap_or_default();
            std::fs::rename(&path, &aside).map_err(Error::io(&aside))?;
            tracing::info!("the finished run with other settings is now {}", aside.display());
            return RunDir::create(&path);
        }
    }
    if options.resume && finished.is_none() {
        if let Some(old) = std::fs::read_to_string(dir.config()).ok().and_then(|t| serde_json::from_str(&t).ok()) {
            let changed = changed_settings(&old, config);
            if !changed.is_empty() {
                return Err(Error::RunConfig(format!(
                    "{}: --resume would continue with changed settings ({}); only {} may change \
                     (and train.epochs/max_steps with a constant schedule). Start over without --resume.",
                    dir.path.display(),
                    changed.join(", "),
                    RESUMABLE_CHANGES.join(", ")
                )));
            }
        }
        let _ = std::fs::remove_file(dir.record());
        return Ok(dir);
    }
    for stale in [dir.metrics(), dir.record()] {
        let _ = std::fs::remove_file(stale);
    }
    for stale in [dir.checkpoint(), dir.predictions()] {
        let _ = std::fs::remove_dir_all(stale);
    }
    Ok(dir)
}

/// The dotted keys whose values differ between `old` and `new` and that shape training (all but
/// [`RESUMABLE_CHANGES`]).
fn changed_settings(old: &RunConfig, new: &RunConfig) -> Vec<String> {
    let flat = |c: &RunConfig| {
        let mut keys = BTreeMap::new();
        flatten("", &serde_json::to_value(c).unwrap_or_default(), &mut keys);
        keys
    };
    let (old, new) = (flat(old), flat(new));
    let constant =
        |c: &BTreeMap<String, serde_json::Value>| c.get("train.schedule").and_then(|v| v.as_str()) == Some("constant");
    let length_may_change = constant(&old) && constant(&new);
    let allowed = |key: &str| {
        RESUMABLE_CHANGES.iter().any(|a| key == *a || (a.ends_with('.') && key.starts_with(a)))
            || (length_may_change && (key == "train.epochs" || key == "train.max_steps"))
    };
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter().filter(|key| !allowed(key) && old.get(*key) != new.get(*key)).cloned().collect()
}

/// `value`'s leaves by dotted key (arrays are leaves).
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten(&key, v, out);
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.clone());
        }
    }
}
