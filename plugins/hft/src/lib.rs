//! `hft`: half fine-tuning (Hui et al., 2024, <https://arxiv.org/abs/2404.18466>): in every
//! decoder layer a seeded random half of the parameter groups trains — 2 of the 4 attention
//! projections (q, k, v, out), 1 of the 2 MLP linears (fc1, fc2), 1 of the 2 layer norms — and
//! the rest stays frozen, with no optimizer state (a group is a module's weight and bias). The
//! embeddings and the final layer norm stay frozen. The selection is drawn from the run's seed
//! (or `seed`), once for the run or, with `redraw`, anew at every epoch — HFT's per-round
//! redraw with an epoch as the round: a group that trains again starts with fresh optimizer
//! state, and one that stops keeps its trained values.

use std::collections::BTreeSet;

use ftlab_sdk::prelude::*;
use ftlab_sdk::rng::SplitMix64;

/// Hyperparameters, set in an experiment file under `hft`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Config {
    /// Seed of the selection; default: the run's seed.
    pub seed: Option<u64>,
    /// Draw another half at every epoch (default false: one draw for the whole run).
    pub redraw: bool,
}

/// The parameter groups of a layer, and how many of each family train.
const FAMILIES: [(&[&str], usize); 3] = [
    (&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"], 2),
    (&["fc1", "fc2"], 1),
    (&["self_attn_layer_norm", "final_layer_norm"], 1),
];

/// The modules (`model.decoder.layers.{i}.<group>`) of round `round`'s draw: each layer's
/// stream shuffles every family once per round, so round 0 is the fixed draw.
fn draw(seed: u64, layers: i64, round: usize) -> BTreeSet<String> {
    let mut trained = BTreeSet::new();
    for layer in 0..layers {
        let mut rng = SplitMix64::for_input(seed, layer as u64);
        let mut picks = Vec::new();
        for _ in 0..=round {
            picks.clear();
            for (groups, count) in FAMILIES {
                let mut order: Vec<&str> = groups.to_vec();
                rng.shuffle(&mut order);
                picks.extend(order[..count].iter().map(|g| format!("model.decoder.layers.{layer}.{g}")));
            }
        }
        trained.extend(picks);
    }
    trained
}

/// The modules that train now.
pub struct Hft {
    trained: BTreeSet<String>,
    seed: u64,
    layers: i64,
    redraw: bool,
}

impl Method for Hft {
    const NAME: &'static str = "hft";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "Half fine-tuning: in every layer a seeded half of the parameter groups trains \
        and the rest stays frozen, optionally redrawn every epoch (https://arxiv.org/abs/2404.18466).";
    type Config = Config;

    fn new(config: Config, host: &mut Host) -> Result<Self> {
        let seed = match config.seed {
            Some(seed) => seed,
            None => host.seed()?,
        };
        let layers = host.model()?.num_hidden_layers;
        Ok(Self { trained: draw(seed, layers, 0), seed, layers, redraw: config.redraw })
    }

    fn trains(&self, name: &str) -> Option<bool> {
        let module = name.rsplit_once('.').map_or(name, |(module, _)| module);
        Some(self.trained.contains(module))
    }

    fn epoch_begins(&mut self, _: &mut Host, epoch: usize) -> Result<bool> {
        if !self.redraw {
            return Ok(false);
        }
        let trained = draw(self.seed, self.layers, epoch);
        let changed = trained != self.trained;
        self.trained = trained;
        Ok(changed)
    }
}

ftlab_sdk::export_library!(Hft);
