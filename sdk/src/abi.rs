//! The stable ABI between the ftlab host and method libraries.
//!
//! Only this module's types cross the boundary. Following abi_stable's three-role layout, the
//! SDK is the interface crate: it defines the root module a library exports
//! ([`MethodLibrary`]), the method object the host calls ([`MethodObject`]) and the host object a
//! method calls back ([`HostObject`]). Rich data crosses as JSON text; tensors cross as opaque
//! libtorch handles whose ownership each type spells out ([`OwnedTensor`], [`TensorRef`]).
//! Authors never use this module directly: [`crate::Method`] and [`crate::export_library!`]
//! produce everything here.

// abi_stable's sabi_trait macro generates impls inside constants.
#![allow(non_local_definitions)]

use std::ffi::c_void;
use std::fmt;
use std::marker::PhantomData;

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, ROption, RResult, RStr, RString, RVec, Tuple2};
use abi_stable::{declare_root_module_statics, package_version_strings, sabi_trait, RMut, StableAbi};
use tch::Tensor;

/// A libtorch tensor handle **owned by whoever holds this value**.
///
/// Passing an `OwnedTensor` by value moves the handle: the receiver frees it (by dropping this
/// value or the [`Tensor`] from [`OwnedTensor::into_tensor`]); the sender must not touch it
/// again. The handle is a `torch::Tensor*` allocated by tch; host and plugin link the same
/// libtorch, so either side may free it. Autograd history travels with the tensor.
#[repr(transparent)]
#[derive(StableAbi)]
pub struct OwnedTensor {
    ptr: *mut c_void,
}

impl OwnedTensor {
    /// Gives up `tensor`'s handle to whoever receives the returned value.
    pub fn new(mut tensor: Tensor) -> Self {
        let ptr = tensor.as_mut_ptr().cast();
        std::mem::forget(tensor);
        Self { ptr }
    }

    /// Takes ownership of the handle as a tch tensor.
    pub fn into_tensor(self) -> Tensor {
        let ptr = self.ptr;
        std::mem::forget(self);
        // SAFETY: `ptr` came from `OwnedTensor::new`, which forgot the only Rust owner.
        unsafe { Tensor::from_ptr(ptr.cast()) }
    }
}

impl Drop for OwnedTensor {
    fn drop(&mut self) {
        // SAFETY: as in `into_tensor`; dropping the tensor frees the handle exactly once.
        drop(unsafe { Tensor::from_ptr(self.ptr.cast()) });
    }
}

/// A libtorch tensor **borrowed for the duration of one call**: the receiver must not free it.
/// [`TensorRef::to_tensor`] makes the receiver's own handle to the same storage and autograd
/// node (a shallow clone), which it may keep.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy)]
pub struct TensorRef<'a> {
    ptr: *mut c_void,
    _borrow: PhantomData<&'a ()>,
}

impl<'a> TensorRef<'a> {
    /// Lends `tensor` for one call.
    pub fn new(tensor: &'a Tensor) -> Self {
        Self { ptr: tensor.as_ptr().cast_mut().cast(), _borrow: PhantomData }
    }

    /// A new handle to the borrowed tensor, owned by the caller.
    pub fn to_tensor(self) -> Tensor {
        // SAFETY: the lender keeps the tensor alive for this call; clone_from_ptr makes a new
        // handle (shallow clone), so nothing the lender owns is freed by the receiver.
        unsafe { Tensor::clone_from_ptr(self.ptr.cast()) }
    }
}

/// A named tensor inside a [`Message`]; the message owns it.
#[repr(C)]
#[derive(StableAbi)]
pub struct NamedTensor {
    /// Name, e.g. `input_ids`.
    pub name: RString,
    /// The tensor, owned by the message.
    pub tensor: OwnedTensor,
}

/// Data crossing the boundary: JSON for everything but tensors, plus named tensors. A message
/// passed by value moves its tensors to the receiver.
#[repr(C)]
#[derive(StableAbi)]
pub struct Message {
    /// A JSON value (an object), `{}` when empty.
    pub json: RString,
    /// Tensors, owned by the message.
    pub tensors: RVec<NamedTensor>,
}

/// What kind of failure a [`PluginError`] reports.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The method panicked (libtorch errors raised through tch's panicking calls land here).
    Panic,
    /// The hyperparameters are invalid.
    Config,
    /// The method does not implement this call for its role.
    Unsupported,
    /// The host refused a request from the method.
    Host,
    /// The method returned an error.
    Failed,
}

/// An error crossing the boundary; it names the method and the call.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct PluginError {
    /// Failure kind.
    pub kind: ErrorKind,
    /// The method's name.
    pub method: RString,
    /// The call, e.g. `loss` or `linear(model.decoder.layers.0.self_attn.q_proj)`.
    pub call: RString,
    /// What happened.
    pub message: RString,
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ErrorKind::Panic => "panicked",
            ErrorKind::Config => "invalid hyperparameters",
            ErrorKind::Unsupported => "not supported",
            ErrorKind::Host => "host refused",
            ErrorKind::Failed => "failed",
        };
        write!(f, "method `{}` {what} in `{}`: {}", self.method, self.call, self.message)
    }
}

impl std::error::Error for PluginError {}

/// Versions a library was built with; the registry refuses any that differ from the host's.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct AbiInfo {
    /// `ftlab-sdk` crate version.
    pub sdk_version: RString,
    /// tch crate version.
    pub tch_version: RString,
    /// libtorch version (e.g. `2.13.0+cu130`).
    pub libtorch_version: RString,
}

/// Whether a method decides the loss or changes which parameters train and the forward pass.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Decides the loss and the prediction (exactly one per run).
    Objective,
    /// Chooses trainable parameters and may act at hook sites (zero or more per run).
    Adapter,
}

/// What an objective's training batches hold.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Inputs {
    /// The labelled few-shot training set.
    #[default]
    Labelled,
    /// Unlabelled inputs of the task's training split, disjoint from the labelled set
    /// (`train.unlabelled` of them); their labels are hidden (-1).
    Unlabelled,
}

/// Static description of one method in a library.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct MethodInfo {
    /// Unique name, e.g. `lora`.
    pub name: RString,
    /// Objective or adapter.
    pub role: Role,
    /// The library's version.
    pub version: RString,
    /// One-paragraph description (with the paper link).
    pub description: RString,
    /// JSON schema of the hyperparameters.
    pub config_schema: RString,
    /// The default hyperparameters as JSON.
    pub config_defaults: RString,
    /// The format tag of the adapter files it exports and imports (PEFT's `peft_type`, e.g.
    /// `LORA`, where PEFT has the method); empty when it exports nothing.
    pub export_type: RString,
}

/// A method instance, as the host sees it. Every call is guarded by the SDK: a panic becomes
/// an `RErr` naming the method and the call.
#[sabi_trait]
pub trait MethodObject {
    /// Codes of the hook sites this method acts on ([`crate::Site::code`]); the host calls
    /// no other hook, so unused sites cost nothing. An error (or a panic) refuses the method:
    /// running it with no hooks would hide the author's bug.
    fn sites(&self) -> RResult<RVec<u8>, PluginError>;

    /// Whether the base parameter `name` trains (`RSome`), or no opinion (`RNone`).
    fn trains(&self, name: RStr<'_>) -> RResult<ROption<bool>, PluginError>;

    /// Embedding hook. Ownership: both tensors move in; the returned pair moves out.
    fn embeddings(
        &self,
        embeds: OwnedTensor,
        mask: OwnedTensor,
    ) -> RResult<Tuple2<OwnedTensor, OwnedTensor>, PluginError>;

    /// Linear-output hook. Ownership: `input` is lent for the call; `output` moves in and the
    /// result moves out.
    fn linear(
        &self,
        layer: i64,
        site: u8,
        input: TensorRef<'_>,
        output: OwnedTensor,
    ) -> RResult<OwnedTensor, PluginError>;

    /// MLP-activation hook. Ownership: `activation` moves in, the result moves out.
    fn activation(&self, layer: i64, activation: OwnedTensor) -> RResult<OwnedTensor, PluginError>;

    /// Work before training (e.g. teacher distributions). Ownership: `data`'s tensors move in.
    fn prepare(&mut self, host: HostRef<'_>, data: Message) -> RResult<(), PluginError>;

    /// Training loss of a batch: a message with a scalar tensor `loss` and JSON metrics.
    /// Ownership: the batch's tensors move in; the reply's move out.
    fn loss(&mut self, host: HostRef<'_>, batch: Message) -> RResult<Message, PluginError>;

    /// Class scores of a batch: a message with a tensor `scores` `[B, num_labels]`.
    /// Ownership as in `loss`.
    fn predict(&mut self, host: HostRef<'_>, batch: Message) -> RResult<Message, PluginError>;

    /// Switches training behaviour (e.g. dropout inside hooks) on or off, as the run moves
    /// between training and evaluation.
    fn set_train(&mut self, train: bool) -> RResult<(), PluginError>;

    /// The trained state as adapter files: JSON `{"config": <adapter_config.json>}` (`{}` when
    /// the method exports nothing) and the weights file's tensors, named as the file names them.
    /// Ownership: the reply's tensors move to the host.
    fn export(&self) -> RResult<Message, PluginError>;

    /// Copies an export's tensors (named as in its weights file) into this instance's
    /// parameters. Ownership: the message's tensors move in.
    fn import(&mut self, weights: Message) -> RResult<(), PluginError>;

    /// The update of each base weight (tensors named by checkpoint key) that reproduces this
    /// adapter's hooks when added to it: merging. `Unsupported` for methods that are no weight
    /// update. Ownership: the reply's tensors move to the host.
    fn merged_deltas(&self) -> RResult<Message, PluginError>;

    /// Which inputs the objective trains on: the labelled few-shot set, or unlabelled task
    /// inputs (context distillation). An error refuses the method rather than guessing.
    fn training_inputs(&self) -> RResult<Inputs, PluginError>;

    /// Training epoch `epoch` (0-based) begins, or a resumed run re-enters it: `true` when the
    /// method's `trains` answers changed, so that the host re-reads them and moves optimizer
    /// state to the tensors that now train.
    fn epoch_begins(&mut self, host: HostRef<'_>, epoch: u64) -> RResult<bool, PluginError>;

    /// Optimizer step `step` (1-based) was taken. The reply's tensors, named by the method's
    /// parameters, move their optimizer moments: int64 `from`, entry i taking old entry
    /// `from[i]`, or zero where it is -1 ([`crate::MomentMove`]). Ownership: they move to the
    /// host.
    fn step_done(&mut self, host: HostRef<'_>, step: u64) -> RResult<Message, PluginError>;

    /// What the method keeps outside its parameters that a resumed run needs, saved with every
    /// checkpoint (tensors of any kind and shape). Ownership: they move to the host.
    fn state(&self) -> RResult<Message, PluginError>;

    /// Restores [`MethodObject::state`] from a checkpoint. Ownership: the tensors move in.
    fn load_state(&mut self, state: Message) -> RResult<(), PluginError>;

    /// Prompt hook: the vectors every row reads first, or none. Ownership: the tensor moves out.
    #[sabi(last_prefix_field)]
    fn prompt(&self) -> RResult<ROption<OwnedTensor>, PluginError>;
}

/// The owned method object the host keeps.
pub type MethodBox = MethodObject_TO<'static, RBox<()>>;

/// The host, as a method sees it during `prepare`, `loss` and `predict`.
#[sabi_trait]
pub trait HostObject {
    /// Runs the model. `request.json` is a [`crate::host::ForwardRequest`]; its tensors
    /// (`input_ids`, `attention_mask`, optionally `positions`) move to the host. The reply holds
    /// `hidden`, `logits` (if asked), `last_token`, and JSON `{"cache": id}` when a cache was
    /// kept; its tensors move to the caller.
    fn forward(&mut self, request: Message) -> RResult<Message, PluginError>;

    /// Creates a trainable parameter owned by the run (optimizer, checkpoints, adapter export),
    /// named `name` under the method's own path. `init` is a JSON [`crate::Init`]. The returned
    /// handle moves to the caller and shares storage with the run's copy.
    fn parameter(&mut self, name: RStr<'_>, shape: RVec<i64>, init: RStr<'_>) -> RResult<OwnedTensor, PluginError>;

    /// Everything else, as JSON in and out: a [`crate::host::HostRequest`].
    #[sabi(last_prefix_field)]
    fn call(&mut self, request: RStr<'_>) -> RResult<RString, PluginError>;
}

/// The host lent to a method for one call (one lifetime for the borrow and the object).
pub type HostRef<'a> = HostObject_TO<'a, RMut<'a, ()>>;

/// The root module every method library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = MethodLibraryRef)))]
#[sabi(missing_field(panic))]
pub struct MethodLibrary {
    /// Versions the library was built with.
    pub abi_info: extern "C" fn() -> AbiInfo,
    /// The methods the library holds.
    pub methods: extern "C" fn() -> RResult<RVec<MethodInfo>, PluginError>,
    /// The JSON hyperparameters of method `name` that reproduce an exported adapter, given its
    /// `adapter_config.json` text; an error names what the method cannot represent.
    pub config_from_export: extern "C" fn(name: RStr<'_>, adapter_config: RStr<'_>) -> RResult<RString, PluginError>,
    /// Creates method `name` from JSON hyperparameters; the host is lent for parameter creation.
    #[sabi(last_prefix_field)]
    pub create: extern "C" fn(name: RStr<'_>, config: RStr<'_>, host: HostRef<'_>) -> RResult<MethodBox, PluginError>,
}

impl RootModule for MethodLibraryRef {
    declare_root_module_statics! {MethodLibraryRef}
    const BASE_NAME: &'static str = "ftlab_methods";
    const NAME: &'static str = "ftlab_methods";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The libtorch folder this SDK was compiled against (plugins scaffolded by `ftlab plugins new`
/// build against the same one).
pub const LIBTORCH_DIR: &str = env!("BUILT_LIBTORCH_DIR");

/// The versions this copy of the SDK was compiled with.
pub fn this_abi() -> AbiInfo {
    AbiInfo {
        sdk_version: env!("CARGO_PKG_VERSION").into(),
        tch_version: crate::TCH_VERSION.into(),
        libtorch_version: env!("BUILT_LIBTORCH_VERSION").into(),
    }
}
