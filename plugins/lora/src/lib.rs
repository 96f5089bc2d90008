//! `lora`: low-rank adaptation (Hu et al., 2021, <https://arxiv.org/abs/2106.09685>) with HF
//! PEFT's semantics: each targeted linear of every decoder layer computes
//! `y = Wx + b + (alpha / r)·B·A·dropout(x)`, with A `[r, in]` Kaiming-uniform (PEFT's
//! `kaiming_uniform_(a=sqrt(5))`) and B `[out, r]` zero, so training starts from the pretrained
//! function. Only A and B train (the host freezes the base). They are named as PEFT names them
//! minus `base_model.model.` — `model.decoder.layers.{i}.self_attn.q_proj.lora_A.weight` — and
//! a run's adapter is saved as, and loaded from, a PEFT adapter (`peft_type = "LORA"`, see
//! [`peft`]); merged, it adds `(alpha / r)·B·A` to each adapted weight. With `rslora` the
//! factor is `alpha / √r`, as PEFT's `use_rslora`. With `base_bias` or `modules_to_save`, base
//! tensors train too and are saved with the adapter under their own names, replacing the base's
//! when it is loaded, as PEFT's `bias` and `modules_to_save`.

mod peft;

use std::collections::BTreeMap;

use ftlab_sdk::prelude::*;

/// Hyperparameters, set in an experiment file under `lora` (PEFT's names in brackets).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    /// Rank of the update (`r`); default 8, the paper's setting.
    pub r: i64,
    /// The update is scaled by `alpha / r` (`lora_alpha`); default 16.
    pub alpha: f64,
    /// Dropout on the adapter's input during training (`lora_dropout`); default 0.
    pub dropout: f64,
    /// Linears adapted in every layer (`target_modules`): any of q_proj, k_proj, v_proj,
    /// out_proj, fc1, fc2; default q_proj and v_proj, as in the LoRA paper.
    pub targets: Vec<String>,
    /// Rank-stabilised LoRA (Kalajdzievski, 2023, <https://arxiv.org/abs/2312.03732>): scale by
    /// `alpha / √r` instead of `alpha / r` (`use_rslora`); default off.
    #[serde(default)]
    pub rslora: bool,
    /// Only these decoder layers are adapted (`layers_to_transform`); default all.
    #[serde(default)]
    pub layers: Option<Vec<i64>>,
    /// Ranks of particular modules (`rank_pattern`): a key is a module's path or its end, e.g.
    /// `v_proj` or `layers.1.self_attn.q_proj`.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, i64>,
    /// Alphas of particular modules (`alpha_pattern`), keyed as `rank_pattern`.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// B has a trainable bias, scaled with the update (`lora_bias`); default off.
    #[serde(default)]
    pub bias: bool,
    /// Base biases that train and are saved with the adapter (`bias`): `none` (default),
    /// `lora_only` (the adapted linears' biases) or `all` (every bias, layer norms' too).
    #[serde(default)]
    pub base_bias: BaseBias,
    /// Base modules that train in full and are saved with the adapter (`modules_to_save`), by
    /// name (`fc2`, `final_layer_norm`) or path (`layers.1.fc1`). OPT ties `embed_tokens` and
    /// `lm_head`, so neither can be saved apart from the other: both are refused.
    #[serde(default)]
    pub modules_to_save: Vec<String>,
}

/// Which base biases train with the adapter (PEFT's `bias`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BaseBias {
    /// None.
    #[default]
    None,
    /// The biases of the linears LoRA adapts.
    LoraOnly,
    /// Every bias of the model.
    All,
}

impl BaseBias {
    /// PEFT's name.
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::LoraOnly => "lora_only",
            Self::All => "all",
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: vec!["q_proj".into(), "v_proj".into()],
            rslora: false,
            layers: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            bias: false,
            base_bias: BaseBias::None,
            modules_to_save: Vec::new(),
        }
    }
}

impl Config {
    /// The value of the first key of `pattern` that names `path` (the path itself or its end
    /// after a `.`), as PEFT matches non-regex pattern keys.
    fn pattern<T: Copy>(pattern: &BTreeMap<String, T>, path: &str) -> Option<T> {
        pattern.iter().find(|(key, _)| path == *key || path.ends_with(&format!(".{key}"))).map(|(_, v)| *v)
    }

    /// The rank and the update's scale of the module at `path`.
    fn rank_and_scale(&self, path: &str) -> (i64, f64) {
        let r = Self::pattern(&self.rank_pattern, path).unwrap_or(self.r);
        let alpha = Self::pattern(&self.alpha_pattern, path).unwrap_or(self.alpha);
        (r, alpha / if self.rslora { (r as f64).sqrt() } else { r as f64 })
    }

    /// The base parameters (of `parameters`, HF keys) that train and are saved with the adapter
    /// whose adapted linears are `adapted` (module paths).
    fn saved_base(&self, parameters: &BTreeMap<String, Vec<i64>>, adapted: &[String]) -> Result<Vec<String>> {
        let module = |name: &str| name.rsplit_once('.').map_or("", |(m, _)| m).to_string();
        let mut names: Vec<String> = (parameters.keys())
            .filter(|name| match self.base_bias {
                BaseBias::None => false,
                BaseBias::LoraOnly => name.ends_with(".bias") && adapted.contains(&module(name)),
                BaseBias::All => name.ends_with(".bias"),
            })
            .cloned()
            .collect();
        for wanted in &self.modules_to_save {
            let last = wanted.rsplit('.').next().unwrap_or_default();
            if ["embed_tokens", "lm_head"].contains(&last) {
                return Err(Error::msg(format!(
                    "modules_to_save: `{wanted}` cannot be saved apart: OPT ties embed_tokens and lm_head"
                )));
            }
            let before = names.len();
            names.extend(
                parameters
                    .keys()
                    .filter(|name| {
                        let m = module(name);
                        m == *wanted || m.ends_with(&format!(".{wanted}"))
                    })
                    .cloned(),
            );
            if names.len() == before {
                return Err(Error::msg(format!("modules_to_save: `{wanted}` names no module of the model")));
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// One adapted linear: A, B (and B's bias, with `bias`) and the factor its update is scaled by.
struct Pair {
    a: Tensor,
    b: Tensor,
    bias: Option<Tensor>,
    scale: f64,
}

/// A and B of every adapted linear, by (layer, site), and the base tensors saved with them.
pub struct Lora {
    pairs: BTreeMap<(i64, Site), Pair>,
    /// Base parameters that train with the adapter and are saved with it, by HF key.
    saved: BTreeMap<String, Tensor>,
    config: Config,
    targets: Vec<Site>,
    /// The base model's name, PEFT's `base_model_name_or_path`.
    base_model: String,
    train: bool,
}

impl Lora {
    /// Every tensor saved with the adapter by its name (`model.decoder.layers.{i}.<module>.lora_A.weight`,
    /// `….lora_B.weight`, `….lora_B.bias`, and the saved base tensors' own keys).
    fn tensors(&self) -> impl Iterator<Item = (String, &Tensor)> {
        let pairs = self.pairs.iter().flat_map(|(&(layer, site), p)| {
            let path = site.path(layer);
            let bias = p.bias.as_ref().map(|bias| (format!("{path}.lora_B.bias"), bias));
            [(format!("{path}.lora_A.weight"), &p.a), (format!("{path}.lora_B.weight"), &p.b)].into_iter().chain(bias)
        });
        pairs.chain(self.saved.iter().map(|(key, t)| (self.saved_name(key), t)))
    }

    /// A saved base tensor's name: its key, with PEFT's `base_layer.` before the leaf when its
    /// linear is adapted (PEFT wraps the linear, e.g. `….q_proj.base_layer.bias`).
    fn saved_name(&self, key: &str) -> String {
        let (module, leaf) = key.rsplit_once('.').unwrap_or(("", key));
        match self.pairs.keys().any(|&(layer, site)| site.path(layer) == module) {
            true => format!("{module}.base_layer.{leaf}"),
            false => key.to_string(),
        }
    }
}

impl Method for Lora {
    const NAME: &'static str = "lora";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "LoRA: a trainable low-rank update (alpha/r)·B·A beside frozen linears, \
        with HF PEFT's semantics and names (https://arxiv.org/abs/2106.09685).";
    type Config = Config;
    const EXPORT_TYPE: Option<&'static str> = Some("LORA");

    fn new(config: Config, host: &mut Host) -> Result<Self> {
        if config.r <= 0 || !config.alpha.is_finite() || !(0.0..1.0).contains(&config.dropout) {
            return Err(Error::msg(format!(
                "need r > 0, a finite alpha and dropout in [0, 1); got r = {}, alpha = {}, dropout = {}",
                config.r, config.alpha, config.dropout
            )));
        }
        let targets = ftlab_sdk::peft::named_sites("targets", &config.targets)?;
        let model = host.model()?;
        if let Some(layer) = config.layers.iter().flatten().find(|&&l| !(0..model.num_hidden_layers).contains(&l)) {
            return Err(Error::msg(format!(
                "layers: {layer} is not a layer of a {}-layer model",
                model.num_hidden_layers
            )));
        }
        let mut pairs = BTreeMap::new();
        let adapted = |layer: &i64| config.layers.as_ref().is_none_or(|layers| layers.contains(layer));
        for layer in (0..model.num_hidden_layers).filter(adapted) {
            for &site in &targets {
                let (fan_in, fan_out) = match site {
                    Site::Fc1 => (model.hidden_size, model.ffn_dim),
                    Site::Fc2 => (model.ffn_dim, model.hidden_size),
                    _ => (model.hidden_size, model.hidden_size),
                };
                let path = site.path(layer);
                let (r, scale) = config.rank_and_scale(&path);
                if r <= 0 {
                    return Err(Error::msg(format!("rank_pattern gives {path} rank {r}; ranks must be positive")));
                }
                let a =
                    host.parameter(&format!("{path}.lora_A.weight"), &[r, fan_in], Init::KaimingUniform { fan_in })?;
                let b = host.parameter(&format!("{path}.lora_B.weight"), &[fan_out, r], Init::Zeros)?;
                let bias = match config.bias {
                    true => Some(host.parameter(&format!("{path}.lora_B.bias"), &[fan_out], Init::Zeros)?),
                    false => None,
                };
                pairs.insert((layer, site), Pair { a, b, bias, scale });
            }
        }
        let adapted: Vec<String> = pairs.keys().map(|&(layer, site)| site.path(layer)).collect();
        let mut saved = BTreeMap::new();
        for name in config.saved_base(&model.parameters, &adapted)? {
            saved.insert(name.clone(), host.parameter(&name, &model.parameters[&name], Init::Base)?);
        }
        Ok(Self { pairs, saved, config, targets, base_model: model.name, train: false })
    }

    fn trains(&self, name: &str) -> Option<bool> {
        self.saved.contains_key(name).then_some(true)
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
        for (&(layer, site), p) in &self.pairs {
            let path = site.path(layer);
            let weight = p.b.to_kind(Kind::Float).matmul(&p.a.to_kind(Kind::Float)) * p.scale; // (out, in)
            deltas.push((format!("{path}.weight"), weight.detach()));
            if let Some(bias) = &p.bias {
                deltas.push((format!("{path}.bias"), (bias.to_kind(Kind::Float) * p.scale).detach()));
            }
        }
        Ok(deltas)
    }

    fn sites(&self) -> Result<Vec<Site>> {
        Ok(self.targets.clone())
    }

    fn linear(&self, layer: i64, site: Site, input: &Tensor, output: Tensor) -> Result<Tensor> {
        let Some(p) = self.pairs.get(&(layer, site)) else { return Ok(output) };
        let x = input.dropout(self.config.dropout, self.train); // (B, T, in)
        let update = x.matmul(&p.a.tr()).matmul(&p.b.tr());
        let update = match &p.bias {
            Some(bias) => update + bias,
            None => update,
        };
        Ok(output + update * p.scale)
    }

    fn set_train(&mut self, train: bool) {
        self.train = train;
    }
}

ftlab_sdk::export_library!(Lora);
