//! The host side of the plugin ABI: what a method's calls back into the run do.

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::std_types::{RErr, ROk, RResult, RStr, RString, RVec};
use ftlab_sdk::abi::{ErrorKind, HostObject, Message, OwnedTensor, PluginError};
use ftlab_sdk::{ForwardRequest, HostRequest, Init, LoadedModel, Logits, ModelInfo, TaskInfo, Tensors};
use tch::nn::{self, VarStore};
use tch::Tensor;

use super::hooks::AdapterHooks;
use super::Loaded;
use crate::device::Dtype;
use crate::model::{Checkpointing, ForwardInput, KvCache, LoadOptions, LogitsAt, Model};

/// Per-run state a method may touch through the host.
pub struct HostState {
    /// One variable store per method: its parameters (`<method>.<name>`).
    pub stores: BTreeMap<String, VarStore>,
    /// Keys/values kept for methods, by id, with the model that made them (`None`: the run's).
    pub caches: HashMap<u64, (Option<u64>, KvCache)>,
    next_cache: u64,
    /// Other models methods loaded (teachers), by id.
    pub models: HashMap<u64, Model>,
    next_model: u64,
    /// Metrics methods logged since the last drain.
    pub metrics: Vec<(String, f64)>,
    /// Whether the run is training (dropout on by default).
    pub train: bool,
    /// The run's seed for methods' own sampling.
    pub seed: u64,
    /// Activation checkpointing in forward passes with gradients through the run's model
    /// (`train.gradient_checkpointing`).
    pub checkpoint: bool,
    /// The task's verbalizer.
    pub task: TaskInfo,
}

impl HostState {
    /// Empty state for a run on `task` with `seed`.
    pub fn new(task: TaskInfo, seed: u64) -> Self {
        Self {
            stores: BTreeMap::new(),
            caches: HashMap::new(),
            next_cache: 0,
            models: HashMap::new(),
            next_model: 0,
            metrics: Vec::new(),
            train: false,
            seed,
            checkpoint: false,
            task,
        }
    }
}

/// The host lent to one method call: the model, the adapters that hook it, and the run state.
pub struct RunHost<'a> {
    /// The base model.
    pub model: &'a Model,
    /// Adapters active in forward passes that ask for them.
    pub adapters: &'a [Loaded],
    /// Run state.
    pub state: &'a mut HostState,
    /// The method making the calls (its parameters live under its name).
    pub method: &'a str,
}

/// Host code must not unwind into the plugin: abi_stable's shims abort on panic.
fn guard<T>(call: &str, f: impl FnOnce() -> Result<T, String>) -> RResult<T, PluginError> {
    let error = |message: String| PluginError {
        kind: ErrorKind::Host,
        method: "<host>".into(),
        call: call.into(),
        message: message.into(),
    };
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => ROk(value),
        Ok(Err(message)) => RErr(error(message)),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
            RErr(error(format!("host panicked: {}", message.unwrap_or_default())))
        }
    }
}

impl RunHost<'_> {
    fn run_forward(&mut self, request: Tensors) -> Result<Tensors, String> {
        let options: ForwardRequest =
            serde_json::from_value(request.json.clone()).map_err(|e| format!("forward request: {e}"))?;
        let ids = request.get("input_ids").map_err(|e| e.to_string())?;
        let mask = request.get("attention_mask").map_err(|e| e.to_string())?;
        let batch = ids.size().first().copied().unwrap_or(0);
        let model = match options.model {
            Some(id) => self.state.models.get(&id).ok_or_else(|| format!("no loaded model with id {id}"))?,
            None => self.model,
        };
        let past = match options.past {
            Some(id) => {
                let (owner, cache) = self.state.caches.get(&id).ok_or_else(|| format!("no kept cache with id {id}"))?;
                if *owner != options.model {
                    return Err(format!("kept cache {id} was made by another model than this forward's"));
                }
                let cache = match options.past_len {
                    Some(len) if len as i64 > cache.len() => {
                        return Err(format!("past_len {len} is over kept cache {id}'s {} positions", cache.len()))
                    }
                    Some(len) => cache.prefix(len as i64),
                    None => cache.shallow_clone(),
                };
                Some(if cache.batch_size() == 1 && batch > 1 { cache.expand(batch) } else { cache })
            }
            None => None,
        };
        let logits = match options.logits {
            Logits::None => LogitsAt::None,
            Logits::All => LogitsAt::All,
            Logits::Last => LogitsAt::LastToken,
            Logits::Positions => {
                LogitsAt::Positions(request.get("positions").map_err(|e| e.to_string())?.shallow_clone())
            }
        };
        let hooks = AdapterHooks { adapters: self.adapters };
        let input = ForwardInput {
            input_ids: Some(ids),
            attention_mask: Some(mask),
            past: past.as_ref(),
            prefix: request.tensors.get("prefix"),
            use_cache: options.keep_cache,
            logits,
            train: options.train.unwrap_or(self.state.train),
            // Adapters hook only the run's model (their shapes are its shapes).
            hooks: (options.adapters && options.model.is_none() && !self.adapters.is_empty()).then_some(&hooks as _),
            // SAFETY: a run back-propagates every loss within its step, while the model and the
            // run's adapters (what the hooks borrow) live.
            checkpoint: if self.state.checkpoint && options.grad && options.model.is_none() {
                unsafe { Checkpointing::on() }
            } else {
                Checkpointing::default()
            },
        };
        let run = || model.net.forward(input);
        let out = if options.grad { run() } else { tch::no_grad(run) }.map_err(|e| e.to_string())?;
        let mut reply = Tensors::new().with("hidden", out.hidden).with("last_token", out.last_token);
        if let Some(logits) = out.logits {
            reply.tensors.insert("logits".into(), logits);
        }
        if let Some(cache) = out.cache {
            let id = self.state.next_cache;
            self.state.next_cache += 1;
            self.state.caches.insert(id, (options.model, cache));
            reply.json = serde_json::json!({ "cache": id });
        }
        Ok(reply)
    }

    fn new_parameter(&mut self, name: &str, shape: &[i64], init: &str) -> Result<Tensor, String> {
        let init: Init = serde_json::from_str(init).map_err(|e| format!("parameter `{name}`: init: {e}"))?;
        let init = match init {
            Init::Base => return base_parameter(self.model, name, shape),
            Init::Zeros => nn::Init::Const(0.0),
            Init::Ones => nn::Init::Const(1.0),
            Init::Normal { std } => nn::Init::Randn { mean: 0.0, stdev: std },
            Init::KaimingUniform { fan_in } if fan_in > 0 => {
                let bound = 1.0 / (fan_in as f64).sqrt();
                nn::Init::Uniform { lo: -bound, up: bound }
            }
            Init::KaimingUniform { fan_in } => {
                return Err(format!("parameter `{name}`: fan_in must be positive, got {fan_in}"))
            }
        };
        let segments: Vec<&str> = name.split('.').collect();
        if name.is_empty() || segments.iter().any(|s| s.is_empty()) {
            return Err(format!("parameter name `{name}` must be dot-separated non-empty segments"));
        }
        let device = self.model.device();
        let kind = self.model.net.embed_tokens.ws.kind();
        let store = self.state.stores.entry(self.method.to_string()).or_insert_with(|| {
            let mut vs = VarStore::new(device);
            vs.set_kind(kind);
            vs
        });
        if store.variables().contains_key(name) {
            return Err(format!("parameter `{name}` already exists"));
        }
        let (last, parents) = segments.split_last().expect("non-empty");
        let path = parents.iter().fold(store.root(), |p, s| p / *s);
        path.f_var(last, shape, init).map_err(|e| format!("parameter `{name}`: {e}"))
    }

    /// Loads `spec` like the run's model (device, dtype), frozen; refuses a tokenizer that
    /// encodes differently, since methods encode with the run's tokenizer.
    fn load_model(&mut self, spec: &str) -> Result<LoadedModel, String> {
        let kind = self.model.net.embed_tokens.ws.kind();
        let dtype = Dtype::of_kind(kind).ok_or_else(|| format!("the run's model has no float dtype ({kind:?})"))?;
        let options = LoadOptions { device: self.model.device(), dtype, weights_format: None };
        let mut model = Model::load(spec, options).map_err(|e| format!("loading model `{spec}`: {e}"))?;
        model.vs.freeze();
        let probe = format!("{} {}", self.state.task.label_words.join(" "), TOKENIZER_PROBE);
        let (ours, theirs) = (self.model.tokenizer.encode(&probe), model.tokenizer.encode(&probe));
        if ours.map_err(|e| e.to_string())? != theirs.map_err(|e| e.to_string())? {
            return Err(format!(
                "model `{spec}` tokenizes differently from the run's model `{}`: a method's token ids would \
                 mean different words to it",
                self.model.origin.id
            ));
        }
        let id = self.state.next_model;
        self.state.next_model += 1;
        let loaded = LoadedModel { id, info: info(&model) };
        tracing::info!(model = spec, id, "loaded a model for {}", self.method);
        self.state.models.insert(id, model);
        Ok(loaded)
    }

    fn answer(&mut self, request: &str) -> Result<String, String> {
        let request: HostRequest = serde_json::from_str(request).map_err(|e| format!("host request: {e}"))?;
        let tokenizer = &self.model.tokenizer;
        let reply = match request {
            HostRequest::Encode { text, bos } => {
                let ids = if bos { tokenizer.encode(&text) } else { tokenizer.encode_plain(&text) }
                    .map_err(|e| e.to_string())?;
                serde_json::json!({ "ids": ids })
            }
            HostRequest::Decode { ids } => {
                serde_json::json!({ "text": tokenizer.decode(&ids).map_err(|e| e.to_string())? })
            }
            HostRequest::Task => serde_json::to_value(&self.state.task).map_err(|e| e.to_string())?,
            HostRequest::Model => serde_json::to_value(info(self.model)).map_err(|e| e.to_string())?,
            HostRequest::Log { name, value } => {
                self.state.metrics.push((format!("{}/{name}", self.method), value));
                serde_json::json!({})
            }
            HostRequest::FreeCache { id } => {
                self.state.caches.remove(&id).ok_or_else(|| format!("no kept cache with id {id}"))?;
                serde_json::json!({})
            }
            HostRequest::Seed => serde_json::json!({ "seed": self.state.seed }),
            HostRequest::LoadModel { model } => {
                serde_json::to_value(self.load_model(&model)?).map_err(|e| e.to_string())?
            }
            HostRequest::FreeModel { id } => {
                self.state.models.remove(&id).ok_or_else(|| format!("no loaded model with id {id}"))?;
                self.state.caches.retain(|_, (owner, _)| *owner != Some(id));
                serde_json::json!({})
            }
        };
        Ok(reply.to_string())
    }
}

/// Text whose encoding must agree between the run's tokenizer and a loaded model's: words,
/// spaces, punctuation, digits and newlines.
const TOKENIZER_PROBE: &str = "Question: Does the premise entail it? Answer:\n The 3 cats, 12 dogs; yes/no.";

/// A model's shape as methods see it.
fn info(model: &Model) -> ModelInfo {
    let c = &model.net.config;
    ModelInfo {
        name: model.origin.id.clone(),
        hidden_size: c.hidden_size,
        word_embed_proj_dim: c.word_embed_proj_dim,
        vocab_size: c.vocab_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        ffn_dim: c.ffn_dim,
        max_position_embeddings: c.max_position_embeddings,
        pad_token_id: c.pad_token_id,
        parameters: model.vs.variables().into_iter().map(|(name, t)| (name, t.size())).collect(),
    }
}

/// The base model's parameter `name`, shared, if `shape` is its shape.
fn base_parameter(model: &Model, name: &str, shape: &[i64]) -> Result<Tensor, String> {
    let tensor = model.vs.variables().remove(name).ok_or_else(|| format!("the model has no parameter `{name}`"))?;
    if tensor.size() != shape {
        return Err(format!("base parameter `{name}` has shape {:?}, not {shape:?}", tensor.size()));
    }
    Ok(tensor)
}

impl HostObject for RunHost<'_> {
    fn forward(&mut self, request: Message) -> RResult<Message, PluginError> {
        guard("forward", || {
            let request = Tensors::from_message(request).map_err(|e| e.to_string())?;
            Ok(self.run_forward(request)?.into_message())
        })
    }

    fn parameter(&mut self, name: RStr<'_>, shape: RVec<i64>, init: RStr<'_>) -> RResult<OwnedTensor, PluginError> {
        guard("parameter", || self.new_parameter(name.as_str(), &shape, init.as_str()).map(OwnedTensor::new))
    }

    fn call(&mut self, request: RStr<'_>) -> RResult<RString, PluginError> {
        guard("call", || self.answer(request.as_str()).map(RString::from))
    }
}
