//! `lift`: low-rank-informed sparse fine-tuning (Liu et al., 2025, "LIFT the Veil for the
//! Truth: Principal Weights Emerge after Rank Reduction for Reasoning-Focused Supervised
//! Fine-Tuning", <https://arxiv.org/abs/2506.00772>), an adapter.
//!
//! In every targeted linear, only the *principal weights* train: the entries where the
//! rank-r′ approximation of the pretrained matrix is largest in magnitude (see [`mask`]), as
//! many as a LoRA of rank `lora_rank` would train there, `(in + out)·lora_rank`, as the paper
//! matches them (or a `density`). The update lives in a vector of those entries, so the
//! optimizer keeps state for them alone — LIFT's point is memory. The linear computes
//! `Wx + b + Sx` with `S` the sparse update; merged, `S` is added to `W`.
//!
//! Follows the paper's Eq. 2, the *largest* entries. (The authors' released code, at
//! c4a679d, passes a mask type that makes `topk` keep the smallest ones.) The mask is drawn
//! once from the pretrained weights: LIFT's refresh every N steps (200 in its code), which
//! moves optimizer state between masks, is not offered. Saved as an ftlab-native adapter
//! (`peft_type = "LIFT"`; PEFT has no LIFT) with PEFT's tensor naming: per linear,
//! `base_model.model.<module>.lift_indices` (flat, row-major) and `….lift_values`.

pub mod mask;

use std::collections::BTreeMap;

use ftlab_sdk::prelude::*;
use ftlab_sdk::serde_json::{self, json, Value};

/// Hyperparameters, set in an experiment file under `lift`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Rank r′ of the approximation the mask is read from (`filter_rank`); default 128, the
    /// authors' code's (capped at a matrix's own rank).
    pub rank: i64,
    /// Entries trained per matrix: as many as LoRA of this rank trains there,
    /// `(in + out)·lora_rank`, capped at the matrix's size; default 16.
    pub lora_rank: i64,
    /// Instead of `lora_rank`: this share of every matrix's entries.
    pub density: Option<f64>,
    /// Linears trained in every layer: any of q_proj, k_proj, v_proj, out_proj, fc1, fc2;
    /// default all six (the paper's every linear but the LM head).
    pub targets: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        let targets = Site::LINEAR.iter().map(|s| s.name().to_string()).collect();
        Self { rank: 128, lora_rank: 16, density: None, targets }
    }
}

impl Config {
    /// Entries trained in a `[out, in]` matrix.
    fn count(&self, out: i64, input: i64) -> i64 {
        match self.density {
            Some(density) => mask::count(out * input, density),
            None => ((out + input) * self.lora_rank).min(out * input),
        }
    }
}

/// One sparsely trained linear: where its trained entries are and their update.
struct Entries {
    /// Flat row-major indices into the `[out, in]` weight, int64 `[k]`, ascending.
    indices: Tensor,
    /// The update of each, `[k]`, zero at first.
    values: Tensor,
    shape: [i64; 2],
}

impl Entries {
    /// The dense update `S` `[out, in]`.
    fn dense(&self) -> Tensor {
        let flat = Tensor::zeros([self.shape[0] * self.shape[1]], (self.values.kind(), self.values.device()));
        flat.index_put(&[Some(&self.indices)], &self.values, false).view(self.shape)
    }
}

/// The trained entries of every targeted linear.
pub struct Lift {
    entries: BTreeMap<(i64, Site), Entries>,
    config: Config,
    targets: Vec<Site>,
    base_model: String,
}

impl Lift {
    /// Every saved tensor by name: `model.decoder.layers.{i}.<module>.lift_indices` and
    /// `….lift_values`.
    fn tensors(&self) -> impl Iterator<Item = (String, &Tensor)> {
        self.entries.iter().flat_map(|(&(layer, site), e)| {
            let path = site.path(layer);
            [(format!("{path}.lift_indices"), &e.indices), (format!("{path}.lift_values"), &e.values)]
        })
    }
}

impl Method for Lift {
    const NAME: &'static str = "lift";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "LIFT: sparse fine-tuning of the principal weights, the largest entries of \
        each matrix's rank-r' approximation, with optimizer state for them alone (https://arxiv.org/abs/2506.00772).";
    type Config = Config;
    const EXPORT_TYPE: Option<&'static str> = Some("LIFT");

    fn new(config: Config, host: &mut Host) -> Result<Self> {
        if config.rank < 1 || config.lora_rank < 1 {
            return Err(Error::msg(format!(
                "lift: rank and lora_rank must be at least 1, not {} and {}",
                config.rank, config.lora_rank
            )));
        }
        if let Some(density) = config.density.filter(|d| !(*d > 0.0 && *d <= 1.0)) {
            return Err(Error::msg(format!("lift: density must be in (0, 1], not {density}")));
        }
        let targets = ftlab_sdk::peft::named_sites("targets", &config.targets)?;
        let model = host.model()?;
        let mut entries = BTreeMap::new();
        for layer in 0..model.num_hidden_layers {
            for &site in &targets {
                let path = site.path(layer);
                let key = format!("{path}.weight");
                let shape = model.parameters.get(&key).ok_or_else(|| Error::msg(format!("no base weight {key}")))?;
                let shape = [shape[0], shape[1]];
                let weight = host.parameter(&key, &shape, Init::Base)?;
                let count = config.count(shape[0], shape[1]);
                let indices = mask::principal_entries(&weight, config.rank, count).to_device(weight.device());
                let values = host.parameter(&format!("{path}.lift_values"), &[count], Init::Zeros)?;
                entries.insert((layer, site), Entries { indices, values, shape });
            }
        }
        Ok(Self { entries, config, targets, base_model: model.name })
    }

    fn sites(&self) -> Result<Vec<Site>> {
        Ok(self.targets.clone())
    }

    /// `S` is made dense for the product: libtorch's sparse × dense product was 14× slower on
    /// CPU at opt-125m's shapes and LIFT's density, so activations, not optimizer state, set
    /// its peak memory.
    fn linear(&self, layer: i64, site: Site, input: &Tensor, output: Tensor) -> Result<Tensor> {
        let Some(entries) = self.entries.get(&(layer, site)) else { return Ok(output) };
        Ok(output + input.matmul(&entries.dense().to_kind(input.kind()).tr()))
    }

    fn merged_deltas(&self) -> Result<Vec<(String, Tensor)>> {
        let deltas =
            self.entries.iter().map(|(&(layer, site), e)| (format!("{}.weight", site.path(layer)), e.dense().detach()));
        Ok(deltas.collect())
    }

    fn config_from_export(adapter_config: &Value) -> Result<Config> {
        let config = adapter_config.get("lift").cloned().unwrap_or_default();
        serde_json::from_value(config).map_err(|e| ftlab_sdk::peft::bad_key("lift", e))
    }

    fn export(&self) -> Result<Option<Export>> {
        let config = json!({
            "peft_type": "LIFT",
            "base_model_name_or_path": self.base_model,
            "lift": self.config,
        });
        let tensors =
            self.tensors().map(|(name, t)| (format!("{}{name}", ftlab_sdk::peft::PREFIX), t.detach())).collect();
        Ok(Some(Export { config, tensors }))
    }

    /// The saved indices are copied over the ones drawn here (another CPU's SVD may round a
    /// near-tie the other way), and the values.
    fn import(&mut self, weights: &Tensors) -> Result<()> {
        ftlab_sdk::peft::import(self.tensors(), weights)
    }
}

ftlab_sdk::export_library!(Lift);
