//! A run's data: the few-shot training set drawn as llmft draws it, its encoded prompts, the
//! in-context demonstrations, and the eval sets, all from one [`RunConfig`].

use serde::{Deserialize, Serialize};
use tch::Device;

use super::config::{RunConfig, TrainConfig};
use crate::data::batch::{self, Batch, EncodedExample};
use crate::data::dataset::{Dataset, EvalSet, Example};
use crate::data::prompt::{Prompt, PromptFamily};
use crate::data::sampling;
use crate::data::source::{HubSnapshot, LocalSource};
use crate::data::task::{self, DataOptions, TaskDef};
use crate::data::text;
use crate::error::Result;
use crate::tokenizer::{Padding, Tokenizer};
use ftlab_sdk::{Inputs, TaskInfo, Tensors};

/// Everything a run reads.
pub struct RunData {
    /// The task's definition.
    pub task: &'static TaskDef,
    /// The checked prompt and verbalizer.
    pub prompt: Prompt,
    /// The k-shot training set, in sampling order.
    pub train: Dataset,
    /// Its encoded prompts.
    pub encoded: Vec<EncodedExample>,
    /// Unlabelled training-split inputs, disjoint from `train` (their labels are never shown to
    /// methods).
    pub unlabelled: Dataset,
    /// Their encoded prompts.
    pub unlabelled_encoded: Vec<EncodedExample>,
    /// The training pool (for in-context demonstrations).
    pool: Dataset,
    /// In-context demonstrations (balanced, shuffled), or why there are none.
    pub context: std::result::Result<String, String>,
    /// Eval sets, in-domain first.
    pub eval: Vec<EvalSet>,
    /// Facts for the record.
    pub summary: DataSummary,
}

/// What the record says about the data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataSummary {
    /// Pool the training set was drawn from.
    pub pool_size: usize,
    /// Positions of the training examples in the pool, in sampling order.
    pub train_positions: Vec<usize>,
    /// Training prompts shortened to fit `train.max_length`.
    pub train_truncated: usize,
    /// Training rows that cannot fit `train.max_length` even without their premise, left out.
    #[serde(default)]
    pub train_dropped: usize,
    /// Rows per eval set.
    pub eval_sizes: Vec<(String, usize)>,
    /// Unlabelled inputs available to objectives that train on them (from the training split,
    /// or `train.unlabelled_file`).
    #[serde(default)]
    pub unlabelled_inputs: usize,
    /// The user's data files the run read, with their SHA-256, so a result names its data.
    #[serde(default)]
    pub files: Vec<DataFile>,
    /// The hub files the run read (training pool and eval sets), at the commits read.
    #[serde(default)]
    pub hub_files: Vec<HubSnapshot>,
}

/// A data file and its content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// The file as given.
    pub path: std::path::PathBuf,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
}

impl DataFile {
    /// Hashes `path`.
    pub fn of(path: &std::path::Path) -> Result<Self> {
        Ok(Self { path: path.into(), sha256: super::record::sha256_of(path)? })
    }
}

impl RunData {
    /// Loads and samples the data of `config` for `tokenizer`, from the user's HF cache.
    pub fn load(config: &RunConfig, tokenizer: &Tokenizer) -> Result<Self> {
        let task = task::find(&config.task)?;
        let local =
            config.file.as_deref().map(|f| LocalSource::mapped(f, &config.columns, task.fields())).transpose()?;
        Self::load_from(config, tokenizer, &DataOptions { local, ..DataOptions::from_env() })
    }

    /// Like [`RunData::load`], with where the task's rows come from given (a hub cache, the
    /// synthetic task's sizes).
    pub fn load_from(config: &RunConfig, tokenizer: &Tokenizer, options: &DataOptions) -> Result<Self> {
        let task = task::find(&config.task)?;
        let pool = task.train_pool(options)?;
        // Documents have no classes to draw a few-shot set from: `shots` caps how many train.
        let shots = if task.prompt == PromptFamily::Text { config.shots.min(pool.len()) } else { config.shots };
        let positions = sampling::few_shot_positions(pool.len(), shots, config.data_seed)?;
        let mut train = pool.select(format!("{}-k{}", task.name, config.shots), &positions);
        let prompt = Prompt::new(task.prompt, task.label_names.len(), &config.prompt, tokenizer)?;
        let (encoded, fitted) = encode(&prompt, tokenizer, &mut train, config.train.max_length)?;
        let mut unlabelled = match &config.train.unlabelled_file {
            None => draw_unlabelled(&pool, &positions, config.train.unlabelled, config.data_seed)?,
            Some(path) => unlabelled_from_file(task, path, &config.train)?,
        };
        let (unlabelled_encoded, _) = encode(&prompt, tokenizer, &mut unlabelled, config.train.max_length)?;
        let context = sampling::balanced_demonstrations(&pool, config.shots, config.data_seed)
            .map(|demos| prompt.context(demos.iter().map(|&p| &pool.examples[p])))
            .map_err(|e| e.to_string());
        let ood: Option<Vec<&str>> = config.eval.ood.as_ref().map(|v| v.iter().map(String::as_str).collect());
        let mut eval = task.eval_sets(options, ood.as_deref())?;
        if let Some(max) = config.eval.max_examples {
            for set in &mut eval {
                limit(set, max);
            }
        }
        let summary = DataSummary {
            pool_size: pool.len(),
            train_positions: positions,
            files: options
                .local
                .iter()
                .map(|l| l.path.as_path())
                .chain(config.train.unlabelled_file.as_deref())
                .map(DataFile::of)
                .collect::<Result<_>>()?,
            train_truncated: fitted.truncated,
            train_dropped: fitted.dropped,
            eval_sizes: eval.iter().map(|s| (s.name.clone(), s.data.len())).collect(),
            unlabelled_inputs: unlabelled.len(),
            hub_files: {
                let mut all: Vec<HubSnapshot> =
                    (pool.hub_files.iter()).chain(eval.iter().flat_map(|s| &s.data.hub_files)).cloned().collect();
                all.sort();
                all.dedup();
                all
            },
        };
        Ok(Self { task, prompt, train, encoded, unlabelled, unlabelled_encoded, pool, context, eval, summary })
    }

    /// The task as methods see it.
    pub fn task_info(&self) -> TaskInfo {
        TaskInfo {
            name: self.task.name.into(),
            label_words: self.prompt.words.clone(),
            label_token_ids: self.prompt.word_ids.clone(),
        }
    }

    /// What an objective trains on: the labelled set, or the unlabelled inputs.
    pub fn training_set(&self, inputs: Inputs) -> (&[EncodedExample], &Dataset) {
        match inputs {
            Inputs::Labelled => (&self.encoded, &self.train),
            Inputs::Unlabelled => (&self.unlabelled_encoded, &self.unlabelled),
        }
    }

    /// `k` balanced, shuffled demonstrations from the pool as an in-context prefix.
    pub fn context_of(&self, k: usize, data_seed: u32) -> Result<String> {
        let demos = sampling::balanced_demonstrations(&self.pool, k, data_seed)?;
        Ok(self.prompt.context(demos.iter().map(|&p| &self.pool.examples[p])))
    }

    /// A batch as methods take it: its tensors and each row's rendered prompts. With
    /// `hide_labels` (unlabelled inputs) the label tensors hold -1.
    pub fn method_batch(&self, batch: &Batch, examples: &Dataset, hide_labels: bool) -> Tensors {
        let rows: Vec<&Example> = batch.positions.iter().map(|&p| &examples.examples[p]).collect();
        method_tensors(batch, Queries::of(&self.prompt, rows), hide_labels)
    }

    /// The whole training set for a method's `prepare`, with the demonstrations and context.
    pub fn prepare_data(&self, tokenizer: &Tokenizer, device: Device) -> Tensors {
        let all: Vec<usize> = (0..self.encoded.len()).collect();
        let batch = batch::collate(tokenizer, &self.encoded, &all, &self.prompt.word_ids, Padding::Right, device);
        let mut data = self.method_batch(&batch, &self.train, false);
        let demonstrations: Vec<String> = self.train.examples.iter().map(|e| self.prompt.demonstration(e)).collect();
        data.json["demonstrations"] = demonstrations.into();
        data.json["demonstration_prompts"] = data.json["prompts"].clone();
        data.json["labels_of_demonstrations"] = self.train.examples.iter().map(|e| e.label).collect::<Vec<_>>().into();
        data.json["separator"] = self.prompt.separator.clone().into();
        if let Ok(context) = &self.context {
            data.json["context"] = context.clone().into();
        }
        let unlabelled = self.unlabelled_encoded.iter().map(|e| &self.unlabelled.examples[e.position]);
        let unlabelled = Queries::of(&self.prompt, unlabelled.collect());
        data.json["unlabelled"] = unlabelled.prompts.into();
        data.json["unlabelled_icl"] = unlabelled.icl.into();
        data
    }
}

/// Rows rendered as fine-tuning queries (`prompts`) and as in-context queries (`icl_prompts`,
/// read after a context; they differ only where the prompt's compat says so).
#[derive(Debug, Clone)]
pub struct Queries {
    /// What fine-tuning and zero-shot scoring read.
    pub prompts: Vec<String>,
    /// What an in-context query reads after its context.
    pub icl: Vec<String>,
}

impl Queries {
    /// `rows` rendered with `prompt`.
    pub fn of(prompt: &Prompt, rows: Vec<&Example>) -> Self {
        Self {
            prompts: rows.iter().map(|e| prompt.query(e)).collect(),
            icl: rows.iter().map(|e| prompt.icl_query(e)).collect(),
        }
    }
}

/// The tensors and JSON a method receives for `batch` (see `ftlab_sdk::Batch`): the rows'
/// `prompts` and `icl_prompts`; with `hide_labels` (unlabelled inputs) the label tensors hold -1.
pub fn method_tensors(batch: &Batch, queries: Queries, hide_labels: bool) -> Tensors {
    let (labels, gold_words) = if hide_labels {
        (batch.labels.full_like(-1), batch.label_token_ids.full_like(-1))
    } else {
        (batch.labels.shallow_clone(), batch.label_token_ids.shallow_clone())
    };
    let mut tensors = Tensors::new()
        .with("input_ids", batch.input_ids.shallow_clone())
        .with("attention_mask", batch.attention_mask.shallow_clone())
        .with("labels", labels)
        .with("label_token_ids", gold_words)
        .with("verbalizer_ids", batch.verbalizer_ids.shallow_clone())
        .with("target_start", batch.target_starts.shallow_clone());
    tensors.json = serde_json::json!({ "prompts": queries.prompts, "icl_prompts": queries.icl });
    tensors
}

/// Encodes every example's prompt within `max_length`; returns them and how many were shortened.
/// Encodes `data`'s prompts within `max_length` tokens; a shortened premise replaces the
/// example's own, so the text methods read is the text the ids encode.
fn encode(
    prompt: &Prompt,
    tokenizer: &Tokenizer,
    data: &mut Dataset,
    max_length: usize,
) -> Result<(Vec<EncodedExample>, Fitted)> {
    let mut fitted = Fitted::default();
    let mut encoded = Vec::with_capacity(data.len());
    for (position, example) in data.examples.iter_mut().enumerate() {
        if prompt.family == PromptFamily::Text {
            match text::encode(tokenizer, position, example, max_length)? {
                Some((row, cut)) => {
                    fitted.truncated += usize::from(cut);
                    encoded.push(row);
                }
                None => fitted.dropped += 1,
            }
            continue;
        }
        let Some(e) = prompt.encode_within(tokenizer, example, max_length)? else {
            fitted.dropped += 1;
            continue;
        };
        fitted.truncated += usize::from(e.truncated_tokens > 0);
        if let Some(premise) = e.premise {
            example.text1 = premise;
        }
        encoded.push(EncodedExample::query(position, e.ids, example.label));
    }
    if fitted.dropped > 0 {
        tracing::warn!("{}: {} row(s) cannot fit {max_length} tokens and are left out", data.name, fitted.dropped);
    }
    Ok((encoded, fitted))
}

/// How a set's rows were fitted to the length limit.
#[derive(Debug, Default)]
struct Fitted {
    /// Rows shortened from the premise side.
    truncated: usize,
    /// Rows that cannot fit even without a premise, left out.
    dropped: usize,
}

/// Up to `count` pool examples outside the labelled `taken` positions, drawn as the few-shot
/// set is (numpy's `choice`) with the next data seed, so they never overlap it.
fn draw_unlabelled(pool: &Dataset, taken: &[usize], count: usize, data_seed: u32) -> Result<Dataset> {
    let taken: std::collections::HashSet<usize> = taken.iter().copied().collect();
    let rest: Vec<usize> = (0..pool.len()).filter(|p| !taken.contains(p)).collect();
    let picks = sampling::few_shot_positions(rest.len(), count.min(rest.len()), data_seed.wrapping_add(1))?;
    let positions: Vec<usize> = picks.into_iter().map(|i| rest[i]).collect();
    Ok(pool.select(format!("{}-unlabelled", pool.name), &positions))
}

/// The first `train.unlabelled` inputs of a user's file.
fn unlabelled_from_file(task: &TaskDef, path: &std::path::Path, train: &TrainConfig) -> Result<Dataset> {
    let source = LocalSource::mapped(path, &train.unlabelled_columns, task.fields())?;
    let inputs = source.load_inputs(&format!("{}-unlabelled", task.name), task.label_names)?;
    let first: Vec<usize> = (0..inputs.len().min(train.unlabelled)).collect();
    Ok(inputs.select(inputs.name.clone(), &first))
}

/// Keeps at most `max` rows of an eval set, drawn as llmft's `max_eval_samples` does.
fn limit(set: &mut EvalSet, max: usize) {
    if set.data.len() <= max {
        return;
    }
    let mut keep = sampling::subsample_positions(set.data.len(), max);
    keep.sort_unstable();
    let data = set.data.select(set.data.name.clone(), &keep);
    set.subsets = set
        .subsets
        .iter()
        .map(|s| {
            let positions = keep.iter().enumerate().filter(|(_, p)| s.positions.contains(p)).map(|(i, _)| i).collect();
            crate::data::dataset::Subset { name: s.name.clone(), positions }
        })
        .collect();
    set.data = data;
}
