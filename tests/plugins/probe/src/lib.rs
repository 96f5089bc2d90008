//! Test and benchmark fixture: `probe_noop`, an adapter that declares every hook site and
//! returns every value unchanged, so the cost of crossing the ABI can be measured
//! (`ftlab bench hooks`) and the hook plumbing tested without changing the model.

use ftlab_sdk::prelude::*;

/// No hyperparameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Config {}

/// Acts at every site; changes nothing.
pub struct Noop;

impl Method for Noop {
    const NAME: &'static str = "probe_noop";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "Hooks every site and changes nothing (measures the ABI's cost).";
    type Config = Config;

    fn new(_: Config, _: &mut Host) -> Result<Self> {
        Ok(Self)
    }

    fn sites(&self) -> Result<Vec<Site>> {
        Ok(Site::ALL.to_vec())
    }

    /// Base parameters keep training as without adapters.
    fn trains(&self, _: &str) -> Option<bool> {
        Some(true)
    }
}

ftlab_sdk::export_library!(Noop);
