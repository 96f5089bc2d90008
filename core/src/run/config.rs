//! The configuration of one run: a TOML experiment file ← `FTLAB_*` environment ← CLI flags
//! and `--set key=value`, layered with figment at the CLI edge into one [`RunConfig`].
//!
//! Every field has a default, so `ftlab run --plugin pbft` alone is a complete run on the
//! embedded model and task. Unknown keys anywhere are an error that lists the valid ones.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::data::prompt::PromptSpec;
use crate::device::{DeviceSpec, Dtype};
use crate::error::{Error, Result};
use crate::methods::MethodSpec;

/// One run, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The model: `tiny-opt` (embedded), a folder, or a hub id such as `facebook/opt-125m`.
    pub model: String,
    /// The task (`ftlab data list`); `synthetic-nli` is embedded.
    pub task: String,
    /// Size k of the few-shot training set, drawn uniformly without replacement as llmft does.
    pub shots: usize,
    /// Seed of the few-shot draw and of the in-context demonstrations (llmft's data seed).
    pub data_seed: u32,
    /// Seed of initialisation, dropout and batch order.
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: DeviceSpec,
    /// Compute dtype: `fp32`, `bf16` or `fp16`.
    pub dtype: Dtype,
    /// Folder that holds run folders.
    pub out: PathBuf,
    /// The objective (exactly one).
    pub method: MethodSpec,
    /// Adapters, applied in order (none: full fine-tuning).
    pub adapters: Vec<MethodSpec>,
    /// Prompt pattern and verbalizer.
    pub prompt: PromptSpec,
    /// Optimisation.
    pub train: TrainConfig,
    /// Evaluation.
    pub eval: EvalConfig,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// The same rate throughout.
    Constant,
    /// Linear warm-up, then constant (the llmft paper's).
    WarmupConstant,
    /// Linear warm-up, then linear decay to zero.
    Linear,
    /// Linear warm-up, then cosine decay to zero.
    Cosine,
}

/// Optimisation. The defaults suit the embedded tiny model (the quickstart: 10 epochs at 1e-3);
/// the llmft paper's settings for real models (40 epochs, lr 1e-5 full / 1e-4 BitFit and LoRA,
/// batch 32) are in `experiments/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Stop after this many optimizer steps in total (overrides `epochs` when set).
    pub max_steps: Option<usize>,
    /// Examples per optimizer step (split into `grad_accum` micro-batches).
    pub batch_size: usize,
    /// Micro-batches accumulated per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate of AdamW.
    pub lr: f64,
    /// Decoupled weight decay (not applied to biases and layer norms).
    pub weight_decay: f64,
    /// AdamW's β₁ and β₂.
    pub betas: (f64, f64),
    /// AdamW's ε.
    pub eps: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Fraction of the steps spent warming up.
    pub warmup_ratio: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub grad_clip: f64,
    /// Longest training sequence in tokens; longer prompts are cut from the premise.
    pub max_length: usize,
    /// Evaluate after every epoch (else only at the end).
    pub eval_every_epoch: bool,
    /// Write a checkpoint after every epoch so `--resume` can continue.
    pub checkpoint: bool,
    /// Unlabelled training-split inputs (disjoint from the labelled set) drawn for objectives
    /// that train on unlabelled inputs, such as context distillation.
    pub unlabelled: usize,
    /// A file of unlabelled inputs (.tsv, .csv, .jsonl or .parquet with a header) to use instead
    /// of the training split's: its first `unlabelled` rows, read with `unlabelled_columns`.
    pub unlabelled_file: Option<PathBuf>,
    /// Which columns of `unlabelled_file` hold the task's texts, as `--columns` takes them
    /// (`premise=s1,hypothesis=s2`); default: columns named as the task's fields.
    pub unlabelled_columns: String,
    /// Mixed precision for every forward pass of the run (training, evaluation and the methods'
    /// precomputation): `none` (default), `bf16` or `fp16`, as `torch.autocast`; weights and
    /// optimizer state stay in `dtype`. fp16 training scales the loss dynamically.
    pub autocast: crate::device::Autocast,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            max_steps: None,
            batch_size: 8,
            grad_accum: 1,
            lr: 1e-3,
            weight_decay: 0.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
            schedule: Schedule::WarmupConstant,
            warmup_ratio: 0.1,
            grad_clip: 1.0,
            max_length: 256,
            eval_every_epoch: true,
            checkpoint: true,
            unlabelled: 256,
            unlabelled_file: None,
            unlabelled_columns: String::new(),
            autocast: crate::device::Autocast::None,
        }
    }
}

/// Evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Rows per batch.
    pub batch_size: usize,
    /// Out-of-domain sets to score (default: the task's own list).
    pub ood: Option<Vec<String>>,
    /// Score at most this many rows per set (llmft's `max_eval_samples`, subsampled with its
    /// fixed seed); `None` for all.
    pub max_examples: Option<usize>,
    /// Also score in-context learning (the `icl_method` objective with `icl_shots` balanced
    /// demonstrations as its `context`) before training, as the reference a distilled model is
    /// compared with. Default: on for objectives that train on unlabelled inputs (context
    /// distillation).
    pub icl_reference: Option<bool>,
    /// Demonstrations in the ICL reference's context.
    pub icl_shots: usize,
    /// The objective that scores the ICL reference (`name` and `config`, like `[method]`);
    /// default the `icl` plugin with its defaults.
    pub icl_method: MethodSpec,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            batch_size: 32,
            ood: None,
            max_examples: None,
            icl_reference: None,
            icl_shots: 8,
            icl_method: MethodSpec::named("icl"),
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            model: crate::model::source::EMBEDDED.into(),
            task: "synthetic-nli".into(),
            shots: 128,
            data_seed: 0,
            seed: 0,
            device: DeviceSpec::Auto,
            dtype: Dtype::F32,
            out: PathBuf::from("runs"),
            method: MethodSpec::named("pbft"),
            adapters: Vec::new(),
            prompt: PromptSpec::default(),
            train: TrainConfig::default(),
            eval: EvalConfig::default(),
        }
    }
}

/// Environment variables that share the `FTLAB_` prefix but are not run settings.
const NOT_SETTINGS: [&str; 2] = ["LOG", "PLUGIN_PATH"];

impl RunConfig {
    /// Layers defaults ← `file` ← `FTLAB_*` environment (`FTLAB_TRAIN__LR=1e-4`) ← `overrides`
    /// (dotted keys, e.g. from CLI flags and `--set`), then validates.
    pub fn load(file: Option<&Path>, overrides: &[(String, toml::Value)]) -> Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(RunConfig::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(Error::Io {
                    path: path.into(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such experiment file"),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        Self::finish(figment, overrides)
    }

    /// Like [`RunConfig::load`], with the experiment file's settings given as TOML text (an
    /// experiment grid's settings without its `[grid]` table).
    pub fn from_toml(text: &str, overrides: &[(String, toml::Value)]) -> Result<Self> {
        let figment = Figment::from(Serialized::defaults(RunConfig::default())).merge(Toml::string(text));
        Self::finish(figment, overrides)
    }

    /// The layers after the file: environment, then overrides; then extraction and validation.
    fn finish(mut figment: Figment, overrides: &[(String, toml::Value)]) -> Result<Self> {
        figment = figment.merge(Env::prefixed("FTLAB_").ignore(&NOT_SETTINGS).split("__"));
        for (key, value) in overrides {
            figment = figment.merge(Serialized::global(key.as_str(), value));
        }
        let config: RunConfig = figment.extract().map_err(|e| Error::RunConfig(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values a type cannot express.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| Err(Error::RunConfig(format!("`{key}`: {message}")));
        let t = &self.train;
        if let Err(e) = crate::data::task::find(&self.task) {
            return bad("task", e.to_string());
        }
        if self.shots == 0 {
            return bad("shots", "must be at least 1".into());
        }
        if t.batch_size == 0 || t.grad_accum == 0 || t.batch_size % t.grad_accum != 0 {
            return bad(
                "train.batch_size",
                format!("{} must be positive and divisible by train.grad_accum {}", t.batch_size, t.grad_accum),
            );
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return bad("train.lr", format!("must be positive, got {}", t.lr));
        }
        if !(0.0..1.0).contains(&t.warmup_ratio) {
            return bad("train.warmup_ratio", format!("must be in [0, 1), got {}", t.warmup_ratio));
        }
        if t.grad_clip < 0.0 || t.weight_decay < 0.0 {
            return bad("train.grad_clip", "grad_clip and weight_decay must not be negative".into());
        }
        if t.max_length < 8 {
            return bad("train.max_length", format!("{} tokens cannot hold a prompt", t.max_length));
        }
        if self.eval.batch_size == 0 {
            return bad("eval.batch_size", "must be positive".into());
        }
        for m in std::iter::once(&self.method).chain(&self.adapters) {
            if !m.config.is_object() {
                return bad(&format!("{}.config", m.name), "must be a table".into());
            }
        }
        Ok(())
    }

    /// The run folder's name: everything that distinguishes the cell of an experiment grid.
    pub fn run_name(&self) -> String {
        let mut method = self.method.name.clone();
        for a in &self.adapters {
            method.push('+');
            method.push_str(&a.name);
        }
        let model = self.model.replace(['/', '\\', '@'], "_");
        format!("{method}_{}_{model}_k{}_d{}_s{}", self.task, self.shots, self.data_seed, self.seed)
    }
}

/// Parses `key=value` (`--set train.lr=1e-4`); the value is read as TOML (numbers, booleans,
/// arrays, inline tables) and as a plain string otherwise.
pub fn parse_set(assignment: &str) -> Result<(String, toml::Value)> {
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| Error::RunConfig(format!("`--set {assignment}`: expected key=value, e.g. train.lr=1e-4")))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(Error::RunConfig(format!("`--set {assignment}`: empty key")));
    }
    let parsed = format!("v = {value}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v"));
    Ok((key.to_string(), parsed.unwrap_or_else(|| toml::Value::String(value.to_string()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("exp.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn layers_file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "shots = 16\n[train]\nlr = 3e-5\nepochs = 2\n[method]\nname = \"vanilla_ft\"\n");
        let overrides = vec![parse_set("train.epochs=5").unwrap(), parse_set("task=rte").unwrap()];
        let c = RunConfig::load(Some(&file), &overrides).unwrap();
        assert_eq!((c.shots, c.train.lr, c.train.epochs, c.task.as_str()), (16, 3e-5, 5, "rte"));
        assert_eq!(c.method.name, "vanilla_ft");
        assert_eq!(c.train.batch_size, TrainConfig::default().batch_size);
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_valid_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "[train]\nlearning_rate = 1e-4\n");
        let err = RunConfig::load(Some(&file), &[]).unwrap_err().to_string();
        assert!(err.contains("learning_rate") && err.contains("lr") && err.contains("exp.toml"), "{err}");
        let err = RunConfig::load(None, &[parse_set("shotz=4").unwrap()]).unwrap_err().to_string();
        assert!(err.contains("shotz") && err.contains("shots"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = RunConfig::load(None, &[parse_set("train.warmup_ratio=1.5").unwrap()]).unwrap_err().to_string();
        assert!(err.contains("train.warmup_ratio"), "{err}");
        let err = RunConfig::load(Some(Path::new("/no/such.toml")), &[]).unwrap_err().to_string();
        assert!(err.contains("/no/such.toml"), "{err}");
    }

    #[test]
    fn every_shipped_experiment_file_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                RunConfig::load(Some(&path), &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 2);
    }

    #[test]
    fn method_tables_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "[[adapters]]\nname = \"lora\"\nconfig = { r = 4, targets = [\"q_proj\"] }\n");
        let c = RunConfig::load(Some(&file), &[]).unwrap();
        assert_eq!(c.adapters[0].config, serde_json::json!({"r": 4, "targets": ["q_proj"]}));
        assert_eq!(c.run_name(), "pbft+lora_synthetic-nli_tiny-opt_k128_d0_s0");
    }
}
