//! The properties every method must have, checked on the embedded model and task
//! (`ftlab plugins check NAME`, and the same from a Rust test): the loss falls; base parameters
//! the method does not train stay bit-identical; a mergeable adapter's merged logits equal its
//! hooked ones; an exported adapter imported into a fresh run gives the same logits. An
//! adapter is checked under the objective the caller names (`ftlab` passes the run default), an
//! objective with full fine-tuning. (That a
//! panic inside any call becomes an error naming the method is the host's guarantee, tested
//! once for every plugin with the `probe` fixture library.)

use serde::Serialize;
use tch::{Device, Tensor};

use super::hooks::AdapterHooks;
use super::{MethodRun, MethodSpec};
use crate::data::batch::{self, BatchOrder};
use crate::data::synthetic::SyntheticConfig;
use crate::data::task::DataOptions;
use crate::error::{Error, Result};
use crate::model::{ForwardInput, LoadOptions, LogitsAt, Model};
use crate::run::config::{RunConfig, Schedule, TrainConfig};
use crate::run::data::RunData;
use crate::run::optim::AdamW;
use crate::run::train;
use ftlab_registry::Registry;
use ftlab_sdk::abi::ErrorKind;
use ftlab_sdk::Role;

/// Agreement bound for logits that must be equal up to summation order.
pub const LOGITS_TOLERANCE: f64 = 1e-5;

/// How a method is exercised.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOptions {
    /// The task trained on (`synthetic-nli`; `text` for objectives that model documents).
    pub task: String,
    /// Examples of the task trained on.
    pub shots: usize,
    /// Epochs (batches of 8).
    pub epochs: usize,
    /// Constant learning rate.
    pub lr: f64,
    /// The training loss must end below this fraction of where it started.
    pub loss_fraction: f64,
    /// The checked method's settings (`{}`: its defaults).
    pub config: serde_json::Value,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            task: "synthetic-nli".into(),
            shots: 32,
            epochs: 10,
            lr: 1e-2,
            loss_fraction: 0.99,
            config: serde_json::json!({}),
        }
    }
}

/// One property: passed, failed, or not applicable, with what was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is checked.
    pub property: &'static str,
    /// `None` when it does not apply to this method.
    pub passed: Option<bool>,
    /// The measurement, or why it does not apply.
    pub detail: String,
}

impl Check {
    fn measured(property: &'static str, passed: bool, detail: String) -> Self {
        Self { property, passed: Some(passed), detail }
    }

    fn skipped(property: &'static str, why: &str) -> Self {
        Self { property, passed: None, detail: why.into() }
    }
}

/// Checks method `name` from `registry`, an adapter under `adapter_objective`: one row per
/// property.
pub fn check_method(
    registry: &Registry,
    name: &str,
    adapter_objective: &MethodSpec,
    options: &CheckOptions,
) -> Result<Vec<Check>> {
    let role = registry.methods().find(|m| m.name == name).map(|m| m.role);
    let role = role.ok_or_else(|| Error::Input(format!("no installed method `{name}` (see `ftlab plugins list`)")))?;
    let method = MethodSpec { name: name.into(), config: options.config.clone() };
    let (objective, adapters) = match role {
        Role::Objective => (method, vec![]),
        Role::Adapter => (adapter_objective.clone(), vec![method]),
    };
    let train = TrainConfig {
        batch_size: 8,
        lr: options.lr,
        epochs: options.epochs,
        weight_decay: 0.0,
        grad_clip: 0.0,
        schedule: Schedule::Constant,
        ..Default::default()
    };
    let config = RunConfig {
        task: options.task.clone(),
        shots: options.shots,
        method: objective.clone(),
        train,
        ..Default::default()
    };
    let data_options = DataOptions { synthetic: SyntheticConfig::default(), ..DataOptions::from_env() };
    let model = Model::embedded_random(LoadOptions::default())?;
    let data = RunData::load_from(&config, &model.tokenizer, &data_options)?;
    let before: Vec<(String, Tensor)> = model.vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
    let mut run = MethodRun::new(&model, registry, &objective, &adapters, data.task_info(), config.seed)?;
    run.prepare(data.prepare_data(&model.tokenizer, Device::Cpu))?;
    let mut checks = vec![loss_falls(&mut run, &config, &data, options)?];
    checks.push(untrained_unchanged(&run, &before)?);
    if role == Role::Adapter {
        let batch = probe_batch(&data, &model);
        let hooked = logits(&run, &batch, true)?;
        checks.push(export_round_trip(registry, &run, &objective, &adapters, &data, &batch, &hooked)?);
        checks.push(merges_exactly(&run, &batch, &hooked)?);
    }
    Ok(checks)
}

/// Trains `options.epochs` epochs; passes when the last epoch's loss is below the fraction.
fn loss_falls(run: &mut MethodRun, config: &RunConfig, data: &RunData, options: &CheckOptions) -> Result<Check> {
    const PROPERTY: &str = "the training loss falls";
    let params = run.trainable();
    if params.is_empty() {
        return Ok(Check::skipped(PROPERTY, "nothing trains"));
    }
    let mut optimizer = AdamW::new(params, &config.train)?;
    let (examples, _) = data.training_set(run.objective.inputs);
    let total = train::total_steps(config, examples.len());
    let mut losses = Vec::new();
    for epoch in 0..options.epochs {
        losses.push(
            train::train_epoch(config, run, data, &run.model.tokenizer, &mut optimizer, epoch, total)?.train_loss,
        );
    }
    run.set_train(false)?;
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    let passed = last.is_finite() && last < options.loss_fraction * first;
    Ok(Check::measured(
        PROPERTY,
        passed,
        format!("{first:.4} → {last:.4} over {} epochs (bound: < {:.2}×)", losses.len(), options.loss_fraction),
    ))
}

/// Every base parameter the run does not train is bit-identical to before.
fn untrained_unchanged(run: &MethodRun, before: &[(String, Tensor)]) -> Result<Check> {
    let now = run.model.vs.variables();
    let mut changed = Vec::new();
    for (name, old) in before {
        if !run.base_trains(name)? && !now[name].equal(old) {
            changed.push(name.clone());
        }
    }
    let trained = before.iter().filter(|(n, _)| run.base_trains(n).unwrap_or(false)).count();
    let detail = match changed.first() {
        Some(first) => format!("{} frozen parameters changed, e.g. {first}", changed.len()),
        None => format!("{} frozen base tensors unchanged ({trained} trained)", before.len() - trained),
    };
    Ok(Check::measured("untrained base parameters stay bit-identical", changed.is_empty(), detail))
}

/// Exports the adapter, imports it into a fresh run on a fresh model, and compares logits.
fn export_round_trip(
    registry: &Registry,
    run: &MethodRun,
    objective: &MethodSpec,
    adapters: &[MethodSpec],
    data: &RunData,
    batch: &batch::Batch,
    hooked: &Tensor,
) -> Result<Check> {
    const PROPERTY: &str = "export → import gives the same logits";
    let Some(files) = run.adapters[0].export()? else { return Ok(Check::skipped(PROPERTY, "exports nothing")) };
    let fresh_model = Model::embedded_random(LoadOptions::default())?;
    // The run's trained base tensors (full fine-tuning beside the adapter) are not the adapter's.
    for (name, var) in fresh_model.vs.variables() {
        if run.base_trains(&name)? {
            tch::no_grad(|| var.shallow_clone().f_copy_(&run.model.vs.variables()[&name]))?;
        }
    }
    let mut fresh = MethodRun::new(&fresh_model, registry, objective, adapters, data.task_info(), 0)?;
    fresh.adapters[0].import(files)?;
    let diff = max_diff(hooked, &logits(&fresh, batch, true)?);
    Ok(Check::measured(
        PROPERTY,
        diff < LOGITS_TOLERANCE,
        format!("max |Δlogit| {diff:.1e} (bound {LOGITS_TOLERANCE:.0e})"),
    ))
}

/// Merges the adapter into the run's model and compares the plain model with the hooked one.
fn merges_exactly(run: &MethodRun, batch: &batch::Batch, hooked: &Tensor) -> Result<Check> {
    const PROPERTY: &str = "merged logits equal hooked logits";
    match run.adapters[0].merge_into(run.model) {
        Err(Error::Method(e)) if e.kind == ErrorKind::Unsupported => Ok(Check::skipped(PROPERTY, "not mergeable")),
        Err(e) => Err(e),
        Ok(()) => {
            let diff = max_diff(hooked, &logits(run, batch, false)?);
            Ok(Check::measured(
                PROPERTY,
                diff < LOGITS_TOLERANCE,
                format!("max |Δlogit| {diff:.1e} (bound {LOGITS_TOLERANCE:.0e})"),
            ))
        }
    }
}

/// The first 8 training rows as one batch.
fn probe_batch(data: &RunData, model: &Model) -> batch::Batch {
    let order = BatchOrder::ByLength;
    batch::batches(&model.tokenizer, &data.encoded, &data.prompt.word_ids, 8, order, Device::Cpu).swap_remove(0)
}

/// All-position logits of `batch`, through the run's adapters or the plain model.
fn logits(run: &MethodRun, batch: &batch::Batch, adapters: bool) -> Result<Tensor> {
    let hooks = AdapterHooks { adapters: &run.adapters };
    let input = ForwardInput {
        input_ids: Some(&batch.input_ids),
        attention_mask: Some(&batch.attention_mask),
        logits: LogitsAt::LastToken,
        hooks: adapters.then_some(&hooks as _),
        ..Default::default()
    };
    let out = tch::no_grad(|| run.model.net.forward(input))?;
    out.logits.ok_or_else(|| Error::Input("the forward pass returned no logits".into()))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}
