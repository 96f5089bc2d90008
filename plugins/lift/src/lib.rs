//! `lift`: low-rank-informed sparse fine-tuning (Liu et al., 2025, "LIFT the Veil for the
//! Truth: Principal Weights Emerge after Rank Reduction for Reasoning-Focused Supervised
//! Fine-Tuning", <https://arxiv.org/abs/2506.00772>), an adapter.
//!
//! In every targeted linear, only the *principal weights* train: the entries where the
//! rank-r′ approximation of the weight is largest in magnitude (see [`mask`]), as many as a
//! LoRA of rank `lora_rank` would train there, `(in + out)·lora_rank`, as the paper matches
//! them (or a `density`). The update lives in a vector of those entries, so the optimizer keeps
//! state for them alone — LIFT's point is memory. The linear computes `Wx + b + Sx` with `S`
//! the sparse update; merged, `S` is added to `W`.
//!
//! Every `refresh_every` optimizer steps the mask is drawn again from the current weight
//! `W + S`, as the authors' optimizer does (`update_masks` in zihanghliu/LIFT's
//! `src/sparseAdam.py`): entries that stay keep their update and Adam moments, new ones start
//! with zero moments, and the step count goes on. The update of an entry that leaves the mask
//! stays applied, frozen (a sparse list of such entries, kept apart from the base weights,
//! which never change). Their code refreshes after steps N−1, 2N−1, …; here after N, 2N, ….
//!
//! Follows the paper's Eq. 2, the *largest* entries. (The authors' released code, at
//! c4a679d, passes a mask type that makes `topk` keep the smallest ones.) Saved as an
//! ftlab-native adapter (`peft_type = "LIFT"`; PEFT has no LIFT) with PEFT's tensor naming:
//! per linear, the whole update `S` as `base_model.model.<module>.lift_indices` (flat,
//! row-major, ascending) and `….lift_values`.

pub mod mask;

use std::collections::{BTreeMap, BTreeSet};

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
    /// Optimizer steps between redraws of the mask from the current weights; default 200, the
    /// authors' scripts' `update_proj_gap`. 0: the mask drawn from the pretrained weights stays.
    pub refresh_every: usize,
}

impl Default for Config {
    fn default() -> Self {
        let targets = Site::LINEAR.iter().map(|s| s.name().to_string()).collect();
        Self { rank: 128, lora_rank: 16, density: None, targets, refresh_every: 200 }
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

/// One sparsely trained linear: where its trained entries are, their update, and the update
/// of entries that trained before a refresh moved the mask away from them.
struct Entries {
    /// The base weight `[out, in]` (frozen; the mask is drawn from it plus the update).
    base: Tensor,
    /// Flat row-major indices into the weight of the entries that train, int64 `[k]`,
    /// ascending.
    indices: Tensor,
    /// The update of each, `[k]`, zero at first.
    values: Tensor,
    /// Entries outside `indices` that trained before (int64, ascending) and their update.
    frozen: (Tensor, Tensor),
}

impl Entries {
    /// The whole update `S`, flat `[out·in]`. Every forward builds it, so the frozen entries
    /// are written only once a refresh has left some.
    fn flat(&self) -> Tensor {
        let mut flat = Tensor::zeros([self.base.numel() as i64], (self.values.kind(), self.values.device()));
        let (frozen_indices, frozen_values) = &self.frozen;
        if frozen_indices.numel() > 0 {
            flat = flat.index_put(&[Some(frozen_indices)], frozen_values, false);
        }
        flat.index_put(&[Some(&self.indices)], &self.values, false)
    }

    /// The whole update `S` `[out, in]`.
    fn dense(&self) -> Tensor {
        self.flat().view_as(&self.base)
    }

    /// Holds the update `total` (flat, detached): the entries at `indices` train on from their
    /// values in it; the rest of it stays applied, frozen.
    fn hold(&mut self, total: &Tensor) {
        let total = total.to_kind(self.values.kind());
        tch::no_grad(|| self.values.copy_(&total.index_select(0, &self.indices)));
        let rest = total.index_fill(0, &self.indices, 0.0);
        let frozen = rest.nonzero().reshape([-1]);
        let values = rest.index_select(0, &frozen);
        self.frozen = (frozen, values);
    }

    /// Redraws the mask from `W + S`; returns, for each new entry, its position in the old
    /// mask or -1 (where its optimizer moments come from).
    fn refresh(&mut self, rank: i64) -> Tensor {
        let total = self.flat().detach();
        let weight = &self.base + total.view_as(&self.base).to_kind(self.base.kind());
        let old =
            std::mem::replace(&mut self.indices, mask::principal_entries(&weight, rank, self.values.numel() as i64));
        self.indices = self.indices.to_device(old.device());
        let at =
            self.indices.searchsorted(&old, false, false, "left", None::<&Tensor>).clamp_max(old.numel() as i64 - 1);
        let from = at.where_self(&old.index_select(0, &at).eq_tensor(&self.indices), &at.full_like(-1));
        self.hold(&total);
        from
    }

    /// The whole update as the adapter file holds it: the entries that trained (ascending)
    /// and their update.
    fn whole(&self) -> [(&'static str, Tensor); 2] {
        let (entries, _) = Tensor::cat(&[&self.frozen.0, &self.indices], 0).sort(0, false);
        let values = self.flat().detach().index_select(0, &entries);
        [("lift_indices", entries), ("lift_values", values)]
    }

    /// Holds the whole update read as [`Entries::whole`] names it from `tensors` under `path`.
    fn hold_whole(&mut self, tensors: &Tensors, path: &str) -> Result<()> {
        let [indices, values] = ["lift_indices", "lift_values"].map(|n| tensors.get(&format!("{path}.{n}")));
        let (indices, values) = (indices?.to_device(self.values.device()), values?);
        let numel = self.base.numel() as i64;
        let in_range = bool::try_from(indices.ge(0).logical_and(&indices.lt(numel)).all()).unwrap_or(false);
        if indices.dim() != 1 || values.size() != indices.size() || !in_range {
            return Err(Error::msg(format!(
                "{path}: lift_indices {:?} and lift_values {:?} must be one value per index in 0..{numel}",
                indices.size(),
                values.size()
            )));
        }
        let flat = Tensor::zeros([numel], (self.values.kind(), self.values.device()));
        self.hold(&flat.index_put(&[Some(&indices)], &values.to_device(flat.device()).to_kind(flat.kind()), false));
        Ok(())
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
    /// Every linear's whole update, named `<module path>.lift_indices` and `….lift_values`.
    fn whole(&self) -> Vec<(String, Tensor)> {
        let named = self.entries.iter().flat_map(|(&(layer, site), e)| {
            let path = site.path(layer);
            e.whole().map(|(name, tensor)| (format!("{path}.{name}"), tensor))
        });
        named.collect()
    }

    /// Holds every linear's whole update from `tensors`, named as [`Lift::whole`] names it
    /// after `prefix`, beside tensors named `also` per linear; any other tensor is an error.
    fn hold_whole(&mut self, tensors: &Tensors, prefix: &str, also: &[&str]) -> Result<()> {
        let names = ["lift_indices", "lift_values"].iter().chain(also);
        let expected: BTreeSet<String> = (self.entries.keys())
            .flat_map(|&(layer, site)| names.clone().map(move |n| format!("{prefix}{}.{n}", site.path(layer))))
            .collect();
        if let Some(stray) = tensors.tensors.keys().find(|n| !expected.contains(*n)) {
            return Err(Error::msg(format!(
                "unexpected tensor `{stray}`: the adapter's config implies no such tensor"
            )));
        }
        for (&(layer, site), e) in &mut self.entries {
            e.hold_whole(tensors, &format!("{prefix}{}", site.path(layer)))?;
        }
        Ok(())
    }
}

impl Method for Lift {
    const NAME: &'static str = "lift";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "LIFT: sparse fine-tuning of the principal weights, the largest entries of \
        each matrix's rank-r' approximation, with optimizer state for them alone, redrawn every N steps \
        (https://arxiv.org/abs/2506.00772).";
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
                let base = host.parameter(&key, &shape, Init::Base)?;
                let count = config.count(shape[0], shape[1]);
                let indices = mask::principal_entries(&base, config.rank, count).to_device(base.device());
                let values = host.parameter(&format!("{path}.lift_values"), &[count], Init::Zeros)?;
                let frozen = (indices.zeros_like().narrow(0, 0, 0), values.detach().zeros_like().narrow(0, 0, 0));
                entries.insert((layer, site), Entries { base, indices, values, frozen });
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

    fn step_done(&mut self, _: &mut Host, step: usize) -> Result<Vec<MomentMove>> {
        let every = self.config.refresh_every;
        if every == 0 || step % every != 0 {
            return Ok(Vec::new());
        }
        let rank = self.config.rank;
        let moves = self.entries.iter_mut().map(|(&(layer, site), e)| MomentMove {
            parameter: format!("{}.lift_values", site.path(layer)),
            from: tch::no_grad(|| e.refresh(rank)),
        });
        Ok(moves.collect())
    }

    /// Each linear's mask (`<module path>.mask`) and whole update.
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let masks =
            self.entries.iter().map(|(&(layer, site), e)| (format!("{}.mask", site.path(layer)), e.indices.copy()));
        Ok(masks.chain(self.whole()).collect())
    }

    fn load_state(&mut self, state: &Tensors) -> Result<()> {
        for (&(layer, site), e) in &mut self.entries {
            e.indices = state.get(&format!("{}.mask", site.path(layer)))?.to_device(e.values.device());
        }
        self.hold_whole(state, "", &["mask"])
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
        let tensors = self.whole().into_iter().map(|(name, t)| (format!("{}{name}", ftlab_sdk::peft::PREFIX), t));
        Ok(Some(Export { config, tensors: tensors.collect() }))
    }

    /// The saved update is split over the mask drawn here (which trains on from it) and frozen
    /// entries: another CPU's SVD may round a near-tie the other way, or a refresh have moved
    /// the mask, and the update stays exactly what was saved.
    fn import(&mut self, weights: &Tensors) -> Result<()> {
        self.hold_whole(weights, ftlab_sdk::peft::PREFIX, &[])
    }
}

ftlab_sdk::export_library!(Lift);

#[cfg(test)]
mod tests {
    use super::*;

    fn as_vec(t: &Tensor) -> Vec<i64> {
        Vec::try_from(t).unwrap()
    }

    /// A refresh redraws the mask from `W + S` (the function numpy checks in [`mask`]), keeps
    /// the update exactly, freezes what left the mask, and says where each new entry's moments
    /// come from: its old position, or -1 for an entry new to the mask.
    #[test]
    fn a_refresh_moves_the_mask_and_keeps_the_update() {
        tch::manual_seed(0);
        let base = Tensor::randn([12, 10], (Kind::Float, tch::Device::Cpu));
        let indices = mask::principal_entries(&base, 2, 15);
        // The update cancels the first entries of the mask, so they leave it.
        let values = base.reshape([-1]).index_select(0, &indices) * Tensor::from_slice(&[-1.0f32; 15]);
        let values = values.index_fill(0, &Tensor::arange_start(8, 15, (Kind::Int64, tch::Device::Cpu)), 0.25);
        let frozen = (indices.narrow(0, 0, 0), values.narrow(0, 0, 0));
        let mut e = Entries { base: base.shallow_clone(), indices: indices.shallow_clone(), values, frozen };
        let before = e.flat();

        let from = e.refresh(2);
        assert_eq!(as_vec(&e.indices), as_vec(&mask::principal_entries(&(&base + before.view([12, 10])), 2, 15)));
        assert!(e.flat().equal(&before), "the update stays exactly");
        let (old, new, from) = (as_vec(&indices), as_vec(&e.indices), as_vec(&from));
        for (j, &f) in from.iter().enumerate() {
            match usize::try_from(f) {
                Ok(f) => assert_eq!(old[f], new[j], "entry {j} keeps its old position's moments"),
                Err(_) => assert!(!old.contains(&new[j]), "entry {} was in the mask, so its moments move", new[j]),
            }
        }
        assert!(from.contains(&-1), "the mask moved: {old:?} → {new:?}");
        let frozen = as_vec(&e.frozen.0);
        let left: Vec<i64> = old.iter().copied().filter(|i| !new.contains(i)).collect();
        assert_eq!(frozen, left, "the entries that left hold their update, frozen");
        let (whole, _) = Tensor::cat(&[&e.frozen.0, &e.indices], 0).sort(0, false);
        assert_eq!(as_vec(&e.whole()[0].1), as_vec(&whole));
    }
}
