//! The cost of training with a method: a few optimizer steps on corpus text with an objective
//! and adapters — tokens/s, peak memory, trainable parameters, optimizer state, exported adapter
//! size. A process's peak only grows, so each configuration is measured in its own process: the
//! parent runs [`in_child`] per configuration, each child runs [`training_cost`] and prints it
//! as JSON.

use std::process::Command;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{random_model, Shape};
use crate::error::{Error, Result};
use crate::methods::{MethodRun, MethodSpec};
use crate::run::optim::AdamW;

/// What training with a configuration costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingCost {
    /// Peak resident memory of the process.
    pub peak_rss_bytes: u64,
    /// Training tokens per second over the steps after the first (a warm-up).
    pub tokens_per_s: f64,
    /// Trainable scalars.
    pub trainable_parameters: i64,
    /// AdamW's two moments for them.
    pub optimizer_state_bytes: i64,
    /// The exported adapter's files (0 when nothing exports).
    pub adapter_bytes: u64,
}

impl TrainingCost {
    /// One configuration measured several times: its fastest tokens/s and its smallest peak
    /// memory, the measurements least disturbed by whatever else the machine runs (on a shared
    /// 2-core machine one configuration measured 25% apart within minutes).
    pub fn best(runs: &[TrainingCost]) -> Option<TrainingCost> {
        let mut best = runs.first()?.clone();
        for run in &runs[1..] {
            best.tokens_per_s = best.tokens_per_s.max(run.tokens_per_s);
            best.peak_rss_bytes = best.peak_rss_bytes.min(run.peak_rss_bytes);
        }
        Some(best)
    }
}

/// Trains `steps` steps of `objective` with `adapters` (none: every parameter) on rows of the
/// embedded corpus with random yes/no answers (after `prepare` on the same rows as the training
/// set), with activation checkpointing when `checkpoint`, and measures the cost.
pub fn training_cost(
    shape: &Shape,
    objective: &MethodSpec,
    adapters: &[MethodSpec],
    steps: usize,
    checkpoint: bool,
) -> Result<TrainingCost> {
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
    let labels = Tensor::randint(2, [shape.batch], (Kind::Int64, Device::Cpu));
    let gold = Tensor::from_slice(&ids).index_select(0, &labels);
    let (input_ids, texts) = Texts::of_corpus(&model.tokenizer, shape, &labels, &words)?;
    run.prepare(texts.prepare_data())?;
    run.state.checkpoint = checkpoint;
    run.set_train(true)?;
    let trainable = run.trainable();
    let trainable_parameters = trainable.iter().map(|(_, t)| t.numel() as i64).sum();
    let optimizer_state_bytes =
        trainable.iter().map(|(_, t)| 2 * (t.numel() * t.kind().elt_size_in_bytes()) as i64).sum();
    let mut optimizer = AdamW::new(trainable, &Default::default())?;
    let mut timed = (0.0, 0);
    for step in 0..steps.max(1) {
        let start = std::time::Instant::now();
        let mut batch = ftlab_sdk::Tensors::new()
            .with("input_ids", input_ids.shallow_clone())
            .with("attention_mask", input_ids.ones_like())
            .with("labels", labels.shallow_clone())
            .with("label_token_ids", gold.shallow_clone())
            .with("verbalizer_ids", Tensor::from_slice(&ids));
        batch.json = texts.batch_json();
        optimizer.zero_grad();
        let (loss, _) = run.loss(batch)?;
        loss.f_backward()?;
        optimizer.step(1e-5)?;
        if step > 0 || steps == 1 {
            timed = (timed.0 + start.elapsed().as_secs_f64(), timed.1 + 1);
        }
    }
    let folder = std::env::temp_dir().join(format!("ftlab-bench-adapter-{}", std::process::id()));
    let exported = run.export_adapters(&folder);
    let adapter_bytes = (exported.iter().flatten())
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .filter_map(|f| f.metadata().ok().map(|m| m.len()))
        .sum();
    let _ = std::fs::remove_dir_all(&folder);
    exported?;
    let peak_rss_bytes = crate::eval::resources::peak_rss_bytes().ok_or_else(|| Error::Measurement {
        what: "peak memory".into(),
        message: "this OS reports no peak RSS".into(),
    })?;
    let tokens = (shape.batch * shape.seq) as f64 * timed.1 as f64;
    Ok(TrainingCost {
        peak_rss_bytes,
        tokens_per_s: tokens / timed.0.max(1e-9),
        trainable_parameters,
        optimizer_state_bytes,
        adapter_bytes,
    })
}

/// The batch as text too, for objectives that read text rather than ids (CPT encodes its
/// queries after a context of demonstrations): rows of the embedded corpus, whose decoded text
/// encodes back to the same tokens, each row with its answer as a demonstration.
struct Texts {
    prompts: Vec<String>,
    demonstrations: Vec<String>,
    labels: Vec<i64>,
}

impl Texts {
    const SEPARATOR: &'static str = "\n\n";

    /// `shape.batch` rows of `shape.seq` tokens of the embedded corpus (repeated as needed), as
    /// ids `[batch, seq]` and as text, answered by `labels`.
    fn of_corpus(
        tokenizer: &crate::tokenizer::Tokenizer,
        shape: &Shape,
        labels: &Tensor,
        words: &[&str],
    ) -> Result<(Tensor, Self)> {
        let corpus = tokenizer.encode_plain(&crate::model::tiny::CORPUS.replace('\n', " "))?;
        let stream: Vec<i64> = corpus.iter().copied().cycle().take((shape.batch * shape.seq) as usize).collect();
        let prompts = stream.chunks(shape.seq as usize).map(|row| tokenizer.decode(row)).collect::<Result<Vec<_>>>()?;
        let labels = Vec::<i64>::try_from(labels).map_err(Error::from)?;
        let demonstrations = prompts.iter().zip(&labels).map(|(p, &l)| format!("{p}{}", words[l as usize])).collect();
        let ids = Tensor::from_slice(&stream).view([shape.batch, shape.seq]);
        Ok((ids, Self { prompts, demonstrations, labels }))
    }

    /// What `prepare` receives in a run, for this batch as the training set.
    fn prepare_data(&self) -> ftlab_sdk::Tensors {
        let mut data = ftlab_sdk::Tensors::new();
        data.json = serde_json::json!({
            "prompts": self.prompts,
            "icl_prompts": self.prompts,
            "demonstrations": self.demonstrations,
            "demonstration_prompts": self.prompts,
            "labels_of_demonstrations": self.labels,
            "separator": Self::SEPARATOR,
            "context": self.demonstrations.iter().map(|d| format!("{d}{}", Self::SEPARATOR)).collect::<String>(),
        });
        data
    }

    /// The batch's text metadata.
    fn batch_json(&self) -> serde_json::Value {
        serde_json::json!({ "prompts": self.prompts, "icl_prompts": self.prompts })
    }
}

/// Runs `child` (a command that measures one configuration and prints its [`TrainingCost`] as
/// JSON) and returns it; `what` names the configuration in errors.
pub fn in_child(mut child: Command, what: &str) -> Result<TrainingCost> {
    let failed = |message: String| Error::Measurement { what: what.into(), message };
    let output = child.output().map_err(|e| failed(format!("starting the process: {e}")))?;
    if !output.status.success() {
        return Err(failed(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| failed(format!("reading its reply: {e}")))
}

/// `ftlab bench methods`' measurements as a record: what `ftlab results plot --kind methods`
/// draws, from a `bench-methods.json` in the folders it is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodsRecord {
    /// Sequences per batch.
    pub batch: i64,
    /// Tokens per sequence.
    pub seq: i64,
    /// Optimizer steps per method (the first untimed).
    pub steps: usize,
    /// Whether the decoder layers' activations were checkpointed (recomputed in the backward
    /// pass).
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Rounds: each configuration was measured this many times, once per round.
    #[serde(default = "one")]
    pub rounds: usize,
    /// Each configuration measured (`full`, an objective trained in full, or an adapter under
    /// pbft) and its cost.
    pub rows: Vec<MethodCost>,
}

fn one() -> usize {
    1
}

/// One configuration of a [`MethodsRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodCost {
    /// `full`, an objective's name or an adapter's.
    pub method: String,
    /// What it cost: the best of its measurements ([`TrainingCost::best`]).
    pub cost: TrainingCost,
    /// Every measurement, one per round.
    #[serde(default)]
    pub runs: Vec<TrainingCost>,
}

impl MethodsRecord {
    /// The file name in a results folder.
    pub const FILE: &'static str = "bench-methods.json";

    /// Writes `dir/bench-methods.json` (atomically).
    pub fn write(&self, dir: &std::path::Path) -> Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let path = dir.join(Self::FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Results(e.to_string()))?;
        crate::run::record::write_atomically(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Every `bench-methods.json` directly in one of `dirs`, read.
    pub fn find(dirs: &[std::path::PathBuf]) -> Result<Vec<(std::path::PathBuf, Self)>> {
        let mut found = Vec::new();
        for path in dirs.iter().map(|d| d.join(Self::FILE)).filter(|p| p.is_file()) {
            let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
            found.push((path.clone(), serde_json::from_str(&text).map_err(Error::json(&path))?));
        }
        Ok(found)
    }
}
