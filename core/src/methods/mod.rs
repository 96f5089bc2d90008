//! Methods in a run: the objective and adapters loaded through the registry, the host they call
//! back into, and the model's hook sites wired to the adapters.
//!
//! This is the only place the core meets the plugin ABI. Built-in methods come through here
//! exactly like third-party ones (shared/DESIGN.md §2).

pub mod check;
pub mod export;
pub mod hooks;
pub mod host;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::RResult;
use ftlab_registry::Registry;
use ftlab_sdk::abi::{HostObject_TO, HostRef, MethodBox, PluginError};
use ftlab_sdk::{Inputs, Role, TaskInfo, Tensors};
use serde::{Deserialize, Serialize};
use tch::Tensor;

pub use host::{HostState, RunHost};

use crate::error::{Error, Result};
use crate::model::hooks::Site;
use crate::model::Model;

/// A method selected for a run: its name and hyperparameters, as a run config's `[method]` or
/// `[[adapters]]` table holds them and as the plugin receives them (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSpec {
    /// Registered name.
    pub name: String,
    /// Hyperparameters (a JSON object; `{}` for the defaults); the method rejects unknown keys.
    #[serde(default = "empty_table")]
    pub config: serde_json::Value,
}

fn empty_table() -> serde_json::Value {
    serde_json::json!({})
}

/// No method: a configuration must name one before a run (see [`crate::run::RunConfig::validate`]).
impl Default for MethodSpec {
    fn default() -> Self {
        Self::named("")
    }
}

impl MethodSpec {
    /// A method with its default hyperparameters.
    pub fn named(name: &str) -> Self {
        Self { name: name.into(), config: empty_table() }
    }
}

/// A created method instance, with what it declared once at creation.
pub struct Loaded {
    /// Registered name.
    pub name: String,
    /// The instance behind the ABI.
    pub object: MethodBox,
    /// What the objective trains on (meaningless for adapters).
    pub inputs: Inputs,
    /// Bit `code` set for each declared site.
    sites: u32,
}

// Every site's bit fits the mask: a site added past 32 fails the build, not a run.
const _: () = assert!(Site::ALL.len() <= u32::BITS as usize);

impl Loaded {
    /// Asks the method for its sites and training inputs; an error or an unknown site code
    /// refuses the method (running it without its hooks would hide the author's bug).
    fn new(name: &str, object: MethodBox) -> Result<Self> {
        let mut sites = 0u32;
        for code in object.sites().into_result()? {
            let site = Site::from_code(code).ok_or(Error::UnknownSite { method: name.into(), code })?;
            sites |= 1 << site.code();
        }
        let inputs = object.training_inputs().into_result()?;
        Ok(Self { name: name.into(), object, inputs, sites })
    }

    /// Whether this method declared `site`.
    pub fn acts_at(&self, site: Site) -> bool {
        self.sites & (1 << site.code()) != 0
    }
}

/// One objective and its adapters, attached to a model.
pub struct MethodRun<'m> {
    /// The base model.
    pub model: &'m Model,
    /// Decides the loss and the prediction.
    pub objective: Loaded,
    /// Choose what trains; act at hook sites, in this order.
    pub adapters: Vec<Loaded>,
    /// What methods reach through the host.
    pub state: HostState,
}

impl<'m> MethodRun<'m> {
    /// Creates the methods (adapters first, then the objective, so it may run the adapted
    /// model), then freezes every base parameter no method wants trained. Their new parameters
    /// are initialised from `seed`: libtorch seeds its default generator nondeterministically,
    /// so without this a head or adapter drawn on a loaded model differed from run to run.
    pub fn new(
        model: &'m Model,
        registry: &Registry,
        objective: &MethodSpec,
        adapters: &[MethodSpec],
        task: TaskInfo,
        seed: u64,
    ) -> Result<Self> {
        tch::manual_seed(seed as i64);
        let mut state = HostState::new(task, seed);
        let loaded = load_adapters(model, registry, adapters, &mut state)?;
        let object = create(registry, model, &loaded, &mut state, objective, Role::Objective)?;
        let run = Self { model, objective: Loaded::new(&objective.name, object)?, adapters: loaded, state };
        run.apply_trainability()?;
        Ok(run)
    }

    /// Whether base parameter `name` trains: with adapters, iff an adapter says so; without,
    /// unless the objective says no (full fine-tuning by default).
    pub fn base_trains(&self, name: &str) -> Result<bool> {
        let ask = |m: &Loaded| m.object.trains(name.into()).into_result().map(|o| o.into_option());
        if self.adapters.is_empty() {
            return Ok(ask(&self.objective)?.unwrap_or(true));
        }
        for adapter in &self.adapters {
            if ask(adapter)? == Some(true) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Sets `requires_grad` on every base parameter as [`MethodRun::base_trains`] decides.
    pub fn apply_trainability(&self) -> Result<()> {
        for (name, var) in self.model.vs.variables() {
            let _ = var.set_requires_grad(self.base_trains(&name)?);
        }
        Ok(())
    }

    /// Every trainable tensor with its name: base parameters that train, then method parameters
    /// (`<method>.<name>`). Frozen parameters get no optimizer state.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut base: Vec<(String, Tensor)> =
            self.model.vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
        base.sort_by(|a, b| a.0.cmp(&b.0));
        for method in self.state.stores.keys() {
            let mut own = self.method_tensors(method);
            own.sort_by(|a, b| a.0.cmp(&b.0));
            base.extend(own);
        }
        base
    }

    /// Every tensor that can train, by its name in [`MethodRun::trainable`]: the base
    /// parameters and the methods' own.
    pub fn tensors(&self) -> std::collections::HashMap<String, Tensor> {
        let mut tensors = self.model.vs.variables();
        for method in self.state.stores.keys() {
            tensors.extend(self.method_tensors(method));
        }
        tensors
    }

    /// `method`'s own parameters, named `<method>.<name>`.
    fn method_tensors(&self, method: &str) -> Vec<(String, Tensor)> {
        let store = self.state.stores.get(method).map(|s| s.variables()).unwrap_or_default();
        store.into_iter().map(|(n, v)| (format!("{method}.{n}"), v)).collect()
    }

    /// Switches dropout on (training) or off (evaluation) for forwards that do not choose, and
    /// tells every method.
    pub fn set_train(&mut self, train: bool) -> Result<()> {
        self.state.train = train;
        for method in self.adapters.iter_mut().chain(std::iter::once(&mut self.objective)) {
            method.object.set_train(train).into_result()?;
        }
        Ok(())
    }

    /// Tells every method that training epoch `epoch` begins (see `Method::epoch_begins`); when
    /// one changed what it trains, re-applies trainability and returns `true`.
    pub fn epoch_begins(&mut self, epoch: usize) -> Result<bool> {
        let changed = self.call_each(|_, object, host| object.epoch_begins(host, epoch as u64))?;
        let changed = changed.into_iter().any(|c| c);
        if changed {
            self.apply_trainability()?;
        }
        Ok(changed)
    }

    /// Tells every method that optimizer step `step` (1-based) was taken; returns the moment
    /// moves they asked for (see `Method::step_done`), by trainable name.
    pub fn step_done(&mut self, step: usize) -> Result<Vec<(String, Tensor)>> {
        let replies = self.call_each(|name, object, host| {
            object.step_done(host, step as u64).map(|moves| (name.to_string(), moves))
        })?;
        let mut moves = Vec::new();
        for (method, reply) in replies {
            let reply = Tensors::from_message(reply)
                .map_err(|e| Error::MethodReply { method: method.clone(), message: e.to_string() })?;
            moves.extend(reply.tensors.into_iter().map(|(parameter, from)| (format!("{method}.{parameter}"), from)));
        }
        Ok(moves)
    }

    /// Every method's checkpointed state (see `Method::state`), named `<method>/<name>`.
    pub fn method_states(&self) -> Result<Vec<(String, Tensor)>> {
        let mut states = Vec::new();
        for method in self.adapters.iter().chain(std::iter::once(&self.objective)) {
            let state = Tensors::from_message(method.object.state().into_result()?)
                .map_err(|e| Error::MethodReply { method: method.name.clone(), message: e.to_string() })?;
            states.extend(state.tensors.into_iter().map(|(n, t)| (format!("{}/{n}", method.name), t)));
        }
        Ok(states)
    }

    /// Hands each method its part of `states` (as [`MethodRun::method_states`] named them).
    pub fn load_method_states(&mut self, states: &[(String, Tensor)]) -> Result<()> {
        for method in self.adapters.iter_mut().chain(std::iter::once(&mut self.objective)) {
            let mut own = Tensors::new();
            let prefix = format!("{}/", method.name);
            for (name, tensor) in states {
                if let Some(name) = name.strip_prefix(&prefix) {
                    own.tensors.insert(name.to_string(), tensor.shallow_clone());
                }
            }
            method.object.load_state(own.into_message()).into_result()?;
        }
        Ok(())
    }

    /// Calls every method with its host: the adapters in order, each seeing the adapters before
    /// it (as when it was created), then the objective.
    fn call_each<T>(
        &mut self,
        mut call: impl FnMut(&str, &mut MethodBox, HostRef<'_>) -> RResult<T, PluginError>,
    ) -> Result<Vec<T>> {
        let mut replies = Vec::with_capacity(self.adapters.len() + 1);
        for i in 0..self.adapters.len() {
            let (before, rest) = self.adapters.split_at_mut(i);
            let Loaded { name, object, .. } = &mut rest[0];
            let mut host = RunHost { model: self.model, adapters: before, state: &mut self.state, method: name };
            replies.push(call(name, object, HostObject_TO::from_ptr(&mut host, TD_Opaque)).into_result()?);
        }
        let name = self.objective.name.clone();
        replies.push(self.call_objective(|object, host| call(&name, object, host))?);
        Ok(replies)
    }

    /// The objective's training loss of `batch` and the metrics it and the host logged.
    pub fn loss(&mut self, batch: Tensors) -> Result<(Tensor, Vec<(String, f64)>)> {
        let reply = self.call_objective(|object, host| object.loss(host, batch.into_message()))?;
        let mut reply = Tensors::from_message(reply).map_err(|e| self.reply_error(e))?;
        let loss = reply.tensors.remove("loss").ok_or_else(|| self.missing("loss"))?;
        let mut metrics: Vec<(String, f64)> = std::mem::take(&mut self.state.metrics);
        if let serde_json::Value::Object(map) = reply.json {
            metrics.extend(map.into_iter().filter_map(|(k, v)| v.as_f64().map(|v| (k, v))));
        }
        Ok((loss, metrics))
    }

    /// The objective's class scores `[B, num_labels]` for `batch`.
    pub fn predict(&mut self, batch: Tensors) -> Result<Tensor> {
        let reply = self.call_objective(|object, host| object.predict(host, batch.into_message()))?;
        let mut reply = Tensors::from_message(reply).map_err(|e| self.reply_error(e))?;
        reply.tensors.remove("scores").ok_or_else(|| self.missing("scores"))
    }

    /// Lets the objective precompute from the training data before training.
    pub fn prepare(&mut self, data: Tensors) -> Result<()> {
        self.call_objective(|object, host| object.prepare(host, data.into_message()))
    }

    /// Calls the objective with the host lent to it (the objective and the host's parts are
    /// disjoint borrows of the run).
    fn call_objective<T>(
        &mut self,
        call: impl FnOnce(&mut MethodBox, HostRef<'_>) -> RResult<T, PluginError>,
    ) -> Result<T> {
        let Loaded { name, object, .. } = &mut self.objective;
        let mut host = RunHost { model: self.model, adapters: &self.adapters, state: &mut self.state, method: name };
        Ok(call(object, HostObject_TO::from_ptr(&mut host, TD_Opaque)).into_result()?)
    }

    fn missing(&self, what: &str) -> Error {
        self.reply_error(format!("returned no `{what}`"))
    }

    fn reply_error(&self, message: impl std::fmt::Display) -> Error {
        Error::MethodReply { method: self.objective.name.clone(), message: message.to_string() }
    }
}

/// Creates adapters in order; each may see the ones before it in its host's forward passes.
pub fn load_adapters(
    model: &Model,
    registry: &Registry,
    specs: &[MethodSpec],
    state: &mut HostState,
) -> Result<Vec<Loaded>> {
    let mut loaded = Vec::with_capacity(specs.len());
    for spec in specs {
        let object = create(registry, model, &loaded, state, spec, Role::Adapter)?;
        loaded.push(Loaded::new(&spec.name, object)?);
    }
    Ok(loaded)
}

fn create(
    registry: &Registry,
    model: &Model,
    adapters: &[Loaded],
    state: &mut HostState,
    spec: &MethodSpec,
    role: Role,
) -> Result<MethodBox> {
    let mut host = RunHost { model, adapters, state, method: &spec.name };
    let config = spec.config.to_string();
    Ok(registry.create(&spec.name, role, &config, HostObject_TO::from_ptr(&mut host, TD_Opaque))?)
}
