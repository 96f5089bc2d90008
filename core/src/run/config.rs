//! The configuration of one run, as the core receives it: finished and validated. The `ftlab`
//! binary layers it (defaults ← experiment file ← `FTLAB_*` environment ← flags) and checks it
//! with [`RunConfig::validate`] before any run folder exists.
//!
//! Every field but the methods has a default here, so a run needs only its objective's name
//! (the binary's defaults name one). Unknown keys anywhere are an error that lists the valid ones.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::prompt::PromptSpec;
use crate::device::{DeviceList, Dtype};
use crate::error::{Error, Result};
use crate::methods::MethodSpec;

/// One run, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The model: `tiny-opt` (embedded), a folder, or a hub id such as `facebook/opt-125m`.
    pub model: String,
    /// Where the tokenizer comes from when the model folder has none (a folder or hub id, e.g.
    /// the base model of a folder written by `save_pretrained`); unset: beside the weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// The task (`ftlab data list`); `synthetic-nli` is embedded.
    pub task: String,
    /// A file of the task's rows replacing its own data (.tsv, .csv, .jsonl or .parquet; the
    /// `text` task also reads .txt): every split reads it, except the `text` task's held-out rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Which columns of `file` hold the task's texts and label (`premise=s1,hypothesis=s2,label=y`;
    /// `text=body` for documents); default: columns named as the task's fields.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub columns: String,
    /// Size k of the few-shot training set, drawn uniformly without replacement as llmft does.
    pub shots: usize,
    /// Seed of the few-shot draw and of the in-context demonstrations (llmft's data seed).
    pub data_seed: u32,
    /// Seed of initialisation, dropout and batch order.
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`; several (`cuda:0,cuda:1`) spread the model's decoder
    /// layers over them, for models whose weights exceed one GPU.
    pub device: DeviceList,
    /// Compute dtype: `fp32`, `bf16` or `fp16`.
    pub dtype: Dtype,
    /// Folder that holds run folders.
    pub out: PathBuf,
    /// The objective (exactly one; no default here).
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

/// Optimisation. The defaults (10 epochs at 1e-3) are the README's main job's, context
/// distillation on the embedded model; fine-tuning that pretrained model takes smaller steps
/// (`tests/embedded.rs`), and the llmft paper's settings for real models (40 epochs, lr 1e-5
/// full / 1e-4 BitFit and LoRA, batch 32) are in `experiments/`.
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
    /// Peak learning rates of parameter groups, by name prefix, for parameters that need a
    /// different step from the rest: `{ "vanilla_ft." = 1e-2 }` gives vanilla FT's new head
    /// (`vanilla_ft.score.weight`) 1e-2 and every other parameter `lr`. Names are HF checkpoint
    /// keys (`model.decoder.layers.0.fc1.weight`) and `<method>.<name>` for a method's own; the
    /// longest matching prefix wins, and the schedule scales every group alike. A prefix that
    /// names no trainable parameter is an error (a typo would otherwise change nothing).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub lr_groups: BTreeMap<String, f64>,
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
    /// Write the trained model as an HF folder (`model/` in the run folder: config.json,
    /// model.safetensors, tokenizer.json) that `--model` and transformers load: how a model
    /// pretrained or fully fine-tuned with ftlab is kept. Adapters export themselves instead.
    pub save_model: bool,
    /// Activation checkpointing, as HF's `gradient_checkpointing`: each decoder layer keeps only
    /// its input and runs again in the backward pass, so training memory holds one layer's
    /// activations instead of all of them, for about a third more compute. Results are the same.
    pub gradient_checkpointing: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            max_steps: None,
            batch_size: 8,
            grad_accum: 1,
            lr: 1e-3,
            lr_groups: BTreeMap::new(),
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
            save_model: false,
            gradient_checkpointing: false,
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
    /// The objective that scores the ICL reference (`name` and `config`, like `[method]`; the
    /// binary's default is the `icl` plugin with its defaults).
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
            icl_method: MethodSpec::default(),
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            model: crate::model::source::EMBEDDED.into(),
            task: "synthetic-nli".into(),
            file: None,
            columns: String::new(),
            shots: 128,
            data_seed: 0,
            seed: 0,
            tokenizer: None,
            device: DeviceList::default(),
            dtype: Dtype::F32,
            out: PathBuf::from("runs"),
            method: MethodSpec::default(),
            adapters: Vec::new(),
            prompt: PromptSpec::default(),
            train: TrainConfig::default(),
            eval: EvalConfig::default(),
        }
    }
}

/// A key and what is wrong with its value.
type Invalid = (&'static str, String);

impl TrainConfig {
    /// Checks the optimisation settings a type cannot express.
    fn check(&self) -> std::result::Result<(), Invalid> {
        let t = self;
        if t.batch_size == 0 || t.grad_accum == 0 || t.batch_size % t.grad_accum != 0 {
            let message =
                format!("{} must be positive and divisible by train.grad_accum {}", t.batch_size, t.grad_accum);
            return Err(("train.batch_size", message));
        }
        if t.epochs == 0 && t.max_steps.is_none() || t.max_steps == Some(0) {
            return Err((
                "train.epochs",
                "a run trains at least one step (train.epochs or train.max_steps ≥ 1)".into(),
            ));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(("train.lr", format!("must be positive, got {}", t.lr)));
        }
        if let Some((prefix, lr)) = t.lr_groups.iter().find(|(_, lr)| !(**lr > 0.0 && lr.is_finite())) {
            return Err(("train.lr_groups", format!("\"{prefix}\": must be positive, got {lr}")));
        }
        if !(0.0..1.0).contains(&t.warmup_ratio) {
            return Err(("train.warmup_ratio", format!("must be in [0, 1), got {}", t.warmup_ratio)));
        }
        if t.grad_clip < 0.0 || t.weight_decay < 0.0 {
            return Err(("train.grad_clip", "grad_clip and weight_decay must not be negative".into()));
        }
        let (beta1, beta2) = t.betas;
        if !((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2)) {
            return Err(("train.betas", format!("both must be in [0, 1), got [{beta1}, {beta2}]")));
        }
        if !(t.eps > 0.0 && t.eps.is_finite()) {
            return Err(("train.eps", format!("must be positive, got {}", t.eps)));
        }
        if t.max_length < 8 {
            return Err(("train.max_length", format!("{} tokens cannot hold a prompt", t.max_length)));
        }
        Ok(())
    }
}

impl EvalConfig {
    /// Checks the evaluation settings a type cannot express.
    fn check(&self) -> std::result::Result<(), Invalid> {
        if self.batch_size == 0 {
            return Err(("eval.batch_size", "must be positive".into()));
        }
        if self.max_examples == Some(0) {
            return Err(("eval.max_examples", "0 rows score nothing (omit it to score every row)".into()));
        }
        if self.icl_method.name.is_empty() {
            return Err(("eval.icl_method.name", "no objective named for the ICL reference".into()));
        }
        Ok(())
    }
}

impl RunConfig {
    /// Checks values a type cannot express; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |(key, message): Invalid| Error::RunConfig(format!("`{key}`: {message}"));
        if let Err(e) = crate::data::task::find(&self.task) {
            return Err(bad(("task", e.to_string())));
        }
        if self.shots == 0 {
            return Err(bad(("shots", "must be at least 1".into())));
        }
        self.train.check().map_err(bad)?;
        self.eval.check().map_err(bad)?;
        if self.method.name.is_empty() {
            return Err(bad(("method.name", "no objective named (`--plugin NAME`, or `name` in `[method]`)".into())));
        }
        if self.train.save_model && !self.adapters.is_empty() {
            return Err(bad((
                "train.save_model",
                "writes a fully trained model; adapters export themselves (drop the adapters or this key)".into(),
            )));
        }
        for m in std::iter::once(&self.method).chain(&self.adapters) {
            if !m.config.is_object() {
                return Err(Error::RunConfig(format!("`{}.config`: must be a table", m.name)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key() {
        let named = RunConfig { method: MethodSpec::named("m"), ..Default::default() };
        let c = RunConfig { eval: EvalConfig { icl_method: MethodSpec::named("i"), ..Default::default() }, ..named };
        c.validate().unwrap();
        let check = |c: &RunConfig, key: &str| {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        };
        check(&RunConfig { method: MethodSpec::default(), ..c.clone() }, "method.name");
        let saves = TrainConfig { save_model: true, ..c.train.clone() };
        check(
            &RunConfig { train: saves, adapters: vec![MethodSpec::named("an_adapter")], ..c.clone() },
            "train.save_model",
        );
        check(&RunConfig { task: "no-such-task".into(), ..c.clone() }, "task");
        check(&RunConfig { eval: EvalConfig { max_examples: Some(0), ..c.eval.clone() }, ..c.clone() }, "max_examples");
        for (train, key) in [
            (TrainConfig { epochs: 0, ..c.train.clone() }, "train.epochs"),
            (TrainConfig { max_steps: Some(0), ..c.train.clone() }, "train.epochs"),
            (TrainConfig { betas: (1.5, 2.0), ..c.train.clone() }, "train.betas"),
            (TrainConfig { warmup_ratio: 1.5, ..c.train.clone() }, "train.warmup_ratio"),
        ] {
            check(&RunConfig { train, ..c.clone() }, key);
        }
    }
}
