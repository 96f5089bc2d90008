//! `context_distill`: context distillation (Snell et al., 2022, "Learning by Distilling
//! Context", <https://arxiv.org/abs/2209.15189>; Askell et al., 2021, "A General Language
//! Assistant as a Laboratory for Alignment", <https://arxiv.org/abs/2112.00861>), the headline
//! method of shared/DESIGN.md §5.
//!
//! The teacher is the frozen pretrained model reading a context C of k balanced, shuffled
//! demonstrations before an input's prompt q(x); the student is the run's model (its adapters,
//! or all of it) reading q(x) alone. The loss is the forward
//! KL(p_teacher(· | C, q(x)) ‖ p_student(· | q(x))) at the answer position, over the full
//! vocabulary (top-m buckets, see `targets.rs`) or the verbalizer, at temperature τ and scaled
//! by τ², plus an optional λ·CE on inputs whose label is known. With `target = "hard"` the
//! loss is instead the cross-entropy against the teacher's answer, its most probable label word
//! — sequence-level distillation (Kim & Rush, 2016, <https://arxiv.org/abs/1606.07947>) of a
//! one-token answer, as Snell et al. train on the teacher's own generations; the KL is still
//! logged. With `target = "generated"` the target is the teacher's greedy continuation of up
//! to `max_new_tokens` tokens (its answer first, argmax over the vocabulary, ending at `</s>`),
//! learnt token by token as SFT on self-generated text learns (see `sequence.rs`); generating
//! costs the teacher a forward pass per token.
//!
//! Efficiency is part of the method: `prepare` computes every teacher distribution once, in
//! batches, before any step — so the teacher stays the pretrained model even when base weights
//! train — and keeps only compact targets. A context shared by all inputs (`resample = false`)
//! is encoded once and its keys/values reused. The student predicts with no context (the
//! default `predict`).

mod sampler;
mod sequence;
mod targets;
mod teacher;

use std::collections::HashMap;
use std::time::Instant;

use ftlab_sdk::prelude::*;

use targets::{agreement, distill_loss, Targets};
use teacher::{Input, Teacher};

/// Which distributions the KL compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KlOver {
    /// The full vocabulary, in `top_m` + 1 buckets.
    Vocab,
    /// Only the verbalizer tokens, both distributions renormalised over them.
    Verbalizer,
}

/// What the student learns from the teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The teacher's distribution (the KL of `kl`).
    Soft,
    /// The teacher's answer: cross-entropy against its most probable label word.
    Hard,
    /// The teacher's greedy continuation (`max_new_tokens`): cross-entropy on each token.
    Generated,
}

/// Which inputs x the student is trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Unlabelled task inputs the runtime supplies (training-split inputs outside the
    /// labelled pool, `train.unlabelled` of them).
    Unlabelled,
    /// The labelled few-shot inputs themselves (each context leaves out the input's own
    /// demonstration).
    Labelled,
}

/// Hyperparameters, set in an experiment file under `context_distill`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Demonstrations per context (default 8): k / num_labels of each label, shuffled. A
    /// context that would not fit the model's window with its query gets fewer (logged as
    /// `contexts_shortened` and `context_k_min`).
    pub k: usize,
    /// A fresh context per input, drawn from the labelled pool, so every demonstration gets
    /// internalised (default true). False: one context shared by all inputs.
    pub resample: bool,
    /// Temperature τ of both distributions (default 1.0); the loss is scaled by τ².
    pub temperature: f64,
    /// KL over the full vocabulary (`"vocab"`, default) or the verbalizer tokens (`"verbalizer"`).
    pub kl: KlOver,
    /// Learn the teacher's distribution (`"soft"`, default), its answer (`"hard"`: the
    /// cross-entropy against its most probable label word) or its greedy continuation
    /// (`"generated"`: the cross-entropy of each of its tokens).
    pub target: Target,
    /// With `target = "generated"`: the longest continuation, in tokens (default 8).
    pub max_new_tokens: usize,
    /// Tokens the cached full-vocabulary target keeps (default 64), the rest merged into one
    /// bucket; exact when ≥ the vocabulary. Bounds the cache at m ids and probabilities per input.
    pub top_m: usize,
    /// Weight λ of the cross-entropy against the gold label word on labelled rows (default 0).
    pub ce_weight: f64,
    /// Train on `"unlabelled"` inputs (default) or the `"labelled"` ones.
    pub inputs: Source,
    /// With `resample = false`: encode the shared context once and reuse its keys/values
    /// (default true); false prepends it to every input (the reference for tests and
    /// benchmarks). Ignored with `resample = true`: every context differs, nothing is shared.
    pub cache_context: bool,
    /// The teacher's model (`tiny-opt`, a folder or a hub id, e.g. `"facebook/opt-1.3b"`);
    /// default: the run's own pretrained model. It must share the run's tokenizer; with
    /// `kl = "vocab"` also its vocabulary size. Loaded for `prepare` only, then released.
    pub teacher: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            k: 8,
            resample: true,
            temperature: 1.0,
            kl: KlOver::Vocab,
            target: Target::Soft,
            max_new_tokens: 8,
            top_m: 64,
            ce_weight: 0.0,
            inputs: Source::Unlabelled,
            cache_context: true,
            teacher: None,
        }
    }
}

impl Config {
    /// Refuses settings that have no meaning, naming the field.
    fn validate(&self, num_labels: usize) -> Result<()> {
        if num_labels == 0 || self.k == 0 || self.k % num_labels != 0 {
            return Err(Error::msg(format!("`k` = {} must be a positive multiple of the {num_labels} labels", self.k)));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::msg(format!("`temperature` must be positive, got {}", self.temperature)));
        }
        if self.top_m == 0 {
            return Err(Error::msg("`top_m` must be at least 1"));
        }
        if !(self.ce_weight.is_finite() && self.ce_weight >= 0.0) {
            return Err(Error::msg(format!("`ce_weight` must be ≥ 0, got {}", self.ce_weight)));
        }
        if self.target == Target::Generated && (self.max_new_tokens == 0 || self.ce_weight > 0.0) {
            return Err(Error::msg("`target = \"generated\"` needs `max_new_tokens` ≥ 1 and no `ce_weight`"));
        }
        Ok(())
    }
}

/// The student being distilled, and the cached teacher.
pub struct ContextDistill {
    config: Config,
    /// The verbalizer's token ids.
    verbalizer: Vec<i64>,
    /// Teacher targets, one row per distinct input prompt.
    targets: Option<Targets>,
    /// Row of each input prompt in `targets`.
    rows: HashMap<String, i64>,
    /// The teacher's continuation of each row (`target = "generated"`).
    continuations: Vec<Vec<i64>>,
    /// The student's padding id.
    pad: i64,
}

impl Method for ContextDistill {
    const NAME: &'static str = "context_distill";
    const ROLE: Role = Role::Objective;
    const DESCRIPTION: &'static str = "Context distillation: the student, without context, learns the next-token \
        distribution of the frozen model reading k balanced demonstrations (https://arxiv.org/abs/2209.15189).";
    type Config = Config;

    fn new(config: Config, host: &mut Host) -> Result<Self> {
        let verbalizer = host.task()?.label_token_ids;
        config.validate(verbalizer.len())?;
        let pad = host.model()?.pad_token_id;
        Ok(Self { config, verbalizer, targets: None, rows: HashMap::new(), continuations: Vec::new(), pad })
    }

    fn training_inputs(&self) -> Inputs {
        match self.config.inputs {
            Source::Unlabelled => Inputs::Unlabelled,
            Source::Labelled => Inputs::Labelled,
        }
    }

    fn prepare(&mut self, host: &mut Host, data: &Tensors) -> Result<()> {
        let start = Instant::now();
        let inputs = self.inputs(data)?;
        let pool = data.demonstrations(self.verbalizer.len())?;
        let student = host.model()?;
        let (model, id) = match &self.config.teacher {
            Some(spec) => {
                let loaded = host.load_model(spec)?;
                (loaded.info, Some(loaded.id))
            }
            None => (student.clone(), None),
        };
        if self.config.kl == KlOver::Vocab && model.vocab_size != student.vocab_size {
            return Err(Error::msg(format!(
                "`teacher` has {} vocabulary rows but the student {}: use `kl = \"verbalizer\"`",
                model.vocab_size, student.vocab_size
            )));
        }
        let device = data.input_ids()?.device();
        let teacher = Teacher {
            model: id,
            pool: &pool,
            k: self.config.k,
            seed: host.seed()?,
            tau: self.config.temperature,
            top_m: (self.config.kl == KlOver::Vocab).then_some(self.config.top_m),
            verbalizer: Tensor::from_slice(&self.verbalizer).to_device(device),
            window: usize::try_from(model.max_position_embeddings).unwrap_or(0),
            pad: model.pad_token_id,
            device,
            generate: if self.config.target == Target::Generated { self.config.max_new_tokens } else { 0 },
            eos: host.encode("", true)?[0], // OPT's tokenizer starts every text with `</s>`
        };
        let targets = if self.config.resample {
            teacher.resampled(host, &inputs)
        } else {
            teacher.shared(host, &inputs, self.config.cache_context)
        };
        if let Some(id) = id {
            host.free_model(id)?;
        }
        let (targets, continuations) = targets?;
        self.rows = inputs.into_iter().map(|input| input.prompt).zip(0..).collect();
        self.targets = Some(targets);
        self.continuations = continuations;
        host.log("teacher_seconds", start.elapsed().as_secs_f64())
    }

    fn loss(&mut self, host: &mut Host, batch: &Batch) -> Result<Loss> {
        let targets = self.targets.as_ref().ok_or("context_distill trains only after `prepare`")?;
        let index = (batch.strings("prompts")?.iter())
            .map(|p| self.rows.get(p).copied().ok_or_else(|| Error::msg(format!("no teacher target for input `{p}`"))))
            .collect::<Result<Vec<i64>>>()?;
        let device = batch.input_ids()?.device();
        let targets = targets.rows(&Tensor::from_slice(&index).to_device(device));
        let verbalizer = Tensor::from_slice(&self.verbalizer).to_device(device);
        // With a continuation target the student reads the continuation after its query, and the
        // loss is its cross-entropy; the KL at the answer is only logged.
        let (continuation_loss, student, ce_weight) = if self.config.target == Target::Generated {
            let continuations: Vec<&[i64]> = index.iter().map(|&i| &self.continuations[i as usize][..]).collect();
            let (loss, answer) = sequence::continuation_loss(host, batch, &continuations, self.pad)?;
            (Some(loss), answer, 0.0)
        } else {
            (None, last_token_logits(host, batch, true)?, self.config.ce_weight)
            // (B, V)
        };
        let parts = distill_loss(
            &student,
            &targets,
            &verbalizer,
            (self.config.temperature, ce_weight, self.config.target),
            batch.label_token_ids()?,
            batch.labels()?,
        );
        host.log("kl", parts.kl)?;
        host.log("teacher_agreement", agreement(&student.detach(), &targets, &verbalizer))?;
        Ok(Loss::new(continuation_loss.unwrap_or(parts.loss)))
    }
}

impl ContextDistill {
    /// The distinct inputs x to distil on, in order of first appearance.
    fn inputs(&self, data: &Tensors) -> Result<Vec<Input>> {
        let (key, icl_key) = match self.config.inputs {
            Source::Unlabelled => ("unlabelled", "unlabelled_icl"),
            Source::Labelled => ("prompts", "icl_prompts"),
        };
        let strings = |key: &str| {
            data.strings(key).map_err(|e| {
                Error::msg(format!("{e}: the runtime supplied no `{key}` inputs (set `inputs` or `train.unlabelled`)"))
            })
        };
        let (prompts, icl) = (strings(key)?, strings(icl_key)?);
        if prompts.len() != icl.len() {
            return Err(Error::msg(format!("{} `{key}` but {} `{icl_key}`", prompts.len(), icl.len())));
        }
        let mut seen = std::collections::HashSet::new();
        let inputs: Vec<Input> = (prompts.into_iter().zip(icl))
            .filter(|(prompt, _)| seen.insert(prompt.clone()))
            .map(|(prompt, icl)| Input { prompt, icl })
            .collect();
        if inputs.is_empty() {
            return Err(Error::msg(format!("no `{key}` inputs to distil on")));
        }
        Ok(inputs)
    }
}

ftlab_sdk::export_library!(ContextDistill);
