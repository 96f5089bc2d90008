//! Helpers for adapters that read and write Hugging Face PEFT's format (`adapter_config.json`
//! and `adapter_model.safetensors`, <https://github.com/huggingface/peft>): the tensor-name
//! prefix, target lists, and refusing settings a method does not implement, by key. A method's
//! [`crate::Method::config_from_export`] and [`crate::Method::export`] use them; the host only
//! moves the files.

use std::collections::BTreeMap;

use serde_json::Value;
use tch::Tensor;

use crate::method::Site;
use crate::{Error, Result, Tensors};

/// What PEFT prepends to the wrapped model's parameter names in its weights file.
pub const PREFIX: &str = "base_model.model.";

/// `config[key]`, with null counted as absent.
pub fn get<'a>(config: &'a Value, key: &str) -> Option<&'a Value> {
    config.get(key).filter(|v| !v.is_null())
}

/// An error about setting `key` (of `adapter_config.json`, or of the method's own config).
pub fn bad_key(key: &str, message: impl std::fmt::Display) -> Error {
    Error::msg(format!("`{key}`: {message}"))
}

/// Refuses the config unless `config[key]` is absent or `default` (empty lists and objects
/// count as null): the key changes what the adapter computes, and the method implements only
/// the default.
pub fn require_default(config: &Value, key: &str, default: &Value) -> Result<()> {
    let is_default = |value: &Value| match value {
        Value::Array(a) if a.is_empty() => default.is_null(),
        Value::Object(o) if o.is_empty() => default.is_null(),
        _ => value == default,
    };
    match get(config, key).filter(|v| !is_default(v)) {
        Some(value) => Err(bad_key(key, format!("`{value}` is not supported (this method implements `{default}`)"))),
        None => Ok(()),
    }
}

/// The linear sites of a target list (PEFT's `target_modules`, or a method's own setting `key`):
/// module names, each once (`q_proj` … `fc2`), or `all-linear`. A regex pattern is refused: OPT's
/// module names are listed instead.
pub fn target_sites(key: &str, value: Option<&Value>) -> Result<Vec<Site>> {
    let valid = || Site::LINEAR.map(Site::name).join(", ");
    let names: Vec<&str> = match value {
        Some(Value::String(s)) if s == "all-linear" => return Ok(Site::LINEAR.to_vec()),
        Some(Value::String(s)) => {
            return Err(bad_key(key, format!("a pattern (`{s}`) is not supported; list names among {}", valid())))
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or_else(|| bad_key(key, "names must be strings")))
            .collect::<Result<_>>()?,
        _ => return Err(bad_key(key, format!("expected a list of module names among {}", valid()))),
    };
    let mut sites = Vec::new();
    for name in names {
        let site = Site::from_name(name).filter(|s| Site::LINEAR.contains(s));
        let site = site.ok_or_else(|| bad_key(key, format!("unknown module `{name}`; valid: {}", valid())))?;
        if sites.contains(&site) {
            return Err(bad_key(key, format!("`{name}` is listed twice")));
        }
        sites.push(site);
    }
    if sites.is_empty() {
        return Err(bad_key(key, format!("no modules listed; valid: {}", valid())));
    }
    Ok(sites)
}

/// Copies the tensors of an adapter's weights file (`base_model.model.<name>`) into `params`
/// (the method's tensors by name): every tensor must be one of them, with its shape, and none
/// may be missing. Nothing is copied until all are checked, so a refused adapter changes
/// nothing (a method's tensors may be the base model's own, e.g. LoRA's saved biases).
pub fn import<'a>(params: impl Iterator<Item = (String, &'a Tensor)>, weights: &Tensors) -> Result<()> {
    import_prefixed(PREFIX, params, weights)
}

/// [`import`] for a weights file that names the method's tensors with `prefix` (PEFT saves a
/// soft prompt's tensors with none).
pub fn import_prefixed<'a>(
    prefix: &str,
    params: impl Iterator<Item = (String, &'a Tensor)>,
    weights: &Tensors,
) -> Result<()> {
    let mut wanted: BTreeMap<String, Tensor> =
        params.map(|(name, t)| (format!("{prefix}{name}"), t.shallow_clone())).collect();
    let mut copies = Vec::with_capacity(weights.tensors.len());
    for (name, tensor) in &weights.tensors {
        let param = wanted.remove(name).ok_or_else(|| {
            Error::msg(format!("unexpected tensor `{name}`: the adapter's config implies no such tensor"))
        })?;
        if param.size() != tensor.size() {
            let (found, expected) = (tensor.size(), param.size());
            return Err(Error::msg(format!("tensor `{name}` has shape {found:?}, the config implies {expected:?}")));
        }
        copies.push((param, tensor));
    }
    if let Some(missing) = wanted.keys().next() {
        return Err(Error::msg(format!("missing tensor `{missing}`")));
    }
    for (mut param, tensor) in copies {
        tch::no_grad(|| param.f_copy_(&tensor.to_kind(param.kind()).to_device(param.device())))?;
    }
    Ok(())
}

/// [`target_sites`] of a method's own list setting `key` (e.g. `targets = ["q_proj", "v_proj"]`).
pub fn named_sites(key: &str, names: &[String]) -> Result<Vec<Site>> {
    target_sites(key, Some(&Value::Array(names.iter().map(|n| Value::from(n.as_str())).collect())))
}

/// A number PEFT writes as an integer when it is one (`lora_alpha = 16`, not `16.0`).
pub fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        Value::from(value as i64)
    } else {
        Value::from(value)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn targets_are_names_or_all_linear_each_once() {
        assert_eq!(
            target_sites("target_modules", Some(&json!(["v_proj", "q_proj"]))).unwrap(),
            [Site::VProj, Site::QProj]
        );
        assert_eq!(target_sites("target_modules", Some(&json!("all-linear"))).unwrap(), Site::LINEAR);
        for (value, expected) in [
            (json!(".*proj"), "pattern"),
            (json!(["q_proj", "lm_head"]), "lm_head"),
            (json!(["q_proj", "q_proj"]), "twice"),
            (json!([]), "no modules"),
        ] {
            let e = target_sites("target_modules", Some(&value)).unwrap_err();
            assert!(e.message().contains(expected) && e.message().contains("target_modules"), "{}", e.message());
        }
    }

    #[test]
    fn non_defaults_are_refused_by_key() {
        let config = json!({"use_dora": true, "rank_pattern": {}, "modules_to_save": null});
        assert!(require_default(&config, "rank_pattern", &Value::Null).is_ok());
        assert!(require_default(&config, "modules_to_save", &Value::Null).is_ok());
        assert!(require_default(&config, "absent", &json!(false)).is_ok());
        let e = require_default(&config, "use_dora", &json!(false)).unwrap_err();
        assert!(e.message().contains("`use_dora`"), "{}", e.message());
        assert_eq!((number(16.0), number(0.5)), (json!(16), json!(0.5)));
    }
}
