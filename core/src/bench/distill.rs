//! What an objective costs against another: seconds per training epoch of two objectives on the
//! same inputs (e.g. context distillation against pbft: the teacher's targets are cached, so a
//! step differs only by the KL against them), and seconds of `prepare` (e.g. the teacher's
//! precomputation with a shared context's keys/values kept, against re-encoding the context).

use tch::Device;

use super::{median, random_model, seconds, Shape};
use crate::error::Result;
use crate::methods::{MethodRun, MethodSpec};
use crate::run::data::RunData;
use crate::run::optim::AdamW;
use crate::run::{train, RunConfig};

/// What [`costs`] measured.
#[derive(Debug, Clone)]
pub struct Costs {
    /// Median seconds per training epoch, per objective.
    pub epoch_seconds: [f64; 2],
    /// Seconds of `prepare`, per precomputing objective.
    pub prepare_seconds: [f64; 2],
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Unlabelled inputs the precomputation read.
    pub unlabelled: usize,
}

/// Trains each of `train` for `epochs` timed epochs (after one untimed warm-up, alternating so
/// drift in the machine's speed affects both alike) on `shots` labelled examples, each on its
/// own copy of the same model; then times `prepare` of each of `prepare` over `unlabelled`
/// inputs.
pub fn costs(
    shape: &Shape,
    train: &[MethodSpec; 2],
    prepare: &[MethodSpec; 2],
    shots: usize,
    epochs: usize,
    unlabelled: usize,
) -> Result<Costs> {
    let (_, config) = shape.load()?;
    let mut run_config = RunConfig { shots, ..Default::default() };
    run_config.train.unlabelled = unlabelled;
    let registry = ftlab_registry::Registry::discover();
    let models = [random_model(&config, Device::Cpu)?, random_model(&config, Device::Cpu)?];
    let data = RunData::load(&run_config, &models[0].tokenizer)?;
    let mut runs = Vec::new();
    for (spec, model) in train.iter().zip(&models) {
        let mut run = MethodRun::new(model, &registry, spec, &[], data.task_info(), 0)?;
        run.prepare(data.prepare_data(&model.tokenizer, model.device()))?;
        let optimizer = AdamW::new(run.trainable(), &run_config.train)?;
        runs.push((run, optimizer));
    }
    let mut times: [Vec<f64>; 2] = Default::default();
    for epoch in 0..=epochs.max(1) {
        for (i, (run, optimizer)) in runs.iter_mut().enumerate() {
            let tokenizer = &models[i].tokenizer;
            let took = seconds(|| {
                train::train_epoch(&run_config, run, &data, tokenizer, optimizer, epoch, usize::MAX).map(drop)
            })?;
            if epoch > 0 {
                // Epoch 0 warms up allocations and kernels.
                times[i].push(took);
            }
        }
    }
    drop(runs);
    let model = &models[0];
    let mut prepare_seconds = [0.0; 2];
    for (spec, time) in prepare.iter().zip(&mut prepare_seconds) {
        let mut run = MethodRun::new(model, &registry, spec, &[], data.task_info(), 0)?;
        *time = seconds(|| run.prepare(data.prepare_data(&model.tokenizer, model.device())))?;
    }
    Ok(Costs {
        epoch_seconds: times.map(median),
        prepare_seconds,
        batch_size: run_config.train.batch_size,
        unlabelled: data.unlabelled.len(),
    })
}
