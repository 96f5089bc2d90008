//! The `ia3` adapter as HF PEFT writes it (peft 0.21): `adapter_config.json` with
//! `peft_type = "IA3"` and `adapter_model.safetensors` holding `base_model.model.<module>.ia3_l`.
//! Settings this plugin does not implement (`fan_in_fan_out`, saved modules, excluded modules)
//! are refused by key on import, never dropped.

use ftlab_sdk::peft::{self, bad_key, get, require_default, PREFIX};
use ftlab_sdk::prelude::*;
use ftlab_sdk::serde_json::{json, Value};

use crate::{Config, Ia3};

/// Keys whose non-default values change what the adapter computes, with the defaults this
/// plugin implements.
const FIXED: [(&str, Value); 3] =
    [("fan_in_fan_out", Value::Bool(false)), ("modules_to_save", Value::Null), ("exclude_modules", Value::Null)];

/// The hyperparameters of a PEFT IA3 adapter's `adapter_config.json`.
pub fn config(c: &Value) -> Result<Config> {
    for (key, default) in &FIXED {
        require_default(c, key, default)?;
    }
    let names = |key: &str| -> Result<Vec<String>> {
        Ok(peft::target_sites(key, get(c, key))?.iter().map(|s| s.name().to_string()).collect())
    };
    let targets = names("target_modules")?;
    let feedforward = match get(c, "feedforward_modules") {
        None => Vec::new(),
        Some(Value::Array(list)) if list.is_empty() => Vec::new(),
        Some(_) => names("feedforward_modules")?,
    };
    if let Some(name) = feedforward.iter().find(|f| !targets.contains(f)) {
        return Err(bad_key("feedforward_modules", format!("`{name}` is not among target_modules")));
    }
    Ok(Config { targets, feedforward })
}

/// PEFT's two files for `ia3`'s current vectors (config keys as PEFT writes them).
pub fn export(ia3: &Ia3) -> Export {
    let c = &ia3.config;
    let config = json!({
        "auto_mapping": null,
        "base_model_name_or_path": ia3.base_model,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "feedforward_modules": c.feedforward,
        "inference_mode": true,
        "init_ia3_weights": true,
        "modules_to_save": null,
        "peft_type": "IA3",
        "revision": null,
        "target_modules": c.targets,
        "task_type": "CAUSAL_LM",
    });
    let tensors = ia3.tensors().map(|(name, t)| (format!("{PREFIX}{name}"), t.detach().copy())).collect();
    Export { config, tensors }
}
