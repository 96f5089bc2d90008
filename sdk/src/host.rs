//! What a method can ask of the host, as safe Rust: run the model, create parameters, use the
//! tokenizer, read the task's verbalizer and the model's shape, log metrics.

use abi_stable::std_types::RVec;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::abi::{HostRef, OwnedTensor};
use crate::message::Tensors;
use crate::{Error, Result};

/// Which positions get LM-head logits (the head is the costliest layer of small models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Logits {
    /// None: read the hidden states only.
    None,
    /// Every position, `[B, T, V]`.
    All,
    /// The last non-pad token of each row, `[B, V]`.
    #[default]
    Last,
    /// The positions in the request's `positions` tensor (int64 `[B, N]`), `[B, N, V]`.
    Positions,
}

/// Options of a forward pass requested by a method (the JSON of a forward [`crate::abi::Message`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    /// Which logits to compute.
    #[serde(default)]
    pub logits: Logits,
    /// Run the run's adapters (false: the frozen pretrained model, e.g. a teacher).
    #[serde(default = "yes")]
    pub adapters: bool,
    /// Record autograd history (false for teachers and evaluation).
    #[serde(default = "yes")]
    pub grad: bool,
    /// Dropout on or off; `None` follows the run's phase (on in training, off in evaluation).
    #[serde(default)]
    pub train: Option<bool>,
    /// Keys/values of a prefix returned by an earlier call (batch 1 is broadcast to the batch).
    #[serde(default)]
    pub past: Option<u64>,
    /// Read only the first `past_len` positions of `past`: a context encoded alone can end in
    /// tokens that BPE merges differently once a query follows, so a caller reuses the longest
    /// prefix the joint encoding shares with it (see [`crate::context::after_context`]).
    #[serde(default)]
    pub past_len: Option<usize>,
    /// Keep this call's keys/values and return their id.
    #[serde(default)]
    pub keep_cache: bool,
    /// Another model loaded with [`Host::load_model`] (e.g. a larger teacher); `None` runs the
    /// run's own model. Adapters hook only the run's model, and kept keys/values belong to the
    /// model that made them.
    #[serde(default)]
    pub model: Option<u64>,
}

fn yes() -> bool {
    true
}

impl Default for ForwardRequest {
    fn default() -> Self {
        Self {
            logits: Logits::Last,
            adapters: true,
            grad: true,
            train: None,
            past: None,
            past_len: None,
            keep_cache: false,
            model: None,
        }
    }
}

/// What a forward pass returns to a method.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Final hidden states `[B, T, D]`.
    pub hidden: Tensor,
    /// Logits as requested.
    pub logits: Option<Tensor>,
    /// Index of each row's last non-pad token, int64 `[B]`.
    pub last_token: Tensor,
    /// Id of the kept keys/values, if asked for.
    pub cache: Option<u64>,
}

/// How a new parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Init {
    /// All zeros (LoRA's B).
    Zeros,
    /// All ones ((IA)³'s scaling vectors).
    Ones,
    /// Normal with mean 0.
    Normal {
        /// Standard deviation.
        std: f64,
    },
    /// Uniform on `[-bound, bound]` with `bound = 1/sqrt(fan_in)`: PyTorch's
    /// `kaiming_uniform_(a=sqrt(5))`, which PEFT uses for LoRA's A and `nn.Linear` for weights.
    KaimingUniform {
        /// Input features of the layer.
        fan_in: i64,
    },
    /// Not a new tensor: the base model's own parameter of that name (an HF checkpoint key,
    /// e.g. `model.decoder.layers.0.fc1.bias`, see [`ModelInfo::parameters`]), shared, for
    /// adapters whose export carries base tensors (PEFT's `bias = "all"`, `modules_to_save`).
    /// It trains when an adapter's `trains` says so; writing into it changes the model.
    Base,
}

/// Requests other than forward and parameter creation (the JSON of [`crate::abi::HostObject::call`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HostRequest {
    /// Token ids of `text`; `bos` prepends `</s>`. Reply: `{"ids": [...]}`.
    Encode {
        /// The text.
        text: String,
        /// Prepend OPT's `</s>`.
        bos: bool,
    },
    /// Text of token ids. Reply: `{"text": "..."}`.
    Decode {
        /// The ids.
        ids: Vec<i64>,
    },
    /// The run's task. Reply: a [`TaskInfo`].
    Task,
    /// The model's shape. Reply: a [`ModelInfo`].
    Model,
    /// Records a metric for the current step. Reply: `{}`.
    Log {
        /// Metric name.
        name: String,
        /// Value.
        value: f64,
    },
    /// Drops kept keys/values. Reply: `{}`.
    FreeCache {
        /// The cache id.
        id: u64,
    },
    /// The run's seed for methods' own sampling. Reply: `{"seed": n}`.
    Seed,
    /// Loads another model (same spec as a run's `model`: `tiny-opt`, a folder or a hub id) on
    /// the run's device and dtype, frozen, for [`ForwardRequest::model`]. Its tokenizer must
    /// encode as the run's does. Reply: a [`LoadedModel`].
    LoadModel {
        /// The model spec.
        model: String,
    },
    /// Releases a model loaded with `LoadModel` and the keys/values it kept. Reply: `{}`.
    FreeModel {
        /// The id `LoadModel` returned.
        id: u64,
    },
}

/// A model loaded for a method (a teacher): its id for [`ForwardRequest::model`] and its shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadedModel {
    /// The id to pass in [`ForwardRequest::model`].
    pub id: u64,
    /// Its shape.
    pub info: ModelInfo,
}

/// The run's task as a method sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Task name.
    pub name: String,
    /// The verbalizer: one word per label, in label order (e.g. `[" Yes", " No"]`).
    pub label_words: Vec<String>,
    /// The single token id of each label word.
    pub label_token_ids: Vec<i64>,
}

/// The model's shape as a method sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model as the run names it (a hub id, a folder, or `tiny-opt`): PEFT's
    /// `base_model_name_or_path` in exports.
    #[serde(default)]
    pub name: String,
    /// Residual width.
    pub hidden_size: i64,
    /// Token-embedding width (the LM head's input).
    pub word_embed_proj_dim: i64,
    /// Embedding rows.
    pub vocab_size: i64,
    /// Decoder layers.
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    #[serde(default)]
    pub num_attention_heads: i64,
    /// MLP width.
    pub ffn_dim: i64,
    /// Longest sequence.
    pub max_position_embeddings: i64,
    /// The base model's parameters (HF checkpoint keys) and their shapes.
    #[serde(default)]
    pub parameters: std::collections::BTreeMap<String, Vec<i64>>,
    /// Padding id.
    pub pad_token_id: i64,
}

/// The host, lent to a method for one call.
pub struct Host<'a> {
    inner: HostRef<'a>,
}

impl<'a> Host<'a> {
    pub(crate) fn new(inner: HostRef<'a>) -> Self {
        Self { inner }
    }

    /// Runs the model on `input_ids`/`attention_mask` (`[B, T]`, the mask `[B, P + T]` when
    /// `request.past` is set).
    pub fn forward(
        &mut self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        request: &ForwardRequest,
    ) -> Result<ForwardOutput> {
        self.forward_at(input_ids, attention_mask, None, request)
    }

    /// As [`Host::forward`], with `positions` (int64 `[B, N]`) for [`Logits::Positions`].
    pub fn forward_at(
        &mut self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        positions: Option<&Tensor>,
        request: &ForwardRequest,
    ) -> Result<ForwardOutput> {
        self.send(input_ids, attention_mask, positions, None, request)
    }

    /// As [`Host::forward_at`], reading the method's own vectors `prefix` (`[P', E]` for every
    /// row, or `[B, P', E]`; e.g. a learned context) before the tokens' embeddings. The mask
    /// covers them, `[B, P' + T]` (after any kept keys/values), and hidden states, `positions`
    /// and `last_token` count them first. Gradients flow back into `prefix`.
    pub fn forward_after(
        &mut self,
        prefix: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        positions: Option<&Tensor>,
        request: &ForwardRequest,
    ) -> Result<ForwardOutput> {
        self.send(input_ids, attention_mask, positions, Some(prefix), request)
    }

    fn send(
        &mut self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        positions: Option<&Tensor>,
        prefix: Option<&Tensor>,
        request: &ForwardRequest,
    ) -> Result<ForwardOutput> {
        let mut message = Tensors::new()
            .with("input_ids", input_ids.shallow_clone())
            .with("attention_mask", attention_mask.shallow_clone());
        for (name, tensor) in [("positions", positions), ("prefix", prefix)] {
            if let Some(t) = tensor {
                message.tensors.insert(name.into(), t.shallow_clone());
            }
        }
        message.json = serde_json::to_value(request)?;
        let reply = self.inner.forward(message.into_message()).into_result()?;
        let mut reply = Tensors::from_message(reply)?;
        let take = |t: &mut Tensors, name: &str| {
            t.tensors.remove(name).ok_or_else(|| Error::msg(format!("the host returned no `{name}`")))
        };
        Ok(ForwardOutput {
            hidden: take(&mut reply, "hidden")?,
            logits: reply.tensors.remove("logits"),
            last_token: take(&mut reply, "last_token")?,
            cache: reply.json.get("cache").and_then(serde_json::Value::as_u64),
        })
    }

    /// Creates a trainable parameter named `name` (under the method's path), registered with the
    /// run's optimizer, checkpoints and adapter export.
    pub fn parameter(&mut self, name: &str, shape: &[i64], init: Init) -> Result<Tensor> {
        let init = serde_json::to_string(&init)?;
        let handle: OwnedTensor =
            self.inner.parameter(name.into(), RVec::from(shape.to_vec()), init.as_str().into()).into_result()?;
        Ok(handle.into_tensor())
    }

    fn call<T: serde::de::DeserializeOwned>(&mut self, request: &HostRequest) -> Result<T> {
        let request = serde_json::to_string(request)?;
        let reply = self.inner.call(request.as_str().into()).into_result()?;
        Ok(serde_json::from_str(&reply)?)
    }

    /// Token ids of `text`; `bos` prepends `</s>` as OPT's tokenizer does for a new sequence.
    pub fn encode(&mut self, text: &str, bos: bool) -> Result<Vec<i64>> {
        #[derive(Deserialize)]
        struct Reply {
            ids: Vec<i64>,
        }
        Ok(self.call::<Reply>(&HostRequest::Encode { text: text.into(), bos })?.ids)
    }

    /// Text of token ids (special tokens skipped).
    pub fn decode(&mut self, ids: &[i64]) -> Result<String> {
        #[derive(Deserialize)]
        struct Reply {
            text: String,
        }
        Ok(self.call::<Reply>(&HostRequest::Decode { ids: ids.to_vec() })?.text)
    }

    /// The run's task: verbalizer words and their token ids.
    pub fn task(&mut self) -> Result<TaskInfo> {
        self.call(&HostRequest::Task)
    }

    /// The model's shape.
    pub fn model(&mut self) -> Result<ModelInfo> {
        self.call(&HostRequest::Model)
    }

    /// Records a metric for the current step.
    pub fn log(&mut self, name: &str, value: f64) -> Result<()> {
        self.call::<serde_json::Value>(&HostRequest::Log { name: name.into(), value }).map(drop)
    }

    /// Frees keys/values kept by an earlier forward.
    pub fn free_cache(&mut self, id: u64) -> Result<()> {
        self.call::<serde_json::Value>(&HostRequest::FreeCache { id }).map(drop)
    }

    /// Loads another model (e.g. a larger teacher) for [`ForwardRequest::model`]; see
    /// [`HostRequest::LoadModel`]. Free it with [`Host::free_model`] once it is no longer needed.
    pub fn load_model(&mut self, model: &str) -> Result<LoadedModel> {
        self.call(&HostRequest::LoadModel { model: model.into() })
    }

    /// Releases a model from [`Host::load_model`] and its kept keys/values.
    pub fn free_model(&mut self, id: u64) -> Result<()> {
        self.call::<serde_json::Value>(&HostRequest::FreeModel { id }).map(drop)
    }

    /// The run's seed, for a method's own sampling.
    pub fn seed(&mut self) -> Result<u64> {
        #[derive(Deserialize)]
        struct Reply {
            seed: u64,
        }
        Ok(self.call::<Reply>(&HostRequest::Seed)?.seed)
    }
}
