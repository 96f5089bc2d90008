//! The evaluation harness: every eval set and subset of a task, scored by any function from a
//! batch to next-token logits, with accuracy over the verbalizer tokens and over the full
//! vocabulary, the task's extra metrics, the majority-class baseline beside each, and the
//! phase's time, throughput and memory.
//!
//! The scorer is `FnMut(&Batch) -> Result<Tensor>` returning `[B, V]` logits at each row's last
//! token, or `[B, C]` class scores (one column per label word, e.g. a classification head), so a method plugin, a fine-tuned model or an in-context model plug in alike;
//! [`model_scorer`] wraps an [`OptForCausalLM`] (`LogitsAt::LastToken`, no gradients).
//! With an in-context prefix, rows that would not fit the window are dropped and counted (as
//! llmft does); without one, long rows are shortened from the premise side and counted.

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::metrics::MetricValues;
use super::resources::{PhaseMeter, PhaseResources};
use crate::data::batch::{self, Batch, BatchOrder, EncodedExample};
use crate::data::dataset::EvalSet;
use crate::data::prompt::{Prompt, PromptFamily};
use crate::data::task::Metric;
use crate::error::{Error, Result};
use crate::model::{ForwardInput, LogitsAt, OptForCausalLM};
use crate::tokenizer::Tokenizer;

/// How the harness encodes and batches.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Rows per batch.
    pub batch_size: usize,
    /// The model's window in tokens (e.g. 256 as the paper's max length, or the model's).
    pub max_length: usize,
    /// In-context demonstrations put before every query (empty for none).
    pub context: String,
    /// Where batches go.
    pub device: Device,
    /// Metrics beside accuracy (the task's).
    pub metrics: Vec<Metric>,
}

/// Scores of one set or subset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    /// Examples scored.
    pub examples: usize,
    /// Argmax over the label words.
    pub verbalizer: MetricValues,
    /// Accuracy of the argmax over the whole vocabulary (the gold label word must win); `None`
    /// when the scorer returned class scores (e.g. a classification head).
    pub full_vocab_accuracy: Option<f64>,
    /// Always predicting this set's majority label.
    pub majority: MetricValues,
}

/// Scores of one eval set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SetReport {
    /// The eval set's name.
    pub name: String,
    /// Whether it is the task's own distribution.
    pub in_domain: bool,
    /// Rows shortened from the premise side to fit `max_length`.
    pub truncated: usize,
    /// Rows dropped because they cannot fit `max_length` (context + query, or a hypothesis too
    /// long even with the premise removed).
    pub dropped: usize,
    /// Rows whose scores were NaN or infinite (a diverged model): their predictions mean nothing.
    #[serde(default)]
    pub non_finite: usize,
    /// Scores over the whole set.
    pub scores: Scores,
    /// Scores per subset, by name.
    pub subsets: Vec<(String, Scores)>,
    /// Token-level loss and perplexity of a text set (the `text` task), whose `scores` are
    /// next-token accuracy against always predicting the most frequent token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<super::language::LanguageScores>,
    /// Every scored row (written as `predictions/`, not into the record).
    #[serde(skip)]
    pub predictions: Vec<Prediction>,
}

/// One scored row: what error analysis needs (lm-evaluation-harness's `--log_samples`).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The example's id in its source.
    pub id: i64,
    /// The gold label id.
    pub gold: usize,
    /// The predicted label id (argmax over the label words).
    pub predicted: usize,
    /// The score of each label word (logits, or the method's class scores).
    pub scores: Vec<f32>,
    /// The subsets the row belongs to (e.g. a HANS heuristic and label).
    pub subsets: Vec<String>,
}

/// The harness's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// One report per eval set, in-domain first.
    pub sets: Vec<SetReport>,
    /// Time, tokens/s and memory of the whole evaluation.
    pub resources: PhaseResources,
}

/// What one eval set's rows became.
struct Predictions {
    /// Every scored row.
    rows: Vec<ScoredRow>,
    /// Rows whose scores hold a NaN or an infinity.
    non_finite: usize,
}

/// One scored row of a set.
struct ScoredRow {
    /// Position in the set.
    position: usize,
    gold: usize,
    /// The verbalizer's prediction.
    predicted: usize,
    /// Whether the gold label word won over the whole vocabulary (vocabulary logits only).
    full_vocab_hit: Option<bool>,
    /// The label words' scores.
    scores: Vec<f32>,
}

/// Wraps a model as a scorer: logits at each row's last non-pad token, without gradients.
pub fn model_scorer(net: &OptForCausalLM) -> impl FnMut(&Batch) -> Result<Tensor> + '_ {
    move |batch: &Batch| {
        let input = ForwardInput {
            input_ids: Some(&batch.input_ids),
            attention_mask: Some(&batch.attention_mask),
            logits: LogitsAt::LastToken,
            ..Default::default()
        };
        let out = tch::no_grad(|| net.forward(input))?;
        Ok(out.logits.expect("LogitsAt::LastToken returns logits"))
    }
}

/// Scores every set in `sets` with `scorer`. A context that alone fills the window is an error
/// (the run should skip that context, as llmft does).
pub fn evaluate(
    sets: &[EvalSet],
    prompt: &Prompt,
    tokenizer: &Tokenizer,
    options: &EvalOptions,
    scorer: &mut dyn FnMut(&Batch) -> Result<Tensor>,
) -> Result<EvalReport> {
    if !options.context.is_empty() {
        let context_tokens = tokenizer.encode(&options.context)?.len();
        if context_tokens >= options.max_length {
            return Err(Error::Prompt(format!(
                "the in-context prefix is {context_tokens} tokens, over the {}-token window: skip this context",
                options.max_length
            )));
        }
    }
    let mut meter = PhaseMeter::start(options.device);
    let mut reports = vec![];
    for set in sets {
        if prompt.family == PromptFamily::Text {
            reports.push(super::language::score_set(set, tokenizer, options, scorer, &mut meter)?);
            continue;
        }
        let (encoded, truncated, dropped) = encode_set(set, prompt, tokenizer, options)?;
        let predictions = predict(&encoded, prompt, tokenizer, options, scorer, &mut meter)?;
        let labels = set.data.label_names.len();
        let whole: Vec<usize> = (0..set.data.len()).collect();
        let scores = score(&predictions, &whole, labels, &options.metrics);
        let subsets = set
            .subsets
            .iter()
            .map(|s| (s.name.clone(), score(&predictions, &s.positions, labels, &options.metrics)))
            .collect();
        let mut member: Vec<Vec<String>> = vec![Vec::new(); set.data.len()];
        for subset in &set.subsets {
            for &p in &subset.positions {
                member[p].push(subset.name.clone());
            }
        }
        let non_finite = predictions.non_finite;
        let predictions = (predictions.rows.into_iter())
            .map(|row| Prediction {
                id: set.data.examples[row.position].id,
                gold: row.gold,
                predicted: row.predicted,
                scores: row.scores,
                subsets: std::mem::take(&mut member[row.position]),
            })
            .collect();
        reports.push(SetReport {
            name: set.name.clone(),
            in_domain: set.in_domain,
            truncated,
            dropped,
            non_finite,
            scores,
            subsets,
            language: None,
            predictions,
        });
    }
    Ok(EvalReport { sets: reports, resources: meter.finish() })
}

/// Encodes a set's rows: (rows, truncated count, dropped count).
fn encode_set(
    set: &EvalSet,
    prompt: &Prompt,
    tokenizer: &Tokenizer,
    options: &EvalOptions,
) -> Result<(Vec<EncodedExample>, usize, usize)> {
    let (mut rows, mut truncated, mut dropped) = (vec![], 0, 0);
    for (position, example) in set.data.examples.iter().enumerate() {
        let ids = if options.context.is_empty() {
            let Some(encoded) = prompt.encode_within(tokenizer, example, options.max_length)? else {
                dropped += 1;
                continue;
            };
            truncated += usize::from(encoded.truncated_tokens > 0);
            encoded.ids
        } else {
            let ids = prompt.encode_icl(tokenizer, &options.context, example)?;
            if ids.len() > options.max_length {
                dropped += 1;
                continue;
            }
            ids
        };
        rows.push(EncodedExample::query(position, ids, example.label));
    }
    Ok((rows, truncated, dropped))
}

fn predict(
    encoded: &[EncodedExample],
    prompt: &Prompt,
    tokenizer: &Tokenizer,
    options: &EvalOptions,
    scorer: &mut dyn FnMut(&Batch) -> Result<Tensor>,
    meter: &mut PhaseMeter,
) -> Result<Predictions> {
    let (mut rows, mut non_finite) = (Vec::with_capacity(encoded.len()), 0);
    for indices in batch::plan(encoded, options.batch_size, BatchOrder::ByLength) {
        let batch = batch::collate(
            tokenizer,
            encoded,
            &indices,
            &prompt.word_ids,
            crate::tokenizer::Padding::Right,
            options.device,
        );
        let logits = scorer(&batch)?;
        let rows_in_batch = batch.positions.len() as i64;
        if logits.dim() != 2 || logits.size()[0] != rows_in_batch {
            return Err(Error::ScoresShape { found: logits.size(), rows: rows_in_batch });
        }
        non_finite += (rows_in_batch - logits.isfinite().all_dim(1, false).sum(Kind::Int64).int64_value(&[])) as usize;
        // Class scores (one column per label word) or next-token logits over the vocabulary.
        let class_scores = logits.size()[1] == prompt.word_ids.len() as i64;
        let by_class =
            if class_scores { logits.shallow_clone() } else { logits.index_select(1, &batch.verbalizer_ids) };
        let verbalizer: Vec<i64> = Vec::try_from(by_class.argmax(1, false).to_device(Device::Cpu))?;
        let flat: Vec<f32> = Vec::try_from(by_class.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))?;
        let mut scores = flat.chunks(prompt.word_ids.len().max(1));
        let full: Option<Vec<i64>> = if class_scores {
            None
        } else {
            Some(Vec::try_from(logits.argmax(1, false).to_kind(Kind::Int64).to_device(Device::Cpu))?)
        };
        for (row, &position) in batch.positions.iter().enumerate() {
            let gold = batch.label_ids[row];
            let hit = full.as_ref().map(|full| prompt.word_ids.get(gold) == Some(&full[row]));
            let scores = scores.next().map(<[f32]>::to_vec).unwrap_or_default();
            rows.push(ScoredRow { position, gold, predicted: verbalizer[row] as usize, full_vocab_hit: hit, scores });
        }
        meter.add_tokens(batch.tokens);
    }
    Ok(Predictions { rows, non_finite })
}

/// Scores the rows at `positions` (rows that were dropped are absent).
fn score(predictions: &Predictions, positions: &[usize], labels: usize, metrics: &[Metric]) -> Scores {
    let wanted: std::collections::HashSet<usize> = positions.iter().copied().collect();
    let rows: Vec<&ScoredRow> = predictions.rows.iter().filter(|r| wanted.contains(&r.position)).collect();
    let gold: Vec<usize> = rows.iter().map(|r| r.gold).collect();
    let predicted: Vec<usize> = rows.iter().map(|r| r.predicted).collect();
    let (f1, mcc) = (metrics.contains(&Metric::MacroF1), metrics.contains(&Metric::Matthews));
    let hits: Option<Vec<bool>> = rows.iter().map(|r| r.full_vocab_hit).collect();
    Scores {
        examples: rows.len(),
        verbalizer: MetricValues::of(&gold, &predicted, labels, f1, mcc),
        full_vocab_accuracy: hits
            .filter(|h| !h.is_empty())
            .map(|h| h.iter().filter(|&&x| x).count() as f64 / h.len() as f64),
        majority: MetricValues::majority_baseline(&gold, labels, f1, mcc),
    }
}

#[cfg(test)]
mod tests;
