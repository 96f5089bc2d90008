//! Language-model scores of a text set (the `text` task): token-level cross-entropy,
//! perplexity and next-token accuracy over the tokens each row's loss reads (a document's
//! tokens after `</s>`, or a response), pooled over tokens as lm-evaluation-harness pools
//! `loglikelihood_rolling`. The scorer returns logits at every position, `[B, T, V]`.

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::harness::{EvalOptions, Prediction, Scores, SetReport};
use super::metrics::MetricValues;
use super::resources::PhaseMeter;
use crate::data::batch::{self, Batch, BatchOrder};
use crate::data::dataset::EvalSet;
use crate::data::text;
use crate::error::{Error, Result};
use crate::tokenizer::{Padding, Tokenizer};
use ftlab_sdk::next_token_targets;

/// Token-level scores of one text set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LanguageScores {
    /// Tokens scored.
    pub tokens: usize,
    /// Mean cross-entropy per token (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
}

/// Scores `set` (a text set) with `scorer`: every row within `options.max_length`, long rows cut
/// at the end; rows with nothing to predict are dropped and counted.
pub fn score_set(
    set: &EvalSet,
    tokenizer: &Tokenizer,
    options: &EvalOptions,
    scorer: &mut dyn FnMut(&Batch) -> Result<Tensor>,
    meter: &mut PhaseMeter,
) -> Result<SetReport> {
    let (mut encoded, mut dropped, mut truncated) = (Vec::new(), 0, 0);
    for (position, example) in set.data.examples.iter().enumerate() {
        match text::encode(tokenizer, position, example, options.max_length)? {
            Some((row, cut)) => {
                truncated += usize::from(cut);
                encoded.push(row);
            }
            None => dropped += 1,
        }
    }
    let (mut predictions, mut non_finite) = (Vec::with_capacity(encoded.len()), 0);
    let (mut loss_sum, mut tokens, mut hits) = (0.0, 0usize, 0usize);
    let mut counts = std::collections::HashMap::<i64, usize>::new();
    for indices in batch::plan(&encoded, options.batch_size, BatchOrder::ByLength) {
        let batch = batch::collate(tokenizer, &encoded, &indices, &[], Padding::Right, options.device);
        let logits = scorer(&batch)?;
        let [rows, width] = batch.input_ids.size()[..] else { unreachable!("batches are 2-D") };
        if logits.dim() != 3 || logits.size()[..2] != [rows, width] {
            return Err(Error::ScoresShape { found: logits.size(), rows });
        }
        // Per token: its negative log-likelihood and whether it was the argmax.
        let (targets, scored) = next_token_targets(&batch.input_ids, &batch.attention_mask, &batch.target_starts);
        let logits = logits.narrow(1, 0, width - 1).to_kind(Kind::Float);
        let nll = -logits.log_softmax(-1, Kind::Float).gather(2, &targets.unsqueeze(2), false).squeeze_dim(2);
        let hit = logits.argmax(-1, false).eq_tensor(&targets);
        let kept = nll.masked_fill(&scored.logical_not(), 0.0);
        let row_nll: Vec<f64> = Vec::try_from(kept.sum_dim_intlist(1, false, Kind::Double).to_device(Device::Cpu))?;
        let row_tokens: Vec<i64> = Vec::try_from(scored.sum_dim_intlist(1, false, Kind::Int64).to_device(Device::Cpu))?;
        hits += hit.logical_and(&scored).sum(Kind::Int64).int64_value(&[]) as usize;
        for t in Vec::<i64>::try_from(targets.masked_select(&scored).to_device(Device::Cpu))? {
            *counts.entry(t).or_default() += 1;
        }
        for (row, &position) in batch.positions.iter().enumerate() {
            let (sum, n) = (row_nll[row], row_tokens[row] as usize);
            if !sum.is_finite() {
                non_finite += 1;
                continue;
            }
            loss_sum += sum;
            tokens += n;
            // A row's score is its mean token loss: which documents the model finds hard.
            let id = set.data.examples[position].id;
            let scores = vec![(sum / n.max(1) as f64) as f32];
            predictions.push(Prediction { id, gold: 0, predicted: 0, scores, subsets: Vec::new() });
        }
        meter.add_tokens(batch.tokens);
    }
    let loss = loss_sum / tokens.max(1) as f64;
    let majority = counts.values().copied().max().unwrap_or(0);
    let share = |n: usize| n as f64 / tokens.max(1) as f64;
    let values = |accuracy| MetricValues { accuracy, macro_f1: None, matthews: None };
    Ok(SetReport {
        name: set.name.clone(),
        in_domain: set.in_domain,
        truncated,
        dropped,
        non_finite,
        scores: Scores {
            examples: predictions.len(),
            verbalizer: values(share(hits)),
            full_vocab_accuracy: None,
            majority: values(share(majority)),
        },
        subsets: Vec::new(),
        language: Some(LanguageScores { tokens, loss, perplexity: loss.exp() }),
        predictions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::{Dataset, Example};

    /// Uniform logits over V tokens cost ln V nats per token: perplexity V, counted over the
    /// tokens each row's loss reads (every token after `</s>` of a document, the response of a
    /// prompt/response row); a scorer of the wrong shape is refused.
    #[test]
    fn uniform_logits_have_the_vocabulary_size_as_perplexity() {
        let tokenizer = crate::model::tiny::tokenizer().unwrap();
        let rows = vec![
            Example::new(0, "The cat sat on the mat.", None, 0),
            Example::new(1, "The doctor met the lawyer. ?", Some(" Yes".into()), 0),
        ];
        let data = Dataset::new("text/validation", &crate::data::text::LABEL_NAMES, rows.clone());
        let set = EvalSet { name: "text".into(), in_domain: true, data, subsets: vec![] };
        let options =
            EvalOptions { batch_size: 2, max_length: 64, context: String::new(), device: Device::Cpu, metrics: vec![] };
        let vocab = 1024;
        let mut uniform = |b: &Batch| {
            Ok(Tensor::zeros([b.input_ids.size()[0], b.input_ids.size()[1], vocab], (Kind::Float, Device::Cpu)))
        };
        let mut meter = PhaseMeter::start(Device::Cpu);
        let report = score_set(&set, &tokenizer, &options, &mut uniform, &mut meter).unwrap();
        let language = report.language.unwrap();
        let document = tokenizer.encode(&rows[0].text1).unwrap().len() - 1;
        let response = tokenizer.encode_plain(" Yes").unwrap().len();
        assert_eq!(language.tokens, document + response);
        assert!((language.loss - (vocab as f64).ln()).abs() < 1e-5, "{}", language.loss);
        assert!((language.perplexity - vocab as f64).abs() < 1e-3, "{}", language.perplexity);
        let mut last_token = |b: &Batch| Ok(Tensor::zeros([b.input_ids.size()[0], vocab], (Kind::Float, Device::Cpu)));
        assert!(score_set(&set, &tokenizer, &options, &mut last_token, &mut meter).is_err());
    }
}
