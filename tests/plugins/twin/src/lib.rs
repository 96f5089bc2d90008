//! Test fixture: declares `fault_twin`, which `ftlab_fixture_faulty` (found first) declares too.

use ftlab_sdk::prelude::*;

/// No hyperparameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Config {}

/// The second declaration of `fault_twin`.
pub struct Twin;

impl Method for Twin {
    const NAME: &'static str = "fault_twin";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "The duplicate.";
    type Config = Config;
    fn new(_: Config, _: &mut Host) -> Result<Self> {
        Ok(Self)
    }
}

ftlab_sdk::export_library!(Twin);
