//! The OPT model family: configuration, checkpoints, sources, the network and its hook sites.
//!
//! [`Model::load`] is the one entry point: it resolves a model name (the embedded `tiny-opt`, a
//! folder, or a hub id through the HF cache), builds [`OptForCausalLM`] in the requested dtype on
//! the requested device, fills it from the checkpoint, and loads the tokenizer beside it.

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod hooks;
pub mod opt;
pub mod placement;
pub mod source;
pub mod tiny;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::Device;

pub use cache::KvCache;
pub use checkpoint::{WeightFiles, WeightsFormat};
pub use config::OptConfig;
pub use hooks::{ForwardHooks, Site};
pub use opt::{Checkpointing, ForwardInput, ForwardOutput, LogitsAt, OptForCausalLM};
pub use source::{ModelFiles, ModelSpec};

use crate::device::Dtype;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// How to load a model.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Where the weights live.
    pub device: Device,
    /// Compute precision; checkpoints of any dtype are converted to it.
    pub dtype: Dtype,
    /// Prefer this weights format when a folder holds several.
    pub weights_format: Option<WeightsFormat>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, dtype: Dtype::F32, weights_format: None }
    }
}

/// Where a loaded model came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelOrigin {
    /// The name the user gave (`tiny-opt`, a folder, `org/name`).
    pub id: String,
    /// Hub commit hash, when loaded from the cache.
    pub revision: Option<String>,
    /// Weight files read; empty for the embedded model.
    pub weight_files: Vec<PathBuf>,
}

/// A loaded OPT model: its variables, the network, the tokenizer and where it came from.
pub struct Model {
    /// The base model's variables, named as HF checkpoint keys.
    pub vs: VarStore,
    /// The network.
    pub net: OptForCausalLM,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Provenance, for run records.
    pub origin: ModelOrigin,
}

impl Model {
    /// The parameters that hold a NaN or an infinity (a damaged or diverged checkpoint).
    pub fn non_finite_parameters(&self) -> Vec<String> {
        let finite = |t: &tch::Tensor| bool::try_from(t.isfinite().all()).unwrap_or(false);
        self.vs.variables().into_iter().filter(|(_, t)| !finite(t)).map(|(name, _)| name).collect()
    }

    /// Loads `spec` (see [`ModelSpec::parse`]).
    pub fn load(spec: &str, options: LoadOptions) -> Result<Self> {
        let files = match ModelSpec::parse(spec)? {
            ModelSpec::Embedded { random: false } => return Self::embedded(options),
            ModelSpec::Embedded { random: true } => return Self::embedded_random(options),
            ModelSpec::Dir(dir) => ModelFiles::in_dir(&dir, options.weights_format)?,
            ModelSpec::Hub { repo, revision } => ModelFiles::from_hub(&repo, &revision, options.weights_format)?,
        };
        Self::from_files(spec, &files, options)
    }

    /// Loads a model from files found on disk.
    pub fn from_files(id: &str, files: &ModelFiles, options: LoadOptions) -> Result<Self> {
        let config = OptConfig::from_file(&files.config)?;
        let tokenizer = if Tokenizer::files_in(&files.tokenizer_dir) {
            Tokenizer::from_dir(&files.tokenizer_dir)?
        } else {
            Tokenizer::absent(&files.tokenizer_dir, config.bos_token_id, config.pad_token_id)
        };
        // Zero init: every value is overwritten by the checkpoint, and zeros are free to make.
        let (vs, net) = Self::build(&OptConfig { init_std: 0.0, ..config.clone() }, options);
        checkpoint::load_into(&vs, &files.weights)?;
        let net = OptForCausalLM { config, ..net };
        let origin =
            ModelOrigin { id: id.into(), revision: files.revision.clone(), weight_files: files.weights.files.clone() };
        Self::checked(vs, net, tokenizer, origin)
    }

    /// The embedded tiny model, pretrained to learn in context (`tiny-opt`).
    pub fn embedded(options: LoadOptions) -> Result<Self> {
        let config = tiny::config()?;
        let (vs, net) = Self::build(&OptConfig { init_std: 0.0, ..config.clone() }, options);
        checkpoint::load_bytes_into(&vs, tiny::WEIGHTS, Path::new("<embedded tiny-opt weights>"))?;
        let net = OptForCausalLM { config, ..net };
        let origin = ModelOrigin { id: source::EMBEDDED.into(), revision: None, weight_files: vec![] };
        Self::checked(vs, net, tiny::tokenizer()?, origin)
    }

    /// The embedded tiny model randomly initialised from [`tiny::SEED`] (`tiny-opt-random`).
    pub fn embedded_random(options: LoadOptions) -> Result<Self> {
        let config = tiny::config()?;
        tch::manual_seed(tiny::SEED);
        let (vs, net) = Self::build(&config, options);
        let origin = ModelOrigin { id: source::EMBEDDED_RANDOM.into(), revision: None, weight_files: vec![] };
        Self::checked(vs, net, tiny::tokenizer()?, origin)
    }

    /// A randomly initialised model of `config` (HF's init), for benchmarks and tests.
    pub fn random(config: &OptConfig, tokenizer: Tokenizer, seed: i64, options: LoadOptions) -> Result<Self> {
        tch::manual_seed(seed);
        let (vs, net) = Self::build(config, options);
        Self::checked(vs, net, tokenizer, ModelOrigin { id: "random".into(), revision: None, weight_files: vec![] })
    }

    fn build(config: &OptConfig, options: LoadOptions) -> (VarStore, OptForCausalLM) {
        let mut vs = VarStore::new(options.device);
        vs.set_kind(options.dtype.kind());
        let net = OptForCausalLM::new(&vs.root(), config);
        (vs, net)
    }

    fn checked(vs: VarStore, net: OptForCausalLM, tokenizer: Tokenizer, origin: ModelOrigin) -> Result<Self> {
        fits(&origin.id, &tokenizer, &net)?;
        Ok(Self { vs, net, tokenizer, origin })
    }

    /// Uses `tokenizer` (e.g. `--tokenizer`, for a folder without tokenizer files), checking
    /// that the embedding has a row for every token.
    pub fn set_tokenizer(&mut self, tokenizer: Tokenizer) -> Result<()> {
        fits(&self.origin.id, &tokenizer, &self.net)?;
        self.tokenizer = tokenizer;
        Ok(())
    }

    /// Writes the model as an HF folder — `config.json`, `model.safetensors` (HF key names, the
    /// compute dtype) and `tokenizer.json` (when it has a tokenizer) — that [`Model::load`] and
    /// `transformers` read.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let config = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.net.config.to_hf_json()).unwrap_or_default();
        std::fs::write(&config, text).map_err(Error::io(&config))?;
        let weights = dir.join("model.safetensors");
        self.vs.save(&weights)?;
        if !self.tokenizer.is_present() {
            return Ok(());
        }
        self.tokenizer.save(&dir.join("tokenizer.json"))
    }

    /// Spreads the decoder layers over `devices` (the first keeps the embeddings, final layer
    /// norm and tied LM head), balanced by weight bytes as transformers' `device_map="auto"`
    /// does, whole layers in order; moves their weights and returns the plan. Per-device memory
    /// is not read (libtorch offers no free-memory query through tch): the plan balances bytes.
    pub fn spread(&mut self, devices: &[Device]) -> Result<placement::Placement> {
        let layers = self.net.layers.len();
        let layer_of = |name: &str| {
            let rest = name.strip_prefix("model.decoder.layers.")?;
            rest.split('.').next()?.parse::<usize>().ok().filter(|&i| i < layers)
        };
        let bytes = |t: &tch::Tensor| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
        let (mut layer_bytes, mut rest) = (vec![0u64; layers], 0u64);
        for (name, tensor) in self.vs.variables() {
            match layer_of(&name) {
                Some(i) => layer_bytes[i] += bytes(&tensor),
                None => rest += bytes(&tensor),
            }
        }
        let unlimited = vec![u64::MAX / devices.len().max(1) as u64; devices.len()];
        let plan = placement::plan(rest, &layer_bytes, &unlimited)?;
        for (name, mut tensor) in self.vs.variables() {
            if let Some(i) = layer_of(&name) {
                let device = devices[plan.layers[i]];
                if tensor.device() != device {
                    tensor.set_data(&tensor.to_device(device));
                }
            }
        }
        self.net.spread = Some(opt::Spread { devices: devices.to_vec(), placement: plan.clone() });
        Ok(plan)
    }

    /// The compute device.
    pub fn device(&self) -> Device {
        self.vs.device()
    }
}

/// A model's tokenizer alone (`--tokenizer`, `ftlab data`): the embedded one, a folder's, or a
/// hub model's from the HF cache. No weights are read and nothing is downloaded.
pub fn load_tokenizer(spec: &str) -> Result<Tokenizer> {
    match ModelSpec::parse(spec)? {
        ModelSpec::Embedded { .. } => tiny::tokenizer(),
        ModelSpec::Dir(dir) => Tokenizer::from_dir(&dir),
        ModelSpec::Hub { repo, revision } => {
            let hub = crate::hub::Hub::from_env();
            let snapshot = hub.snapshot(crate::hub::RepoKind::Model, &repo, &revision).ok_or_else(|| {
                Error::Input(format!(
                    "model `{repo}` is not in the HF cache at {}: fetch its vocab.json and merges.txt first \
                     (e.g. `huggingface-cli download {repo} vocab.json merges.txt`)",
                    hub.cache.display()
                ))
            })?;
            Tokenizer::from_dir(&snapshot)
        }
    }
}

/// Checks that `net`'s embedding has a row for each of `tokenizer`'s tokens.
fn fits(id: &str, tokenizer: &Tokenizer, net: &OptForCausalLM) -> Result<()> {
    if tokenizer.vocab_size() as i64 > net.config.vocab_size {
        return Err(Error::Input(format!(
            "model `{id}`: the tokenizer has {} tokens but the embedding only {} rows",
            tokenizer.vocab_size(),
            net.config.vocab_size
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use tch::Tensor;

    /// A model spread over "two devices" that are both the CPU computes exactly what it does on
    /// one, and hidden states change device only at the plan's boundaries: into the second half
    /// of the layers, and back for the head (with and without a cache).
    #[test]
    fn a_spread_model_equals_the_single_device_one_and_moves_only_at_boundaries() {
        let single = Model::embedded_random(LoadOptions::default()).unwrap();
        let mut spread = Model::embedded_random(LoadOptions::default()).unwrap();
        let plan = spread.spread(&[Device::Cpu, Device::Cpu]).unwrap();
        // The embeddings (token table, tied head, positions) weigh 2.6 layers of the tiny model:
        // balanced by bytes, the first device holds them and one layer.
        assert_eq!(plan.layers, [0, 1, 1, 1]);
        let ids = Tensor::from_slice(&single.tokenizer.encode("The cat sat on the mat.").unwrap()).unsqueeze(0);
        let logits = |m: &Model, cache: bool| {
            let input = ForwardInput { input_ids: Some(&ids), use_cache: cache, ..Default::default() };
            tch::no_grad(|| m.net.forward(input)).unwrap().logits.unwrap()
        };
        for cache in [false, true] {
            let before = spread.net.hops.load(Ordering::Relaxed);
            assert!(logits(&single, cache).equal(&logits(&spread, cache)), "cache={cache}");
            assert_eq!(spread.net.hops.load(Ordering::Relaxed) - before, plan.transfers());
        }
        assert_eq!(plan.transfers(), 2);
        assert_eq!(single.net.hops.load(Ordering::Relaxed), 0);
    }
}
