//! `lora`: low-rank adaptation (Hu et al., 2021, <https://arxiv.org/abs/2106.09685>) with HF
//! PEFT's semantics: each targeted linear of every decoder layer computes
//! `y = Wx + b + (alpha / r)·B·A·dropout(x)`, with A `[r, in]` Kaiming-uniform (PEFT's
//! `kaiming_uniform_(a=sqrt(5))`) and B `[out, r]` zero, so training starts from the pretrained
//! function. Only A and B train (the host freezes the base). They are named as PEFT names them
//! minus `base_model.model.` — `model.decoder.layers.{i}.self_attn.q_proj.lora_A.weight` — and
//! a run's adapter is saved as, and loaded from, a PEFT adapter (`peft_type = "LORA"`, see
//! [`peft`]); merged, it adds `(alpha / r)·B·A` to each adapted weight. With `rslora` the
//! factor is `alpha / √r`, as PEFT's `use_rslora`.

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
}

impl Default for Config {
    fn default() -> Self {
        Self { r: 8, alpha: 16.0, dropout: 0.0, targets: vec!["q_proj".into(), "v_proj".into()], rslora: false }
    }
}

/// A and B of every adapted linear, by (layer, site).
pub struct Lora {
    pairs: BTreeMap<(i64, Site), (Tensor, Tensor)>,
    config: Config,
    targets: Vec<Site>,
    /// The base model's name, PEFT's `base_model_name_or_path`.
    base_model: String,
    train: bool,
}

impl Lora {
    /// `alpha / r` (or `alpha / √r` with rsLoRA), the factor every update is scaled by.
    fn scale(&self) -> f64 {
        let r = self.config.r as f64;
        self.config.alpha / if self.config.rslora { r.sqrt() } else { r }
    }

    /// Each adapted module's parameter path (`model.decoder.layers.{i}.<module>`) with its A and B.
    fn modules(&self) -> impl Iterator<Item = (String, &Tensor, &Tensor)> {
        self.pairs.iter().map(|(&(layer, site), (a, b))| (site.path(layer), a, b))
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
        let names = config.targets.iter().map(|t| ftlab_sdk::serde_json::Value::from(t.as_str())).collect();
        let targets = ftlab_sdk::peft::target_sites("targets", Some(&ftlab_sdk::serde_json::Value::Array(names)))?;
        let model = host.model()?;
        let mut pairs = BTreeMap::new();
        for layer in 0..model.num_hidden_layers {
            for &site in &targets {
                let (fan_in, fan_out) = match site {
                    Site::Fc1 => (model.hidden_size, model.ffn_dim),
                    Site::Fc2 => (model.ffn_dim, model.hidden_size),
                    _ => (model.hidden_size, model.hidden_size),
                };
                let path = site.path(layer);
                let a = host.parameter(
                    &format!("{path}.lora_A.weight"),
                    &[config.r, fan_in],
                    Init::KaimingUniform { fan_in },
                )?;
                let b = host.parameter(&format!("{path}.lora_B.weight"), &[fan_out, config.r], Init::Zeros)?;
                pairs.insert((layer, site), (a, b));
            }
        }
        Ok(Self { pairs, config, targets, base_model: model.name, train: false })
    }

    fn config_from_export(adapter_config: &ftlab_sdk::serde_json::Value) -> Result<Config> {
        peft::config(adapter_config)
    }

    fn export(&self) -> Result<Option<Export>> {
        Ok(Some(peft::export(self)))
    }

    fn import(&mut self, weights: &Tensors) -> Result<()> {
        peft::import(self, weights)
    }

    fn merged_deltas(&self) -> Result<Vec<(String, Tensor)>> {
        let delta = |a: &Tensor, b: &Tensor| b.to_kind(Kind::Float).matmul(&a.to_kind(Kind::Float)) * self.scale();
        Ok(self.modules().map(|(path, a, b)| (format!("{path}.weight"), delta(a, b).detach())).collect())
        // (out, in)
    }

    fn sites(&self) -> Vec<Site> {
        self.targets.clone()
    }

    fn linear(&self, layer: i64, site: Site, input: &Tensor, output: Tensor) -> Result<Tensor> {
        let Some((a, b)) = self.pairs.get(&(layer, site)) else { return Ok(output) };
        let x = input.dropout(self.config.dropout, self.train); // (B, T, in)
        Ok(output + x.matmul(&a.tr()).matmul(&b.tr()) * self.scale())
    }

    fn set_train(&mut self, train: bool) {
        self.train = train;
    }
}

ftlab_sdk::export_library!(Lora);
