//! The glue between an author's [`Method`] and the ABI: config decoding, panic guards, the
//! method registry inside a library (`inventory`), and the root module.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Once, OnceLock};

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, ROption, RResult, RStr, RString, RVec, Tuple2};
use serde_json::Value;

use crate::abi::{
    this_abi, AbiInfo, ErrorKind, HostRef, Inputs, Message, MethodBox, MethodInfo, MethodLibrary, MethodLibraryRef,
    MethodObject, MethodObject_TO, OwnedTensor, PluginError, TensorRef,
};
use crate::host::Host;
use crate::message::Tensors;
use crate::method::{Method, Site};
use crate::{Error, Result};

/// One method of a library, as collected by `inventory`.
pub struct MethodEntry {
    info: fn(&str) -> MethodInfo,
    create: for<'c, 'h> fn(RStr<'c>, HostRef<'h>) -> RResult<MethodBox, PluginError>,
    config_from_export: for<'c> fn(RStr<'c>) -> RResult<RString, PluginError>,
    name: fn() -> &'static str,
}

inventory::collect!(MethodEntry);

impl MethodEntry {
    /// The entry of method `M`; [`crate::register!`] submits it.
    pub const fn of<M: Method>() -> Self {
        Self {
            info: info_of::<M>,
            create: create_of::<M>,
            config_from_export: config_from_export_of::<M>,
            name: || M::NAME,
        }
    }
}

fn info_of<M: Method>(version: &str) -> MethodInfo {
    let schema = schemars::schema_for!(M::Config);
    MethodInfo {
        name: M::NAME.into(),
        role: M::ROLE,
        version: version.into(),
        description: M::DESCRIPTION.into(),
        config_schema: serde_json::to_string(&schema).unwrap_or_default().into(),
        config_defaults: serde_json::to_string(&M::Config::default()).unwrap_or_default().into(),
        export_type: M::EXPORT_TYPE.unwrap_or_default().into(),
    }
}

fn config_from_export_of<M: Method>(adapter_config: RStr<'_>) -> RResult<RString, PluginError> {
    guard(
        M::NAME,
        || "config_from_export".into(),
        || {
            let adapter_config: Value = serde_json::from_str(adapter_config.as_str())?;
            Ok(serde_json::to_string(&M::config_from_export(&adapter_config)?)?.into())
        },
    )
}

fn create_of<M: Method>(config: RStr<'_>, host: HostRef<'_>) -> RResult<MethodBox, PluginError> {
    guard(
        M::NAME,
        || "new".into(),
        || {
            let config = decode_config::<M::Config>(config.as_str())?;
            let method = M::new(config, &mut Host::new(host))?;
            Ok(MethodObject_TO::from_value(Object(method), TD_Opaque))
        },
    )
}

/// Decodes hyperparameters: the defaults, overridden key by key by `json` (an object). Unknown
/// keys are an error listing the valid ones.
pub fn decode_config<C: serde::Serialize + serde::de::DeserializeOwned + Default>(json: &str) -> Result<C> {
    let config_error = |message: String| Error { kind: ErrorKind::Config, message };
    let Value::Object(mut merged) = serde_json::to_value(C::default())? else {
        return Err(config_error("the method's Config must be a struct with named fields".into()));
    };
    let user: Value =
        if json.trim().is_empty() { Value::Object(Default::default()) } else { serde_json::from_str(json)? };
    let Value::Object(user) = user else {
        return Err(config_error(format!("hyperparameters must be a table/object, got `{user}`")));
    };
    for (key, value) in user {
        if !merged.contains_key(&key) {
            let valid: Vec<&str> = merged.keys().map(String::as_str).collect();
            return Err(config_error(format!("unknown hyperparameter `{key}`; valid: {}", valid.join(", "))));
        }
        merged.insert(key, value);
    }
    serde_json::from_value(Value::Object(merged)).map_err(|e| config_error(e.to_string()))
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics inside a method become error values; this hook (in the library's own copy of std)
/// records the message instead of printing a backtrace over the host's output.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{payload}{at}")));
        }));
    });
}

/// Runs `f` so that neither a panic nor an error crosses the ABI unconverted.
pub(crate) fn guard<T>(
    method: &str,
    call: impl FnOnce() -> String,
    f: impl FnOnce() -> Result<T>,
) -> RResult<T, PluginError> {
    install_panic_hook();
    let (kind, message) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => return ROk(value),
        Ok(Err(e)) => (e.kind, e.message),
        Err(_) => (ErrorKind::Panic, LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| "panic".into())),
    };
    RErr(PluginError { kind, method: method.into(), call: call().into(), message: message.into() })
}

/// An author's method behind the ABI.
struct Object<M>(M);

impl<M: Method> MethodObject for Object<M> {
    fn sites(&self) -> RResult<RVec<u8>, PluginError> {
        guard(M::NAME, || "sites".into(), || Ok(self.0.sites()?.into_iter().map(Site::code).collect()))
    }

    fn trains(&self, name: RStr<'_>) -> RResult<ROption<bool>, PluginError> {
        guard(M::NAME, || format!("trains({name})"), || Ok(self.0.trains(name.as_str()).into()))
    }

    fn embeddings(
        &self,
        embeds: OwnedTensor,
        mask: OwnedTensor,
    ) -> RResult<Tuple2<OwnedTensor, OwnedTensor>, PluginError> {
        guard(
            M::NAME,
            || "embeddings".into(),
            || {
                let (e, m) = self.0.embeddings(embeds.into_tensor(), mask.into_tensor())?;
                Ok(Tuple2(OwnedTensor::new(e), OwnedTensor::new(m)))
            },
        )
    }

    fn prompt(&self) -> RResult<ROption<OwnedTensor>, PluginError> {
        guard(M::NAME, || "prompt".into(), || Ok(self.0.prompt()?.map(OwnedTensor::new).into()))
    }

    fn linear(
        &self,
        layer: i64,
        site: u8,
        input: TensorRef<'_>,
        output: OwnedTensor,
    ) -> RResult<OwnedTensor, PluginError> {
        let code = site;
        let site = Site::from_code(code);
        guard(
            M::NAME,
            || {
                site.map_or(format!("linear hook at unknown site code {code}"), |s| {
                    format!("linear hook at {}", s.path(layer))
                })
            },
            || {
                let site =
                    site.ok_or_else(|| Error::msg(format!("the host called an unknown hook site (code {code})")))?;
                Ok(OwnedTensor::new(self.0.linear(layer, site, &input.to_tensor(), output.into_tensor())?))
            },
        )
    }

    fn activation(&self, layer: i64, activation: OwnedTensor) -> RResult<OwnedTensor, PluginError> {
        guard(
            M::NAME,
            || format!("activation hook at {}", Site::Activation.path(layer)),
            || Ok(OwnedTensor::new(self.0.activation(layer, activation.into_tensor())?)),
        )
    }

    fn prepare(&mut self, host: HostRef<'_>, data: Message) -> RResult<(), PluginError> {
        guard(M::NAME, || "prepare".into(), || self.0.prepare(&mut Host::new(host), &Tensors::from_message(data)?))
    }

    fn loss(&mut self, host: HostRef<'_>, batch: Message) -> RResult<Message, PluginError> {
        guard(
            M::NAME,
            || "loss".into(),
            || {
                let loss = self.0.loss(&mut Host::new(host), &Tensors::from_message(batch)?)?;
                let mut reply = Tensors::new().with("loss", loss.loss);
                reply.json = Value::Object(loss.metrics.into_iter().map(|(k, v)| (k, Value::from(v))).collect());
                Ok(reply.into_message())
            },
        )
    }

    fn predict(&mut self, host: HostRef<'_>, batch: Message) -> RResult<Message, PluginError> {
        guard(
            M::NAME,
            || "predict".into(),
            || {
                let scores = self.0.predict(&mut Host::new(host), &Tensors::from_message(batch)?)?;
                Ok(Tensors::new().with("scores", scores).into_message())
            },
        )
    }

    fn export(&self) -> RResult<Message, PluginError> {
        guard(
            M::NAME,
            || "export".into(),
            || {
                let mut files = Tensors::new();
                if let Some(export) = self.0.export()? {
                    files.json = serde_json::json!({ "config": export.config });
                    files.tensors.extend(export.tensors);
                }
                Ok(files.into_message())
            },
        )
    }

    fn import(&mut self, weights: Message) -> RResult<(), PluginError> {
        guard(M::NAME, || "import".into(), || self.0.import(&Tensors::from_message(weights)?))
    }

    fn merged_deltas(&self) -> RResult<Message, PluginError> {
        guard(
            M::NAME,
            || "merged_deltas".into(),
            || {
                let mut deltas = Tensors::new();
                deltas.tensors.extend(self.0.merged_deltas()?);
                Ok(deltas.into_message())
            },
        )
    }

    fn training_inputs(&self) -> RResult<Inputs, PluginError> {
        guard(M::NAME, || "training_inputs".into(), || Ok(self.0.training_inputs()))
    }

    fn epoch_begins(&mut self, host: HostRef<'_>, epoch: u64) -> RResult<bool, PluginError> {
        guard(
            M::NAME,
            || format!("epoch_begins({epoch})"),
            || self.0.epoch_begins(&mut Host::new(host), epoch as usize),
        )
    }

    fn step_done(&mut self, host: HostRef<'_>, step: u64) -> RResult<Message, PluginError> {
        guard(
            M::NAME,
            || format!("step_done({step})"),
            || {
                let mut moves = Tensors::new();
                for change in self.0.step_done(&mut Host::new(host), step as usize)? {
                    if moves.tensors.insert(change.parameter.clone(), change.from).is_some() {
                        return Err(Error::msg(format!("two moves of parameter `{}`", change.parameter)));
                    }
                }
                Ok(moves.into_message())
            },
        )
    }

    fn state(&self) -> RResult<Message, PluginError> {
        guard(
            M::NAME,
            || "state".into(),
            || {
                let mut state = Tensors::new();
                state.tensors.extend(self.0.state()?);
                Ok(state.into_message())
            },
        )
    }

    fn load_state(&mut self, state: Message) -> RResult<(), PluginError> {
        guard(M::NAME, || "load_state".into(), || self.0.load_state(&Tensors::from_message(state)?))
    }

    fn set_train(&mut self, train: bool) -> RResult<(), PluginError> {
        guard(
            M::NAME,
            || format!("set_train({train})"),
            || {
                self.0.set_train(train);
                Ok(())
            },
        )
    }
}

static LIBRARY_VERSION: OnceLock<&'static str> = OnceLock::new();

/// The root module of a library whose crate version is `version` ([`crate::export_library!`]
/// calls this).
pub fn library(version: &'static str) -> MethodLibraryRef {
    let _ = LIBRARY_VERSION.set(version);
    MethodLibrary { abi_info, methods, config_from_export, create }.leak_into_prefix()
}

extern "C" fn abi_info() -> AbiInfo {
    this_abi()
}

extern "C" fn methods() -> RResult<RVec<MethodInfo>, PluginError> {
    let version = LIBRARY_VERSION.get().copied().unwrap_or("unknown");
    guard(
        "<library>",
        || "methods".into(),
        || Ok(inventory::iter::<MethodEntry>().map(|e| (e.info)(version)).collect()),
    )
}

extern "C" fn create(name: RStr<'_>, config: RStr<'_>, host: HostRef<'_>) -> RResult<MethodBox, PluginError> {
    match entry(name, "new") {
        ROk(entry) => (entry.create)(config, host),
        RErr(e) => RErr(e),
    }
}

extern "C" fn config_from_export(name: RStr<'_>, adapter_config: RStr<'_>) -> RResult<RString, PluginError> {
    match entry(name, "config_from_export") {
        ROk(entry) => (entry.config_from_export)(adapter_config),
        RErr(e) => RErr(e),
    }
}

/// The library's entry of method `name`, or an error for `call`.
fn entry(name: RStr<'_>, call: &str) -> RResult<&'static MethodEntry, PluginError> {
    match inventory::iter::<MethodEntry>().find(|e| (e.name)() == name.as_str()) {
        Some(entry) => ROk(entry),
        None => RErr(PluginError {
            kind: ErrorKind::Failed,
            method: name.into(),
            call: call.into(),
            message: "this library has no such method".into(),
        }),
    }
}

/// Registers a method with its library (one line per method, in any file of the library).
#[macro_export]
macro_rules! register {
    ($method:ty) => {
        $crate::inventory::submit! { $crate::export::MethodEntry::of::<$method>() }
    };
}

/// Exports the library's root module and registers the listed methods (more can be registered
/// elsewhere with [`register!`]). Use once per library, in `lib.rs`; the crate must be a
/// `cdylib` depending on `ftlab-sdk` and `abi_stable` (the generated code names it).
#[macro_export]
macro_rules! export_library {
    ($($method:ty),* $(,)?) => {
        $( $crate::register!($method); )*

        /// The library's root module, found by ftlab's registry.
        #[::abi_stable::export_root_module]
        pub fn ftlab_method_library() -> $crate::abi::MethodLibraryRef {
            $crate::export::library(env!("CARGO_PKG_VERSION"))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
    struct Config {
        rank: i64,
        alpha: f64,
    }

    #[test]
    fn config_overrides_defaults_and_rejects_unknown_keys() {
        let c: Config = decode_config(r#"{"rank": 8}"#).unwrap();
        assert_eq!((c.rank, c.alpha), (8, 0.0));
        let e = decode_config::<Config>(r#"{"rnk": 8}"#).unwrap_err();
        assert!(e.message.contains("`rnk`") && e.message.contains("alpha, rank"), "{}", e.message);
        assert_eq!(e.kind, ErrorKind::Config);
        let e = decode_config::<Config>(r#"{"rank": "eight"}"#).unwrap_err();
        assert!(e.message.contains("invalid type"), "{}", e.message);
    }

    #[test]
    fn guard_turns_panics_into_errors() {
        let r: RResult<(), PluginError> = guard("m", || "loss".into(), || panic!("boom {}", 7));
        let e = r.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Panic);
        assert!(e.message.contains("boom 7") && e.to_string().contains("`m`") && e.to_string().contains("loss"), "{e}");
    }
}
