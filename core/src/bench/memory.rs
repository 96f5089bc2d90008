//! Peak memory of training: a few optimizer steps on random tokens with an objective and
//! adapters. A process's peak only grows, so each configuration is measured in its own process:
//! the parent runs [`in_child`] per configuration, each child runs [`training_peak`] and prints
//! [`child_reply`].

use std::process::Command;

use tch::{Device, Kind, Tensor};

use super::{random_model, Shape};
use crate::error::{Error, Result};
use crate::methods::{MethodRun, MethodSpec};
use crate::run::optim::AdamW;

/// Trains `steps` steps of `objective` with `adapters` (none: every parameter) on random
/// tokens with random yes/no answers, and returns this process's peak resident memory.
pub fn training_peak(shape: &Shape, objective: &MethodSpec, adapters: &[MethodSpec], steps: usize) -> Result<u64> {
    let (_, config) = shape.load()?;
    let model = random_model(&config, Device::Cpu)?;
    let registry = ftlab_registry::Registry::discover();
    let words = [" Yes", " No"];
    let ids: Vec<i64> =
        words.iter().map(|w| model.tokenizer.encode_plain(w).map(|ids| ids[0])).collect::<Result<_>>()?;
    let task = ftlab_sdk::TaskInfo {
        name: "bench".into(),
        label_words: words.map(String::from).to_vec(),
        label_token_ids: ids.clone(),
    };
    let mut run = MethodRun::new(&model, &registry, objective, adapters, task, 0)?;
    run.set_train(true)?;
    let mut optimizer = AdamW::new(run.trainable(), &Default::default());
    let input_ids = Tensor::randint_low(4, config.vocab_size, [shape.batch, shape.seq], (Kind::Int64, Device::Cpu));
    let labels = Tensor::randint(2, [shape.batch], (Kind::Int64, Device::Cpu));
    let gold = Tensor::from_slice(&ids).index_select(0, &labels);
    for _ in 0..steps {
        let batch = ftlab_sdk::Tensors::new()
            .with("input_ids", input_ids.shallow_clone())
            .with("attention_mask", input_ids.ones_like())
            .with("labels", labels.shallow_clone())
            .with("label_token_ids", gold.shallow_clone())
            .with("verbalizer_ids", Tensor::from_slice(&ids));
        optimizer.zero_grad();
        let (loss, _) = run.loss(batch)?;
        loss.backward();
        optimizer.step(1e-5)?;
    }
    crate::eval::resources::peak_rss_bytes()
        .ok_or_else(|| Error::Measurement { what: "peak memory".into(), message: "this OS reports no peak RSS".into() })
}

/// The line a child prints on stdout for its parent.
pub fn child_reply(peak_rss_bytes: u64) -> String {
    serde_json::json!({ "peak_rss_bytes": peak_rss_bytes }).to_string()
}

/// Runs `child` (a command that measures one configuration and prints [`child_reply`]) and
/// returns the peak it reports; `what` names the configuration in errors.
pub fn in_child(mut child: Command, what: &str) -> Result<u64> {
    let failed = |message: String| Error::Measurement { what: what.into(), message };
    let output = child.output().map_err(|e| failed(format!("starting the process: {e}")))?;
    if !output.status.success() {
        return Err(failed(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    let reply: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| failed(format!("reading its reply: {e}")))?;
    reply["peak_rss_bytes"].as_u64().ok_or_else(|| failed(format!("no peak in its reply {reply}")))
}
