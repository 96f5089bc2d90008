//! `bitfit`: an ftlab adapter under which only the model's bias terms train — every
//! `*.bias` of the attention and MLP linears and of the layer norms — and all weight matrices
//! and embeddings stay frozen (Ben Zaken et al., 2022, <https://arxiv.org/abs/2106.10199>).
//! It creates no parameters and changes no forward computation.

use ftlab_sdk::prelude::*;

/// BitFit has no hyperparameters (its learning rate is the run's).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Config {}

/// Selects the biases for training.
pub struct BitFit;

impl Method for BitFit {
    const NAME: &'static str = "bitfit";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str =
        "Trains only the bias terms; every weight matrix stays frozen (BitFit, https://arxiv.org/abs/2106.10199).";
    type Config = Config;

    fn new(_: Config, _: &mut Host) -> Result<Self> {
        Ok(BitFit)
    }

    fn trains(&self, name: &str) -> Option<bool> {
        Some(name.ends_with(".bias"))
    }
}

ftlab_sdk::export_library!(BitFit);
