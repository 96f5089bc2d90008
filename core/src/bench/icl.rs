//! In-context scoring: the same queries after the same few-shot context, scored by each of
//! several objective configurations (e.g. the `icl` method with its context's keys/values
//! cached, and re-encoding the context with every query).

use tch::Device;

use super::{random_model, seconds, Shape};
use crate::data::batch::{self, BatchOrder, EncodedExample};
use crate::error::{Error, Result};
use crate::methods::{MethodRun, MethodSpec};
use crate::run::data::RunData;
use crate::run::RunConfig;

/// What was scored, and how long each configuration took.
#[derive(Debug, Clone)]
pub struct IclTimes {
    /// Queries scored.
    pub queries: usize,
    /// Tokens of the shared context.
    pub context_tokens: usize,
    /// Seconds of `prepare` plus scoring, per configuration, in the order given.
    pub seconds: Vec<f64>,
}

/// Scores the embedded task's first `queries` in-domain rows after a `shots`-demonstration
/// context with each of `objectives`, in batches of 16.
pub fn scoring_times(shape: &Shape, objectives: &[MethodSpec], shots: usize, queries: usize) -> Result<IclTimes> {
    let (_, config) = shape.load()?;
    let model = random_model(&config, Device::Cpu)?;
    let registry = ftlab_registry::Registry::discover();
    let data = RunData::load(&RunConfig { shots, ..Default::default() }, &model.tokenizer)?;
    let context = data.context.as_ref().map_err(|why| Error::Sampling(why.clone()))?;
    let context_tokens = model.tokenizer.encode(context)?.len();
    let set = &data.eval[0].data;
    let rows = set.select("queries", &(0..queries.min(set.len())).collect::<Vec<_>>());
    let encoded: Vec<EncodedExample> = rows
        .examples
        .iter()
        .enumerate()
        .map(|(position, e)| Ok(EncodedExample::query(position, data.prompt.encode(&model.tokenizer, e)?, e.label)))
        .collect::<Result<_>>()?;
    let device = model.device();
    let mut times = Vec::new();
    for spec in objectives {
        let mut run = MethodRun::new(&model, &registry, spec, &[], data.task_info(), 0)?;
        run.set_train(false)?;
        times.push(seconds(|| {
            run.prepare(data.prepare_data(&model.tokenizer, device))?;
            let order = BatchOrder::ByLength;
            for b in batch::batches(&model.tokenizer, &encoded, &data.prompt.word_ids, 16, order, device) {
                let _scores = run.predict(data.method_batch(&b, &rows, false))?;
            }
            Ok(())
        })?);
    }
    Ok(IclTimes { queries: encoded.len(), context_tokens, seconds: times })
}
