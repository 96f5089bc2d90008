//! A run's data: the few-shot training set drawn as llmft draws it, its encoded prompts, the
//! in-context demonstrations, and the eval sets, all from one [`RunConfig`].

use serde::{Deserialize, Serialize};
use tch::Device;

use super::config::RunConfig;
use crate::data::batch::{self, Batch, EncodedExample};
use crate::data::dataset::{Dataset, EvalSet};
use crate::data::prompt::Prompt;
use crate::data::sampling;
use crate::data::task::{self, DataOptions, TaskDef};
use crate::error::Result;
use crate::tokenizer::{Padding, Tokenizer};
use ftlab_sdk::{TaskInfo, Tensors};

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
    /// Rows per eval set.
    pub eval_sizes: Vec<(String, usize)>,
}

impl RunData {
    /// Loads and samples the data of `config` for `tokenizer`.
    pub fn load(config: &RunConfig, tokenizer: &Tokenizer) -> Result<Self> {
        let task = task::find(&config.task)?;
        let options = DataOptions::from_env();
        let pool = task.train_pool(&options)?;
        let positions = sampling::few_shot_positions(pool.len(), config.shots, config.data_seed)?;
        let train = pool.select(format!("{}-k{}", task.name, config.shots), &positions);
        let prompt = Prompt::new(task.prompt, task.label_names.len(), &config.prompt, tokenizer)?;
        let mut truncated = 0;
        let mut encoded = Vec::with_capacity(train.len());
        for (position, example) in train.examples.iter().enumerate() {
            let e = prompt.encode_within(tokenizer, "", example, config.train.max_length)?;
            truncated += usize::from(e.truncated_tokens > 0);
            encoded.push(EncodedExample { position, ids: e.ids, label: example.label });
        }
        let context = sampling::balanced_demonstrations(&pool, config.shots, config.data_seed)
            .map(|demos| prompt.context(demos.iter().map(|&p| &pool.examples[p])))
            .map_err(|e| e.to_string());
        let ood: Option<Vec<&str>> = config.eval.ood.as_ref().map(|v| v.iter().map(String::as_str).collect());
        let mut eval = task.eval_sets(&options, ood.as_deref())?;
        if let Some(max) = config.eval.max_examples {
            for set in &mut eval {
                limit(set, max);
            }
        }
        let summary = DataSummary {
            pool_size: pool.len(),
            train_positions: positions,
            train_truncated: truncated,
            eval_sizes: eval.iter().map(|s| (s.name.clone(), s.data.len())).collect(),
        };
        Ok(Self { task, prompt, train, encoded, context, eval, summary })
    }

    /// The task as methods see it.
    pub fn task_info(&self) -> TaskInfo {
        TaskInfo {
            name: self.task.name.into(),
            label_words: self.prompt.words.clone(),
            label_token_ids: self.prompt.word_ids.clone(),
        }
    }

    /// A batch as methods take it: its tensors and each row's rendered prompt.
    pub fn method_batch(&self, batch: &Batch, examples: &Dataset) -> Tensors {
        let mut tensors = Tensors::new()
            .with("input_ids", batch.input_ids.shallow_clone())
            .with("attention_mask", batch.attention_mask.shallow_clone())
            .with("labels", batch.labels.shallow_clone())
            .with("label_token_ids", batch.label_token_ids.shallow_clone())
            .with("verbalizer_ids", batch.verbalizer_ids.shallow_clone());
        let prompts: Vec<String> = batch.positions.iter().map(|&p| self.prompt.query(&examples.examples[p])).collect();
        tensors.json = serde_json::json!({ "prompts": prompts });
        tensors
    }

    /// The whole training set for a method's `prepare`, with the demonstrations and context.
    pub fn prepare_data(&self, tokenizer: &Tokenizer, device: Device) -> Tensors {
        let all: Vec<usize> = (0..self.encoded.len()).collect();
        let batch = batch::collate(tokenizer, &self.encoded, &all, &self.prompt.word_ids, Padding::Right, device);
        let mut data = self.method_batch(&batch, &self.train);
        let demonstrations: Vec<String> = self.train.examples.iter().map(|e| self.prompt.demonstration(e)).collect();
        data.json["demonstrations"] = demonstrations.into();
        data.json["labels_of_demonstrations"] = self.train.examples.iter().map(|e| e.label).collect::<Vec<_>>().into();
        data.json["separator"] = self.prompt.separator.clone().into();
        if let Ok(context) = &self.context {
            data.json["context"] = context.clone().into();
        }
        data
    }
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
