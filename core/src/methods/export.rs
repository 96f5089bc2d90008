//! Adapters' files: a folder holding `adapter_config.json` and `adapter_model.safetensors`, the
//! layout HF PEFT writes (<https://github.com/huggingface/peft>), so `PeftModel.from_pretrained`
//! loads an adapter a run exported and ftlab runs an adapter PEFT made.
//!
//! What the files mean belongs to the method: it writes them ([`ftlab_sdk::Method::export`]),
//! derives its hyperparameters from the config and reads the tensors back
//! ([`ftlab_sdk::Method::config_from_export`], [`ftlab_sdk::Method::import`]), and says how to
//! merge itself ([`ftlab_sdk::Method::merged_deltas`]). The core only moves the files and finds
//! the method by the config's `peft_type`, the format tag the method declares.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ftlab_registry::Registry;
use ftlab_sdk::{TaskInfo, Tensors};
use serde_json::Value;
use tch::{Device, TchError, Tensor};

use super::{load_adapters, HostState, Loaded, MethodRun, MethodSpec};
use crate::error::{Error, Result};
use crate::model::Model;

/// The config file's name.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file's name.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// An adapter's two files, in memory.
#[derive(Debug)]
pub struct AdapterFiles {
    /// `adapter_config.json`.
    pub config: Value,
    /// `adapter_model.safetensors`, by tensor name.
    pub tensors: Vec<(String, Tensor)>,
}

impl AdapterFiles {
    /// Reads the folder `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        let config = serde_json::from_str(&text).map_err(Error::json(&path))?;
        let tensors = Tensor::read_safetensors(dir.join(WEIGHTS_FILE))?;
        Ok(Self { config, tensors })
    }

    /// Writes both files into `dir` (created if needed); the weights with safetensors' `format:
    /// pt` metadata, which PEFT's loader expects.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let config = dir.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(&self.config).map_err(Error::json(&config))?;
        std::fs::write(&config, text).map_err(Error::io(&config))?;
        let weights = dir.join(WEIGHTS_FILE);
        let raw: Vec<(&String, Raw)> = self.tensors.iter().map(|(n, t)| Ok((n, Raw::of(t)?))).collect::<Result<_>>()?;
        let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
        safetensors::tensor::serialize_to_file(raw.iter().map(|(n, r)| (n, r)), &metadata, &weights)
            .map_err(|err| Error::Torch(TchError::SafeTensorError { path: weights.display().to_string(), err }))
    }

    /// The format tag (`peft_type`) that names the method reading these files.
    fn export_type(&self, dir: &Path) -> Result<&str> {
        self.config.get("peft_type").and_then(Value::as_str).ok_or_else(|| Error::Config {
            path: dir.join(CONFIG_FILE),
            key: "peft_type".into(),
            message: "missing: it names the adapter method that reads these files".into(),
        })
    }
}

/// The adapter method, with the hyperparameters, that reproduces the adapter `files` from `dir`.
pub fn adapter_spec(registry: &Registry, files: &AdapterFiles, dir: &Path) -> Result<MethodSpec> {
    let name = registry.find_export_type(files.export_type(dir)?).map_err(|e| in_file(dir, e))?.name.clone();
    let config = registry.config_from_export(&name, &files.config.to_string()).map_err(|e| in_file(dir, e))?;
    Ok(MethodSpec { name, config })
}

/// An error about the adapter folder `dir`, naming its config file.
fn in_file(dir: &Path, error: impl std::fmt::Display) -> Error {
    Error::AdapterFiles { path: dir.join(CONFIG_FILE), message: error.to_string() }
}

impl Loaded {
    /// The adapter's files, if the method exports any.
    pub fn export(&self) -> Result<Option<AdapterFiles>> {
        let reply = Tensors::from_message(self.object.export().into_result()?);
        let mut reply = reply.map_err(|e| Error::MethodReply { method: self.name.clone(), message: e.to_string() })?;
        let Some(config) = reply.json.get_mut("config").map(Value::take) else { return Ok(None) };
        Ok(Some(AdapterFiles { config, tensors: std::mem::take(&mut reply.tensors).into_iter().collect() }))
    }

    /// Copies the tensors of `files` into the adapter's parameters.
    pub fn import(&mut self, files: AdapterFiles) -> Result<()> {
        let mut weights = Tensors::new();
        weights.tensors.extend(files.tensors);
        Ok(self.object.import(weights.into_message()).into_result()?)
    }

    /// Adds the adapter's merged update to each weight of `model` it names, so the plain model
    /// computes what the hooked one does. Every name and shape is checked before anything changes.
    pub fn merge_into(&self, model: &Model) -> Result<()> {
        let deltas = Tensors::from_message(self.object.merged_deltas().into_result()?);
        let deltas = deltas.map_err(|e| Error::MethodReply { method: self.name.clone(), message: e.to_string() })?;
        let (vars, origin) = (model.vs.variables(), PathBuf::from(&model.origin.id));
        let mut updates = Vec::with_capacity(deltas.tensors.len());
        for (key, delta) in deltas.tensors {
            let weight =
                vars.get(&key).ok_or_else(|| Error::MissingTensor { path: origin.clone(), key: key.clone() })?;
            if delta.size() != weight.size() {
                return Err(Error::Shape { path: origin, key, expected: weight.size(), found: delta.size() });
            }
            updates.push((weight.shallow_clone(), delta));
        }
        tch::no_grad(|| {
            for (mut weight, delta) in updates {
                let merged = weight.to_kind(tch::Kind::Float) + delta.to_device(weight.device());
                weight.f_copy_(&merged.to_kind(weight.kind()))?;
            }
            Ok(())
        })
    }
}

impl MethodRun<'_> {
    /// Writes every exporting adapter's files under `dir`: `adapter/` when one adapter exports,
    /// `adapter-<name>/` for each when several do.
    pub fn export_adapters(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut exports = Vec::new();
        for adapter in &self.adapters {
            if let Some(files) = adapter.export()? {
                exports.push((adapter.name.as_str(), files));
            }
        }
        let single = exports.len() == 1;
        let mut folders = Vec::new();
        for (name, files) in exports {
            let folder = if single { dir.join("adapter") } else { dir.join(format!("adapter-{name}")) };
            files.save(&folder)?;
            folders.push(folder);
        }
        Ok(folders)
    }
}

/// Merges the adapter saved in `dir` into `model`'s weights: the method named by its
/// `peft_type`, created with the hyperparameters it derives from the config, loaded with the
/// tensors, asked for its merged update.
pub fn merge_adapter_dir(model: &Model, registry: &Registry, dir: &Path) -> Result<()> {
    let (_state, adapter) = load_adapter_dir(model, registry, dir)?;
    adapter.merge_into(model)
}

/// The adapter in `dir`, created on `model` by the plugin its `peft_type` names and holding the
/// folder's weights, with the state its parameters live in: to run hooked (an adapter that is
/// no weight update, such as a soft prompt, cannot be merged).
pub fn load_adapter_dir(model: &Model, registry: &Registry, dir: &Path) -> Result<(HostState, Loaded)> {
    let files = AdapterFiles::load(dir)?;
    let spec = adapter_spec(registry, &files, dir)?;
    let task = TaskInfo { name: String::new(), label_words: Vec::new(), label_token_ids: Vec::new() };
    let mut state = HostState::new(task, 0);
    let mut adapter = load_adapters(model, registry, &[spec], &mut state)?.remove(0);
    adapter.import(files).map_err(|e| in_file(dir, e))?;
    Ok((state, adapter))
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
