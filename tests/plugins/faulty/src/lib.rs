//! Test fixture: methods that fail in every way a method can, so the tests can check that the
//! host survives each with an error naming the method and the call.

use ftlab_sdk::prelude::*;

/// No hyperparameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Config {}

/// Panics while being created.
pub struct PanicAtNew;

impl Method for PanicAtNew {
    const NAME: &'static str = "fault_panic_at_new";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "Panics in `new`.";
    type Config = Config;
    fn new(_: Config, _: &mut Host) -> Result<Self> {
        panic!("deliberate panic at load")
    }
}

/// Panics in its `q_proj` hook.
pub struct PanicInHook;

impl Method for PanicInHook {
    const NAME: &'static str = "fault_panic_in_hook";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "Panics in the q_proj hook.";
    type Config = Config;
    fn new(_: Config, _: &mut Host) -> Result<Self> {
        Ok(Self)
    }
    fn sites(&self) -> Result<Vec<Site>> {
        Ok(vec![Site::QProj])
    }
    fn linear(&self, layer: i64, _: Site, _: &Tensor, _: Tensor) -> Result<Tensor> {
        panic!("deliberate panic in the hook of layer {layer}")
    }
}

/// Raises a libtorch error (a shape mismatch) in its `fc1` hook.
pub struct TorchErrorInHook;

impl Method for TorchErrorInHook {
    const NAME: &'static str = "fault_torch_error";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "Multiplies incompatible shapes in the fc1 hook.";
    type Config = Config;
    fn new(_: Config, _: &mut Host) -> Result<Self> {
        Ok(Self)
    }
    fn sites(&self) -> Result<Vec<Site>> {
        Ok(vec![Site::Fc1])
    }
    fn linear(&self, _: i64, _: Site, _: &Tensor, output: Tensor) -> Result<Tensor> {
        Ok(output.matmul(&Tensor::ones([3, 5], (Kind::Float, output.device()))))
    }
}

/// Panics in `loss`.
pub struct PanicInLoss;

impl Method for PanicInLoss {
    const NAME: &'static str = "fault_panic_in_loss";
    const ROLE: Role = Role::Objective;
    const DESCRIPTION: &'static str = "Panics in `loss`.";
    type Config = Config;
    fn new(_: Config, _: &mut Host) -> Result<Self> {
        Ok(Self)
    }
    fn loss(&mut self, _: &mut Host, _: &Batch) -> Result<Loss> {
        panic!("deliberate panic in loss")
    }
}

/// Panics while declaring its hook sites.
pub struct PanicInSites;

impl Method for PanicInSites {
    const NAME: &'static str = "fault_panic_in_sites";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "Panics in `sites`.";
    type Config = Config;
    fn new(_: Config, _: &mut Host) -> Result<Self> {
        Ok(Self)
    }
    fn sites(&self) -> Result<Vec<Site>> {
        panic!("deliberate panic in sites")
    }
}

/// Panics while saying what it trains on.
pub struct PanicInTrainingInputs;

impl Method for PanicInTrainingInputs {
    const NAME: &'static str = "fault_panic_in_training_inputs";
    const ROLE: Role = Role::Objective;
    const DESCRIPTION: &'static str = "Panics in `training_inputs`.";
    type Config = Config;
    fn new(_: Config, _: &mut Host) -> Result<Self> {
        Ok(Self)
    }
    fn training_inputs(&self) -> Inputs {
        panic!("deliberate panic in training_inputs")
    }
}

/// A well-behaved adapter whose name another fixture library also declares.
pub struct Twin;

impl Method for Twin {
    const NAME: &'static str = "fault_twin";
    const ROLE: Role = Role::Adapter;
    const DESCRIPTION: &'static str = "Declared by two libraries.";
    type Config = Config;
    fn new(_: Config, _: &mut Host) -> Result<Self> {
        Ok(Self)
    }
}

ftlab_sdk::export_library!(
    PanicAtNew,
    PanicInHook,
    TorchErrorInHook,
    PanicInLoss,
    PanicInSites,
    PanicInTrainingInputs,
    Twin
);
