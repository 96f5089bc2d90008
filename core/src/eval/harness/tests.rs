//! Harness tests with scripted scorers (exact expected scores) and with the embedded model.

use tch::{Device, Kind, Tensor};

use super::*;
use crate::data::prompt::{PromptFamily, PromptSpec};
use crate::data::synthetic::SyntheticConfig;
use crate::data::task::{self, DataOptions};

fn options(metrics: Vec<Metric>) -> EvalOptions {
    EvalOptions { batch_size: 4, max_length: 256, context: String::new(), device: Device::Cpu, metrics }
}

fn small_data() -> DataOptions {
    DataOptions {
        synthetic: SyntheticConfig { seed: 3, train: 40, validation: 10, ood_per_subcase: 2 },
        ..DataOptions::from_env()
    }
}

/// A scorer whose logits put all mass on one token, whatever the input.
fn constant_scorer(token: i64, vocab: i64) -> impl FnMut(&Batch) -> Result<Tensor> {
    move |batch: &Batch| {
        let rows = batch.positions.len() as i64;
        Ok(Tensor::zeros([rows, vocab], (Kind::Float, Device::Cpu)).index_fill(1, &Tensor::from_slice(&[token]), 1.0))
    }
}

#[test]
fn a_constant_scorer_scores_as_its_label_and_matches_the_majority_baseline() {
    let tokenizer = crate::model::tiny::tokenizer().unwrap();
    let prompt = Prompt::new(PromptFamily::Nli, 2, &PromptSpec::default(), &tokenizer).unwrap();
    let sets = task::find("synthetic-nli").unwrap().eval_sets(&small_data(), None).unwrap();
    let mut scorer = constant_scorer(prompt.word_ids[0], 1024);
    let report =
        evaluate(&sets, &prompt, &tokenizer, &options(vec![Metric::MacroF1, Metric::Matthews]), &mut scorer).unwrap();
    let in_domain = &report.sets[0];
    assert_eq!((in_domain.name.as_str(), in_domain.scores.examples), ("synthetic-nli", 10));
    // 5 of 10 validation rows are label 0 (labels alternate).
    assert_eq!(in_domain.scores.verbalizer.accuracy, 0.5);
    assert_eq!(in_domain.scores.full_vocab_accuracy, Some(0.5));
    assert_eq!(in_domain.scores.verbalizer.matthews, Some(0.0));
    assert!((in_domain.scores.verbalizer.macro_f1.unwrap() - (2.0 / 3.0) / 2.0).abs() < 1e-12);
    assert_eq!(in_domain.scores.majority, in_domain.scores.verbalizer, "always-0 is the majority predictor");
    let by_name = |name: &str| in_domain.subsets.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(by_name("synthetic-nli-entailment").verbalizer.accuracy, 1.0);
    assert_eq!(by_name("synthetic-nli-non-entailment").verbalizer.accuracy, 0.0);

    let ood = &report.sets[1];
    assert_eq!((ood.name.as_str(), ood.in_domain, ood.scores.examples), ("synthetic-hans", false, 24));
    let lexical_non = ood.subsets.iter().find(|(n, _)| n == "synthetic-hans-lexical_overlap-non-entailment").unwrap();
    assert_eq!((lexical_non.1.examples, lexical_non.1.verbalizer.accuracy), (4, 0.0));
    assert!(ood.subsets.iter().any(|(n, s)| n == "synthetic-hans-cn_adverb" && s.examples == 2));
    assert!(report.resources.tokens > 0 && report.resources.wall_seconds > 0.0);
}

#[test]
fn full_vocabulary_accuracy_needs_the_gold_word_to_win_everything() {
    let tokenizer = crate::model::tiny::tokenizer().unwrap();
    let prompt = Prompt::new(PromptFamily::Nli, 2, &PromptSpec::default(), &tokenizer).unwrap();
    let sets = vec![task::find("synthetic-nli").unwrap().eval_set(&small_data(), true).unwrap()];
    let words = prompt.word_ids.clone();
    // Gold word gets 1, but an unrelated token 5 gets 2: verbalizer accuracy 1, full-vocab 0.
    let mut scorer = move |batch: &Batch| -> Result<Tensor> {
        let rows = batch.positions.len() as i64;
        let logits = Tensor::zeros([rows, 1024], (Kind::Float, Device::Cpu));
        for (row, &label) in batch.label_ids.iter().enumerate() {
            let _ = logits.get(row as i64).get(words[label]).fill_(1.0);
            let _ = logits.get(row as i64).get(5).fill_(2.0);
        }
        Ok(logits)
    };
    let report = evaluate(&sets, &prompt, &tokenizer, &options(vec![]), &mut scorer).unwrap();
    let scores = &report.sets[0].scores;
    assert_eq!((scores.verbalizer.accuracy, scores.full_vocab_accuracy), (1.0, Some(0.0)));
    assert_eq!(scores.verbalizer.macro_f1, None);
}

#[test]
fn in_context_rows_over_the_window_are_dropped_and_counted() {
    let tokenizer = crate::model::tiny::tokenizer().unwrap();
    let prompt = Prompt::new(PromptFamily::Nli, 2, &PromptSpec::default(), &tokenizer).unwrap();
    let sets = vec![task::find("synthetic-nli").unwrap().eval_set(&small_data(), true).unwrap()];
    let pool = synthetic_pool();
    let context = prompt.context(pool.examples.iter().take(4));
    let context_tokens = tokenizer.encode(&context).unwrap().len();
    let lengths: Vec<usize> =
        sets[0].data.examples.iter().map(|e| prompt.encode_icl(&tokenizer, &context, e).unwrap().len()).collect();
    let limit = lengths.iter().copied().min().unwrap();
    let expected_dropped = lengths.iter().filter(|&&n| n > limit).count();
    assert!(expected_dropped > 0 && limit > context_tokens);
    let eval = EvalOptions { max_length: limit, context, ..options(vec![]) };
    let mut scorer = constant_scorer(prompt.word_ids[1], 1024);
    let report = evaluate(&sets, &prompt, &tokenizer, &eval, &mut scorer).unwrap();
    assert_eq!(report.sets[0].dropped, expected_dropped);
    assert_eq!(report.sets[0].scores.examples, 10 - expected_dropped);

    let too_small = EvalOptions { max_length: context_tokens, ..eval };
    let err = evaluate(&sets, &prompt, &tokenizer, &too_small, &mut scorer).unwrap_err().to_string();
    assert!(err.contains("skip this context"), "{err}");
}

fn synthetic_pool() -> crate::data::Dataset {
    crate::data::synthetic::in_domain(&SyntheticConfig::default(), "train")
}

#[test]
fn the_embedded_model_is_scored_end_to_end() {
    let model = crate::model::Model::embedded_random(Default::default()).unwrap();
    let prompt = Prompt::new(PromptFamily::Nli, 2, &PromptSpec::default(), &model.tokenizer).unwrap();
    let sets = task::find("synthetic-nli").unwrap().eval_sets(&small_data(), None).unwrap();
    let mut scorer = model_scorer(&model.net);
    let report = evaluate(&sets, &prompt, &model.tokenizer, &options(vec![]), &mut scorer).unwrap();
    assert_eq!(report.sets.len(), 2);
    for set in &report.sets {
        let accuracy = set.scores.verbalizer.accuracy;
        assert!((0.0..=1.0).contains(&accuracy) && set.scores.majority.accuracy >= 0.5, "{set:?}");
    }
    assert_eq!(report.resources.device, "Cpu");
}
