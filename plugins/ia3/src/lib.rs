//! `ia3`: (IA)³, infused adapter by inhibiting and amplifying inner activations (Liu et al.,
//! 2022, <https://arxiv.org/abs/2205.05638>), with HF PEFT's semantics: in every decoder layer a
//! learned vector rescales the output of each targeted linear (bias included), or the input of a
//! feed-forward one. The default is the paper's: keys, values and the MLP's inner activation
//! (`k_proj`, `v_proj` outputs, `fc2`'s input); PEFT's own default for OPT, when a config names
//! no modules, is `q_proj`, `k_proj`, `fc2`. The vectors start at 1, so training starts from the
//! pretrained function; only they train. A run's adapter is saved as, and loaded from, PEFT's
//! `IA3` adapter (`….k_proj.ia3_l` of shape `[out, 1]`, a feed-forward module's `[1, in]`, see
//! [`peft`]); merged, it scales the weight's rows and bias, or its columns.

mod peft;

use std::collections::BTreeMap;

use ftlab_sdk::prelude::*;

/// Hyperparameters, set in an experiment file under `ia3` (PEFT's names in brackets).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Config {
    /// Linears rescaled in every layer (`target_modules`): any of q_proj, k_proj, v_proj,
    /// out_proj, fc1, fc2; default k_proj, v_proj and fc2.
    pub targets: Vec<String>,
    /// Targets rescaled at their input rather than their output (`feedforward_modules`):
    /// default fc2. Only fc2's input (the MLP activation) is a hook site, so only fc2 may be.
    pub feedforward: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self { targets: vec!["k_proj".into(), "v_proj".into(), "fc2".into()], feedforward: vec!["fc2".into()] }
    }
}

/// One rescaled linear: its vector, whether it scales the input, and the base weight and bias
/// a merge scales.
struct Scaled {
    vector: Tensor,
    feedforward: bool,
    weight: Tensor,
    bias: Option<Tensor>,
}

/// The vectors of every rescaled linear, by (layer, site).
pub struct Ia3 {
    scaled: BTreeMap<(i64, Site), Scaled>,
    config: Config,
    /// The base model's name, PEFT's `base_model_name_or_path`.
    base_model: String,
}

impl Ia3 {
    /// Every vector by its name (`model.decoder.layers.{i}.<module>.ia3_l`).
    fn tensors(&self) -> impl Iterator<Item = (String, &Tensor)> {
        self.scaled.iter().map(|(&(layer, site), s)| (format!("{}.ia3_l", site.path(layer)), &s.vector))
    }
}

impl Method for Ia3 {
    const NAME: &'static str = "ia3";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "(IA)³: learned vectors rescale keys, values and the MLP activation, with HF \
        PEFT's semantics and names (https://arxiv.org/abs/2205.05638).";
    type Config = Config;
    const EXPORT_TYPE: Option<&'static str> = Some("IA3");

    fn new(config: Config, host: &mut Host) -> Result<Self> {
        let targets = ftlab_sdk::peft::named_sites("targets", &config.targets)?;
        let feedforward = match config.feedforward.is_empty() {
            true => Vec::new(),
            false => ftlab_sdk::peft::named_sites("feedforward", &config.feedforward)?,
        };
        if let Some(site) = feedforward.iter().find(|s| **s != Site::Fc2 || !targets.contains(s)) {
            return Err(Error::msg(format!(
                "feedforward: `{}` must be a target, and only fc2's input (the MLP activation) can be rescaled",
                site.name()
            )));
        }
        let model = host.model()?;
        let mut scaled = BTreeMap::new();
        for layer in 0..model.num_hidden_layers {
            for &site in &targets {
                let path = site.path(layer);
                let weight_name = format!("{path}.weight");
                let shape = model.parameters.get(&weight_name).cloned();
                let shape = shape.ok_or_else(|| Error::msg(format!("the model has no `{weight_name}`")))?;
                let feedforward = feedforward.contains(&site);
                let vector_shape = if feedforward { [1, shape[1]] } else { [shape[0], 1] };
                let vector = host.parameter(&format!("{path}.ia3_l"), &vector_shape, Init::Ones)?;
                let weight = host.parameter(&weight_name, &shape, Init::Base)?;
                let bias_name = format!("{path}.bias");
                let bias = match model.parameters.get(&bias_name) {
                    Some(shape) => Some(host.parameter(&bias_name, shape, Init::Base)?),
                    None => None,
                };
                scaled.insert((layer, site), Scaled { vector, feedforward, weight, bias });
            }
        }
        Ok(Self { scaled, config, base_model: model.name })
    }

    fn config_from_export(adapter_config: &ftlab_sdk::serde_json::Value) -> Result<Config> {
        peft::config(adapter_config)
    }

    fn export(&self) -> Result<Option<Export>> {
        Ok(Some(peft::export(self)))
    }

    fn import(&mut self, weights: &Tensors) -> Result<()> {
        ftlab_sdk::peft::import(self.tensors(), weights)
    }

    fn merged_deltas(&self) -> Result<Vec<(String, Tensor)>> {
        let mut deltas = Vec::new();
        for (&(layer, site), s) in &self.scaled {
            let path = site.path(layer);
            let factor = s.vector.to_kind(Kind::Float) - 1.0; // [out, 1] scales rows, [1, in] columns
            deltas.push((format!("{path}.weight"), (s.weight.to_kind(Kind::Float) * &factor).detach()));
            if let (Some(bias), false) = (&s.bias, s.feedforward) {
                deltas.push((format!("{path}.bias"), (bias.to_kind(Kind::Float) * factor.view([-1])).detach()));
            }
        }
        Ok(deltas)
    }

    fn sites(&self) -> Result<Vec<Site>> {
        let mut sites: Vec<Site> =
            self.scaled.iter().filter(|(_, s)| !s.feedforward).map(|(&(_, site), _)| site).collect();
        if self.scaled.values().any(|s| s.feedforward) {
            sites.push(Site::Activation);
        }
        sites.sort_by_key(|s| s.name());
        sites.dedup();
        Ok(sites)
    }

    fn linear(&self, layer: i64, site: Site, _input: &Tensor, output: Tensor) -> Result<Tensor> {
        match self.scaled.get(&(layer, site)) {
            Some(s) if !s.feedforward => Ok(output * s.vector.view([-1])),
            _ => Ok(output),
        }
    }

    fn activation(&self, layer: i64, activation: Tensor) -> Result<Tensor> {
        match self.scaled.get(&(layer, Site::Fc2)) {
            Some(s) if s.feedforward => Ok(activation * s.vector.view([-1])),
            _ => Ok(activation),
        }
    }
}

ftlab_sdk::export_library!(Ia3);
