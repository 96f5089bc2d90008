//! Reading HF checkpoints into a model's variable store.
//!
//! A model folder holds one of: `model.safetensors`; sharded safetensors with
//! `model.safetensors.index.json`; `pytorch_model.bin` (a `torch.save` pickle, fp16 on the hub);
//! or sharded `.bin` with `pytorch_model.bin.index.json`. Keys start with `model.decoder.`
//! (125m, 1.3b, 2.7b) or `decoder.` (350m, 6.7b, …); `lm_head.weight` is tied to the embeddings
//! and may be absent. Tensors are copied shard by shard into the store, converting dtype and
//! device, so peak memory is the model plus one shard.

pub mod pickle;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::nn::VarStore;
use tch::Tensor;

use crate::error::{Error, Result};

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    /// `*.safetensors`.
    Safetensors,
    /// `pytorch_model*.bin` (`torch.save` zip pickle).
    Pickle,
}

impl WeightsFormat {
    /// The single-file and index names HF uses for this format.
    pub fn file_names(self) -> (&'static str, &'static str) {
        match self {
            Self::Safetensors => ("model.safetensors", "model.safetensors.index.json"),
            Self::Pickle => ("pytorch_model.bin", "pytorch_model.bin.index.json"),
        }
    }

    /// Parses `safetensors` or `bin`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "safetensors" => Some(Self::Safetensors),
            "bin" | "pickle" | "pytorch" => Some(Self::Pickle),
            _ => None,
        }
    }
}

/// HF's shard index: which file holds which tensor.
#[derive(Debug, Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// The weight files of one checkpoint.
#[derive(Debug, Clone)]
pub struct WeightFiles {
    /// Storage format.
    pub format: WeightsFormat,
    /// The files, in shard order.
    pub files: Vec<PathBuf>,
}

impl WeightFiles {
    /// Finds the weights in `dir`: safetensors before pickle unless `prefer` says otherwise,
    /// a single file before an index.
    pub fn discover(dir: &Path, prefer: Option<WeightsFormat>) -> Result<Self> {
        let order = match prefer {
            Some(WeightsFormat::Pickle) => [WeightsFormat::Pickle, WeightsFormat::Safetensors],
            _ => [WeightsFormat::Safetensors, WeightsFormat::Pickle],
        };
        for format in order {
            let (single, index) = format.file_names();
            if dir.join(single).is_file() {
                return Ok(Self { format, files: vec![dir.join(single)] });
            }
            if dir.join(index).is_file() {
                return Ok(Self { format, files: shard_files(&dir.join(index))? });
            }
        }
        Err(Error::NoWeights { path: dir.into() })
    }
}

/// The distinct shard file names an HF index lists, in order.
pub fn shard_files_named(index_path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index_path).map_err(Error::io(index_path))?;
    let index: ShardIndex = serde_json::from_str(&text).map_err(Error::json(index_path))?;
    let names: BTreeSet<String> = index.weight_map.into_values().collect();
    Ok(names.into_iter().collect())
}

/// The shard files an index names, resolved beside the index; each must exist.
pub fn shard_files(index_path: &Path) -> Result<Vec<PathBuf>> {
    let dir = index_path.parent().unwrap_or(Path::new("."));
    shard_files_named(index_path)?
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            if path.is_file() {
                Ok(path)
            } else {
                let why = format!("shard listed in {} is missing", index_path.display());
                Err(Error::Io { path, source: std::io::Error::new(std::io::ErrorKind::NotFound, why) })
            }
        })
        .collect()
}

/// Reads every tensor of one weight file.
pub fn read_file(path: &Path, format: WeightsFormat) -> Result<Vec<(String, Tensor)>> {
    match format {
        // Sorted, so that loading and its errors do not depend on hash order.
        WeightsFormat::Safetensors => Tensor::read_safetensors(path).map(sorted).map_err(|e| match e {
            tch::TchError::SafeTensorError { .. } => Error::Io {
                path: path.into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not a valid safetensors file: {e}"),
                ),
            },
            other => Error::Torch(other),
        }),
        WeightsFormat::Pickle => Ok(pickle::read_state_dict(path)?),
    }
}

fn sorted(mut tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// The variable name of a checkpoint key: `decoder.*` gains the `model.` prefix; `lm_head.weight`
/// maps to nothing because the head is tied to `model.decoder.embed_tokens.weight`.
pub fn canonical_name(key: &str) -> Option<String> {
    match key {
        "lm_head.weight" => None,
        k if k.starts_with("decoder.") => Some(format!("model.{k}")),
        k => Some(k.to_string()),
    }
}

/// Copies every checkpoint tensor into the variable of the same name in `vs`, checking shapes,
/// converting dtype and device. Every variable must be filled and every tensor used.
pub fn load_into(vs: &VarStore, weights: &WeightFiles) -> Result<()> {
    let dir = weights.files.first().and_then(|f| f.parent()).unwrap_or(Path::new("."));
    let files = weights.files.iter().map(|file| Ok((file.clone(), read_file(file, weights.format)?)));
    fill(vs, files, dir)
}

/// [`load_into`] from a safetensors file held in memory (the embedded model's weights);
/// `origin` names it in errors.
pub fn load_bytes_into(vs: &VarStore, bytes: &[u8], origin: &Path) -> Result<()> {
    let invalid = |why: String| Error::Io {
        path: origin.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a valid safetensors file: {why}")),
    };
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| invalid(e.to_string()))?;
    let mut tensors = Vec::new();
    for (name, view) in file.tensors() {
        let kind = match view.dtype() {
            safetensors::Dtype::F32 => tch::Kind::Float,
            safetensors::Dtype::F16 => tch::Kind::Half,
            safetensors::Dtype::BF16 => tch::Kind::BFloat16,
            other => return Err(invalid(format!("tensor `{name}` has dtype {other:?}"))),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        tensors.push((name, Tensor::f_from_data_size(view.data(), &shape, kind)?));
    }
    fill(vs, std::iter::once(Ok((origin.to_path_buf(), sorted(tensors)))), origin)
}

/// Fills `vs` from `files` (each file's path and tensors); `dir` names a missing tensor's source.
fn fill(
    vs: &VarStore,
    files: impl Iterator<Item = Result<(PathBuf, Vec<(String, Tensor)>)>>,
    dir: &Path,
) -> Result<()> {
    let variables = vs.variables();
    let mut filled = BTreeSet::new();
    for file in files {
        let (file, tensors) = file?;
        for (key, tensor) in tensors {
            let Some(name) = canonical_name(&key) else { continue };
            let Some(var) = variables.get(&name) else {
                return Err(Error::UnexpectedTensor { path: file, key });
            };
            if var.size() != tensor.size() {
                return Err(Error::Shape { path: file, key, expected: var.size(), found: tensor.size() });
            }
            tch::no_grad(|| var.shallow_clone().f_copy_(&tensor))?;
            filled.insert(name);
        }
    }
    let mut missing: Vec<&String> = variables.keys().filter(|k| !filled.contains(*k)).collect();
    missing.sort();
    match missing.first() {
        Some(key) => Err(Error::MissingTensor { path: dir.into(), key: (*key).clone() }),
        None => Ok(()),
    }
}
