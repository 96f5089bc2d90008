//! The `lora` adapter as HF PEFT writes it (peft 0.21): `adapter_config.json` with
//! `peft_type = "LORA"` and `adapter_model.safetensors` holding
//! `base_model.model.<module>.lora_{A,B}.weight` (and, with `bias` or `modules_to_save`, the saved
//! base tensors as `base_model.model.<key>`). Settings whose semantics this plugin does not
//! implement (DoRA, `fan_in_fan_out`, regular-expression patterns) are refused by key on import,
//! never dropped.

use ftlab_sdk::peft::{self, bad_key, get, require_default, PREFIX};
use ftlab_sdk::prelude::*;
use ftlab_sdk::serde_json::{json, Value};

use crate::{BaseBias, Config, Lora};

/// Keys whose non-default values change what the adapter computes, with the defaults this
/// plugin implements.
const FIXED: [(&str, Value); 6] = [
    ("use_dora", Value::Bool(false)),
    ("fan_in_fan_out", Value::Bool(false)),
    ("layer_replication", Value::Null),
    ("trainable_token_indices", Value::Null),
    ("target_parameters", Value::Null),
    ("exclude_modules", Value::Null),
];

/// The hyperparameters of a PEFT LoRA adapter's `adapter_config.json`.
pub fn config(c: &Value) -> Result<Config> {
    for (key, default) in &FIXED {
        require_default(c, key, default)?;
    }
    let base_bias = match get(c, "bias") {
        None | Some(Value::Null) => BaseBias::None,
        Some(value) => ftlab_sdk::serde_json::from_value(value.clone())
            .map_err(|_| bad_key("bias", format!("{value}: expected \"none\", \"lora_only\" or \"all\"")))?,
    };
    let modules_to_save = match get(c, "modules_to_save") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| bad_key("modules_to_save", format!("{v} is not a module name")))
            })
            .collect::<Result<_>>()?,
        Some(other) => return Err(bad_key("modules_to_save", format!("expected a list of module names, got {other}"))),
    };
    let r = get(c, "r").and_then(Value::as_i64).filter(|&r| r > 0);
    let r = r.ok_or_else(|| bad_key("r", format!("expected a positive integer, got {:?}", get(c, "r"))))?;
    let alpha = get(c, "lora_alpha").and_then(Value::as_f64);
    let alpha =
        alpha.ok_or_else(|| bad_key("lora_alpha", format!("expected a number, got {:?}", get(c, "lora_alpha"))))?;
    let dropout = get(c, "lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    let targets =
        peft::target_sites("target_modules", get(c, "target_modules"))?.iter().map(|s| s.name().to_string()).collect();
    let flag = |key: &str| match get(c, key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad_key(key, format!("expected true or false, got {other}"))),
    };
    let (rslora, bias) = (flag("use_rslora")?, flag("lora_bias")?);
    let layers = match get(c, "layers_to_transform") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            Some(vec![n.as_i64().ok_or_else(|| bad_key("layers_to_transform", format!("{n} is not a layer")))?])
        }
        Some(Value::Array(list)) => Some(
            list.iter()
                .map(|v| v.as_i64().ok_or_else(|| bad_key("layers_to_transform", format!("{v} is not a layer"))))
                .collect::<Result<_>>()?,
        ),
        Some(other) => return Err(bad_key("layers_to_transform", format!("expected a layer or a list, got {other}"))),
    };
    if layers.is_some() && get(c, "layers_pattern").is_some_and(|p| !p.is_null()) {
        // OPT's layers are found by their own name; a pattern for another layout changes nothing here.
        let pattern = get(c, "layers_pattern").cloned().unwrap_or_default();
        if pattern != Value::from("layers") && pattern != Value::Array(vec![Value::from("layers")]) {
            return Err(bad_key("layers_pattern", format!("{pattern}: OPT's decoder layers are `layers`")));
        }
    }
    let rank_pattern = pattern(c, "rank_pattern", Value::as_i64)?;
    let alpha_pattern = pattern(c, "alpha_pattern", Value::as_f64)?;
    Ok(Config {
        r,
        alpha,
        dropout,
        targets,
        rslora,
        layers,
        rank_pattern,
        alpha_pattern,
        bias,
        base_bias,
        modules_to_save,
    })
}

/// A PEFT pattern (`rank_pattern`, `alpha_pattern`): module keys to numbers. Keys are matched
/// as a module's path or its end; a regular expression cannot be, and is refused.
fn pattern<T>(c: &Value, key: &str, number: fn(&Value) -> Option<T>) -> Result<std::collections::BTreeMap<String, T>> {
    let Some(Value::Object(map)) = get(c, key).filter(|v| !v.is_null()) else {
        return match get(c, key) {
            None | Some(Value::Null) => Ok(Default::default()),
            Some(other) => Err(bad_key(key, format!("expected a table of module → number, got {other}"))),
        };
    };
    map.iter()
        .map(|(module, value)| {
            if module.contains(|ch: char| "*+?[](){}|^$\\".contains(ch)) {
                return Err(bad_key(key, format!("`{module}` is a regular expression; name modules by path (`layers.1.self_attn.q_proj`) or name (`q_proj`)")));
            }
            let value = number(value).ok_or_else(|| bad_key(key, format!("`{module}`: {value} is not a number")))?;
            Ok((module.clone(), value))
        })
        .collect()
}

/// PEFT's two files for `lora`'s current weights (config keys as PEFT writes them).
pub fn export(lora: &Lora) -> Export {
    let c = &lora.config;
    let config = json!({
        "alpha_pattern": c.alpha_pattern,
        "auto_mapping": null,
        "base_model_name_or_path": lora.base_model,
        "bias": c.base_bias.name(),
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": c.layers,
        "lora_alpha": peft::number(c.alpha),
        "lora_bias": c.bias,
        "lora_dropout": c.dropout,
        "modules_to_save": (!c.modules_to_save.is_empty()).then_some(&c.modules_to_save),
        "peft_type": "LORA",
        "r": c.r,
        "rank_pattern": c.rank_pattern,
        "revision": null,
        "target_modules": c.targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": c.rslora,
    });
    let tensors = lora.tensors().map(|(name, t)| (format!("{PREFIX}{name}"), t.detach().copy())).collect();
    Export { config, tensors }
}
