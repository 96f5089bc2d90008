//! LoRA adapters in Hugging Face PEFT's format, both ways: a run's `lora` parameters saved as
//! `adapter_config.json` + `adapter_model.safetensors` that `PeftModel.from_pretrained` loads,
//! and PEFT-made adapters read back — into a `lora` run, or merged into a model's weights
//! (`ftlab model forward --adapter DIR`).
//!
//! The `lora` plugin names its parameters as PEFT does minus PEFT's `base_model.model.` prefix
//! (`model.decoder.layers.{i}.self_attn.q_proj.lora_A.weight`), so the conversion is a prefix.
//! The config written holds the fields peft 0.21.2 writes for a plain LoRA adapter (sorted, as
//! PEFT sorts them), less the experimental ones PEFT defaults to null and `peft_version`, which
//! PEFT fills in on load. Settings whose semantics ftlab does not implement (DoRA, rsLoRA,
//! per-module ranks, `fan_in_fan_out`, trained biases, extra saved modules, regex targets) are
//! refused on import with the key named, never silently dropped.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ftlab_registry::Registry;
use ftlab_sdk::Role;
use serde_json::{json, Value};
use tch::{Device, Kind, TchError, Tensor};

use super::{MethodRun, MethodSpec};
use crate::error::{Error, Result};
use crate::model::hooks::Site;
use crate::model::Model;

/// PEFT's config file name.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// PEFT's weights file name.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// What PEFT prepends to the wrapped model's parameter names.
const PREFIX: &str = "base_model.model.";

/// LoRA hyperparameters as PEFT records them.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank (`r`).
    pub r: i64,
    /// Scale numerator (`lora_alpha`): updates are scaled by `alpha / r`.
    pub alpha: f64,
    /// Training-time input dropout (`lora_dropout`); no effect on inference or merging.
    pub dropout: f64,
    /// Adapted linears of every decoder layer (`target_modules`).
    pub targets: Vec<Site>,
}

/// A LoRA adapter: hyperparameters, the base model it was trained on, and A/B by parameter name.
#[derive(Debug)]
pub struct LoraAdapter {
    /// Hyperparameters.
    pub config: LoraConfig,
    /// PEFT's `base_model_name_or_path` (informative only).
    pub base_model: String,
    /// `model.decoder.layers.{i}.<module>.lora_A.weight` `[r, in]` and `.lora_B.weight`
    /// `[out, r]` for every adapted module.
    pub tensors: BTreeMap<String, Tensor>,
}

/// Which factor of a module's update a parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Factor {
    A,
    B,
}

/// Parses `model.decoder.layers.{i}.<module>.lora_{A,B}.weight` into (layer, site, factor).
fn parse_name(name: &str) -> Option<(i64, Site, Factor)> {
    let (module, factor) = match (name.strip_suffix(".lora_A.weight"), name.strip_suffix(".lora_B.weight")) {
        (Some(module), _) => (module, Factor::A),
        (_, Some(module)) => (module, Factor::B),
        _ => return None,
    };
    let (layer, site) = module.strip_prefix("model.decoder.layers.")?.split_once('.')?;
    let layer: i64 = layer.parse().ok()?;
    let site = Site::from_name(site.strip_prefix("self_attn.").unwrap_or(site))?;
    (Site::LINEAR.contains(&site) && site.path(layer) == module).then_some((layer, site, factor))
}

/// The target sites of PEFT's `target_modules` (a list of module names, or `all-linear`).
fn parse_targets(value: Option<&Value>) -> std::result::Result<Vec<Site>, String> {
    let valid = || Site::LINEAR.map(Site::name).join(", ");
    let names: Vec<&str> = match value {
        Some(Value::String(s)) if s == "all-linear" => return Ok(Site::LINEAR.to_vec()),
        Some(Value::String(s)) => {
            return Err(format!("a pattern (`{s}`) is not supported; list module names among {}", valid()))
        }
        Some(Value::Array(items)) => {
            items.iter().map(|v| v.as_str().ok_or("names must be strings")).collect::<std::result::Result<_, _>>()?
        }
        _ => return Err(format!("expected a list of module names among {}", valid())),
    };
    let mut sites = Vec::new();
    for name in names {
        let site = Site::from_name(name).filter(|s| Site::LINEAR.contains(s));
        let site = site.ok_or_else(|| format!("unknown module `{name}`; valid: {}", valid()))?;
        if !sites.contains(&site) {
            sites.push(site);
        }
    }
    if sites.is_empty() {
        return Err(format!("no modules listed; valid: {}", valid()));
    }
    Ok(sites)
}

/// Keys of PEFT's config whose non-default values change the adapter's semantics, with the
/// defaults ftlab implements.
const FIXED: [(&str, Value); 10] = [
    ("use_dora", Value::Bool(false)),
    ("use_rslora", Value::Bool(false)),
    ("fan_in_fan_out", Value::Bool(false)),
    ("lora_bias", Value::Bool(false)),
    ("layers_to_transform", Value::Null),
    ("layer_replication", Value::Null),
    ("modules_to_save", Value::Null),
    ("trainable_token_indices", Value::Null),
    ("target_parameters", Value::Null),
    ("exclude_modules", Value::Null),
];

/// Whether `value` is the default `default`, counting empty lists and objects as null.
fn is_default(value: &Value, default: &Value) -> bool {
    match value {
        Value::Array(a) if a.is_empty() => default.is_null(),
        Value::Object(o) if o.is_empty() => default.is_null(),
        _ => value == default,
    }
}

impl LoraConfig {
    /// Reads a PEFT `adapter_config.json` (already parsed), refusing what ftlab cannot honour.
    fn from_peft(json: &Value, path: &Path) -> Result<(Self, String)> {
        let bad = |key: &str, message: String| Error::Config { path: path.into(), key: key.into(), message };
        let get = |key: &str| json.get(key).filter(|v| !v.is_null());
        if get("peft_type").and_then(Value::as_str) != Some("LORA") {
            return Err(bad("peft_type", format!("only LORA adapters are supported, got {:?}", get("peft_type"))));
        }
        for (key, default) in &FIXED {
            if let Some(value) = get(key).filter(|v| !is_default(v, default)) {
                return Err(bad(key, format!("`{value}` is not supported (ftlab implements `{default}`)")));
            }
        }
        if let Some(bias) = get("bias").filter(|b| b.as_str() != Some("none")) {
            return Err(bad("bias", format!("{bias} is not supported: ftlab's LoRA trains no biases (\"none\")")));
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if get(key).is_some_and(|v| !is_default(v, &Value::Null)) {
                return Err(bad(key, "per-module ranks and alphas are not supported".into()));
            }
        }
        let r = get("r").and_then(Value::as_i64).filter(|&r| r > 0);
        let r = r.ok_or_else(|| bad("r", format!("expected a positive integer, got {:?}", get("r"))))?;
        let alpha = get("lora_alpha").and_then(Value::as_f64);
        let alpha =
            alpha.ok_or_else(|| bad("lora_alpha", format!("expected a number, got {:?}", get("lora_alpha"))))?;
        let dropout = get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
        let targets = parse_targets(get("target_modules")).map_err(|m| bad("target_modules", m))?;
        let base = get("base_model_name_or_path").and_then(Value::as_str).unwrap_or_default().to_string();
        Ok((Self { r, alpha, dropout, targets }, base))
    }

    /// PEFT's `adapter_config.json` for this adapter (keys sorted, as PEFT writes them).
    fn to_peft(&self, base_model: &str) -> Value {
        // PEFT writes an integer alpha as an integer.
        let alpha = if self.alpha.fract() == 0.0 && self.alpha.abs() < 1e15 {
            json!(self.alpha as i64)
        } else {
            json!(self.alpha)
        };
        let targets: Vec<&str> = self.targets.iter().map(|s| s.name()).collect();
        let config: BTreeMap<&str, Value> = BTreeMap::from([
            ("alpha_pattern", json!({})),
            ("auto_mapping", Value::Null),
            ("base_model_name_or_path", json!(base_model)),
            ("bias", json!("none")),
            ("fan_in_fan_out", json!(false)),
            ("inference_mode", json!(true)),
            ("init_lora_weights", json!(true)),
            ("layer_replication", Value::Null),
            ("layers_pattern", Value::Null),
            ("layers_to_transform", Value::Null),
            ("lora_alpha", alpha),
            ("lora_bias", json!(false)),
            ("lora_dropout", json!(self.dropout)),
            ("modules_to_save", Value::Null),
            ("peft_type", json!("LORA")),
            ("r", json!(self.r)),
            ("rank_pattern", json!({})),
            ("revision", Value::Null),
            ("target_modules", json!(targets)),
            ("task_type", json!("CAUSAL_LM")),
            ("use_dora", json!(false)),
            ("use_rslora", json!(false)),
        ]);
        json!(config)
    }

    /// The hyperparameters of ftlab's `lora` plugin.
    fn from_plugin(json: &Value, method: &str) -> Result<Self> {
        let bad = |what: &str| Error::Input(format!("method `{method}` has no LoRA hyperparameter `{what}`"));
        let r = json.get("r").and_then(Value::as_i64).ok_or_else(|| bad("r"))?;
        let alpha = json.get("alpha").and_then(Value::as_f64).ok_or_else(|| bad("alpha"))?;
        let dropout = json.get("dropout").and_then(Value::as_f64).ok_or_else(|| bad("dropout"))?;
        let targets =
            parse_targets(json.get("targets")).map_err(|m| Error::Input(format!("`{method}` targets: {m}")))?;
        Ok(Self { r, alpha, dropout, targets })
    }
}

/// A tensor's bytes for the safetensors writer.
struct Raw {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Raw {
    fn of(tensor: &Tensor) -> Result<Self> {
        let tensor = tensor.to_device(Device::Cpu).contiguous();
        let numel = tensor.numel();
        let mut data = vec![0u8; numel * tensor.kind().elt_size_in_bytes()];
        tensor.f_copy_data_u8(&mut data, numel)?;
        let shape = tensor.size().iter().map(|&d| d as usize).collect();
        Ok(Self { dtype: tensor.kind().try_into()?, shape, data })
    }
}

impl safetensors::tensor::View for &Raw {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data[..]).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

impl LoraAdapter {
    /// The factor updates are scaled by: `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.config.alpha / self.config.r as f64
    }

    /// Reads a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        let json: Value = serde_json::from_str(&text).map_err(Error::json(&path))?;
        let (config, base_model) = LoraConfig::from_peft(&json, &path)?;
        let path = dir.join(WEIGHTS_FILE);
        let mut tensors = BTreeMap::new();
        for (key, tensor) in Tensor::read_safetensors(&path)? {
            let name = key
                .strip_prefix(PREFIX)
                .ok_or_else(|| Error::UnexpectedTensor { path: path.clone(), key: key.clone() })?;
            tensors.insert(name.to_string(), tensor);
        }
        let adapter = Self { config, base_model, tensors };
        adapter.check(&path)?;
        Ok(adapter)
    }

    /// Checks that every tensor is an A or B of a targeted module, shaped for rank `r`, and
    /// that A and B come in pairs; `path` names the source in errors.
    fn check(&self, path: &Path) -> Result<()> {
        let r = self.config.r;
        for (name, tensor) in &self.tensors {
            let key = format!("{PREFIX}{name}");
            let parsed = parse_name(name).filter(|(_, site, _)| self.config.targets.contains(site));
            let Some((_, _, factor)) = parsed else { return Err(Error::UnexpectedTensor { path: path.into(), key }) };
            let (size, other) = (tensor.size(), if factor == Factor::A { "B" } else { "A" });
            let fits = size.len() == 2 && if factor == Factor::A { size[0] == r } else { size[1] == r };
            if !fits {
                let expected = if factor == Factor::A { vec![r, -1] } else { vec![-1, r] };
                return Err(Error::Shape { path: path.into(), key, expected, found: size });
            }
            let twin = format!("{}.lora_{other}.weight", &name[..name.len() - ".lora_A.weight".len()]);
            if !self.tensors.contains_key(&twin) {
                return Err(Error::MissingTensor { path: path.into(), key: format!("{PREFIX}{twin}") });
            }
        }
        if self.tensors.is_empty() {
            return Err(Error::MissingTensor { path: path.into(), key: format!("{PREFIX}*.lora_A.weight") });
        }
        Ok(())
    }

    /// Writes PEFT's two files into `dir` (created if needed).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let weights = dir.join(WEIGHTS_FILE);
        self.check(&weights)?;
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let config = dir.join(CONFIG_FILE);
        let text =
            serde_json::to_string_pretty(&self.config.to_peft(&self.base_model)).map_err(Error::json(&config))?;
        std::fs::write(&config, text).map_err(Error::io(&config))?;
        let raw: Vec<(String, Raw)> =
            self.tensors.iter().map(|(n, t)| Ok((format!("{PREFIX}{n}"), Raw::of(t)?))).collect::<Result<_>>()?;
        let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
        safetensors::tensor::serialize_to_file(raw.iter().map(|(n, r)| (n, r)), &metadata, &weights)
            .map_err(|err| Error::Torch(TchError::SafeTensorError { path: weights.display().to_string(), err }))
    }

    /// Adds `alpha/r · B·A` to each adapted weight of `model`, so that it computes what the
    /// adapted model computes without hooks. Every shape is checked before anything changes.
    pub fn merge_into(&self, model: &Model) -> Result<()> {
        let vars = model.vs.variables();
        let origin = PathBuf::from(&model.origin.id);
        let mut updates = Vec::new();
        for (name, a) in &self.tensors {
            let Some(module) = name.strip_suffix(".lora_A.weight") else { continue };
            let b_name = format!("{module}.lora_B.weight");
            let b =
                self.tensors.get(&b_name).ok_or_else(|| Error::MissingTensor { path: origin.clone(), key: b_name })?;
            let key = format!("{module}.weight");
            let weight =
                vars.get(&key).ok_or_else(|| Error::MissingTensor { path: origin.clone(), key: key.clone() })?;
            let delta = b.to_kind(Kind::Float).matmul(&a.to_kind(Kind::Float)) * self.scale(); // (out, in)
            if delta.size() != weight.size() {
                return Err(Error::Shape { path: origin, key, expected: weight.size(), found: delta.size() });
            }
            updates.push((weight.shallow_clone(), delta));
        }
        tch::no_grad(|| {
            for (mut weight, delta) in updates {
                let delta = delta.to_device(weight.device());
                let merged = weight.to_kind(Kind::Float) + delta;
                weight.f_copy_(&merged.to_kind(weight.kind()))?;
            }
            Ok(())
        })
    }

    /// The LoRA parameters of adapter `spec` in `run` (its hyperparameters are the plugin's
    /// defaults overridden by `spec.config`, as the run created it).
    pub fn from_run(run: &MethodRun, registry: &Registry, spec: &MethodSpec) -> Result<Self> {
        let mut config = registry.find(&spec.name, Role::Adapter)?.config_defaults.clone();
        if let (Value::Object(config), Value::Object(user)) = (&mut config, &spec.config) {
            config.extend(user.clone());
        }
        let config = LoraConfig::from_plugin(&config, &spec.name)?;
        let store = run.state.stores.get(&spec.name);
        let store =
            store.ok_or_else(|| Error::Input(format!("method `{}` created no parameters in this run", spec.name)))?;
        let tensors = store.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
        let adapter = Self { config, base_model: run.model.origin.id.clone(), tensors };
        adapter.check(Path::new(&spec.name))?;
        Ok(adapter)
    }

    /// The `lora` plugin with this adapter's hyperparameters, to create a run it loads into.
    pub fn method_spec(&self) -> MethodSpec {
        let targets: Vec<&str> = self.config.targets.iter().map(|s| s.name()).collect();
        let c = &self.config;
        MethodSpec {
            name: "lora".into(),
            config: json!({ "r": c.r, "alpha": c.alpha, "dropout": c.dropout, "targets": targets }),
        }
    }

    /// Copies A and B into the parameters of adapter `method` in `run`, which must have exactly
    /// these names and shapes (a run created from [`Self::method_spec`] on the same model shape).
    pub fn copy_into(&self, run: &MethodRun, method: &str) -> Result<()> {
        let mismatch = |what: String| Error::Input(format!("the adapter does not fit `{method}` in this run: {what}"));
        let store = run.state.stores.get(method).ok_or_else(|| mismatch("it created no parameters".into()))?;
        let vars = store.variables();
        if let Some(key) = vars.keys().find(|k| !self.tensors.contains_key(*k)) {
            return Err(mismatch(format!("the adapter has no `{key}`")));
        }
        let mut pairs = Vec::with_capacity(self.tensors.len());
        for (name, tensor) in &self.tensors {
            let var = vars.get(name).ok_or_else(|| mismatch(format!("the run has no `{name}`")))?;
            if var.size() != tensor.size() {
                return Err(mismatch(format!("`{name}` is {:?} here, {:?} in the run", tensor.size(), var.size())));
            }
            pairs.push((var.shallow_clone(), tensor));
        }
        tch::no_grad(|| {
            for (mut var, tensor) in pairs {
                var.f_copy_(&tensor.to_kind(var.kind()).to_device(var.device()))?;
            }
            Ok(())
        })
    }
}
