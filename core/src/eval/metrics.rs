//! Classification metrics over label ids: accuracy, macro-F1 (QQP, PAWS-QQP) and the
//! Matthews correlation coefficient (CoLA), with the majority-class baseline of each.
//!
//! Definitions follow scikit-learn, which llmft's GLUE metrics call: macro-F1 averages the
//! per-label F1 over the labels that occur in the gold or the predicted labels, an undefined
//! precision or recall counting as 0; MCC is the multi-class form
//! `(c·s − Σ pₖtₖ) / √((s² − Σ pₖ²)(s² − Σ tₖ²))`, 0 when a factor of the denominator is 0.

use serde::Serialize;

/// Fraction of predictions equal to the gold label (0 for no examples).
pub fn accuracy(gold: &[usize], predicted: &[usize]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    gold.iter().zip(predicted).filter(|(g, p)| g == p).count() as f64 / gold.len() as f64
}

/// Counts per label: true positives, gold occurrences and predicted occurrences.
fn label_counts(gold: &[usize], predicted: &[usize], labels: usize) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let width = labels.max(gold.iter().chain(predicted).max().map_or(0, |m| m + 1));
    let (mut hits, mut gold_counts, mut predicted_counts) = (vec![0; width], vec![0; width], vec![0; width]);
    for (&g, &p) in gold.iter().zip(predicted) {
        gold_counts[g] += 1;
        predicted_counts[p] += 1;
        if g == p {
            hits[g] += 1;
        }
    }
    (hits, gold_counts, predicted_counts)
}

/// Macro-averaged F1 over the labels present in `gold` or `predicted`.
pub fn macro_f1(gold: &[usize], predicted: &[usize], labels: usize) -> f64 {
    let (hits, gold_counts, predicted_counts) = label_counts(gold, predicted, labels);
    let present: Vec<usize> = (0..hits.len()).filter(|&l| gold_counts[l] + predicted_counts[l] > 0).collect();
    if present.is_empty() {
        return 0.0;
    }
    let f1 = |label: usize| {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (precision, recall) = (ratio(hits[label], predicted_counts[label]), ratio(hits[label], gold_counts[label]));
        if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        }
    };
    present.iter().map(|&l| f1(l)).sum::<f64>() / present.len() as f64
}

/// Matthews correlation coefficient (multi-class form; 0 when undefined).
pub fn matthews(gold: &[usize], predicted: &[usize], labels: usize) -> f64 {
    let (hits, gold_counts, predicted_counts) = label_counts(gold, predicted, labels);
    let s = gold.len() as f64;
    let c = hits.iter().sum::<usize>() as f64;
    let dot = |a: &[usize], b: &[usize]| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>();
    let covariance = c * s - dot(&predicted_counts, &gold_counts);
    let predicted_variance = s * s - dot(&predicted_counts, &predicted_counts);
    let gold_variance = s * s - dot(&gold_counts, &gold_counts);
    if predicted_variance == 0.0 || gold_variance == 0.0 {
        return 0.0;
    }
    covariance / (predicted_variance * gold_variance).sqrt()
}

/// The most frequent gold label (the smallest id on ties), `None` for no examples.
pub fn majority_label(gold: &[usize]) -> Option<usize> {
    let (_, counts, _) = label_counts(gold, gold, 0);
    (0..counts.len()).filter(|&l| counts[l] > 0).max_by_key(|&l| (counts[l], std::cmp::Reverse(l)))
}

/// Metric values of one set of predictions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MetricValues {
    /// Accuracy.
    pub accuracy: f64,
    /// Macro-F1, when the task reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub macro_f1: Option<f64>,
    /// Matthews correlation, when the task reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matthews: Option<f64>,
}

impl MetricValues {
    /// Accuracy and, when asked for, macro-F1 and MCC of `predicted` against `gold`.
    pub fn of(gold: &[usize], predicted: &[usize], labels: usize, with_f1: bool, with_mcc: bool) -> Self {
        Self {
            accuracy: accuracy(gold, predicted),
            macro_f1: with_f1.then(|| macro_f1(gold, predicted, labels)),
            matthews: with_mcc.then(|| matthews(gold, predicted, labels)),
        }
    }

    /// The same metrics for always predicting the majority label of `gold`.
    pub fn majority_baseline(gold: &[usize], labels: usize, with_f1: bool, with_mcc: bool) -> Self {
        let constant = vec![majority_label(gold).unwrap_or(0); gold.len()];
        Self::of(gold, &constant, labels, with_f1, with_mcc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLD: [usize; 10] = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1];
    const PRED: [usize; 10] = [0, 0, 0, 0, 1, 1, 1, 1, 1, 0];

    /// By hand: tp₀ = 4, tp₁ = 3; gold 6/4, predicted 5/5.
    #[test]
    fn binary_metrics_match_hand_computation() {
        assert_eq!(accuracy(&GOLD, &PRED), 0.7);
        // F1₀ = 2·(4/5)(4/6)/((4/5)+(4/6)) = 8/11; F1₁ = 2·(3/5)(3/4)/((3/5)+(3/4)) = 2/3.
        let expected_f1 = (8.0 / 11.0 + 2.0 / 3.0) / 2.0;
        assert!((macro_f1(&GOLD, &PRED, 2) - expected_f1).abs() < 1e-12);
        // TP = 3, TN = 4, FP = 2, FN = 1: (12 − 2) / √(5·4·6·5) = 10 / √600.
        assert!((matthews(&GOLD, &PRED, 2) - 10.0 / 600f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn majority_baseline_by_hand() {
        let baseline = MetricValues::majority_baseline(&GOLD, 2, true, true);
        assert_eq!(baseline.accuracy, 0.6);
        // Always 0: F1₀ = 2·0.6·1/1.6 = 0.75, F1₁ = 0 → 0.375; MCC undefined → 0.
        assert!((baseline.macro_f1.unwrap() - 0.375).abs() < 1e-12);
        assert_eq!(baseline.matthews, Some(0.0));
        assert_eq!(majority_label(&[1, 0, 1, 0]), Some(0), "ties go to the smallest id");
        assert_eq!(majority_label(&[]), None);
    }

    #[test]
    fn three_class_and_degenerate_cases() {
        let gold = [0, 1, 2, 2];
        let predicted = [0, 2, 2, 1];
        // c = 2, s = 4, t = (1,1,2), p = (1,1,2): (8 − 6) / (16 − 6) = 0.2.
        assert!((matthews(&gold, &predicted, 3) - 0.2).abs() < 1e-12);
        // F1₀ = 1, F1₁ = 0, F1₂ = 2·0.5·0.5/1 = 0.5 → 0.5.
        assert!((macro_f1(&gold, &predicted, 3) - 0.5).abs() < 1e-12);
        assert_eq!(matthews(&[1, 1], &[1, 1], 2), 0.0);
        assert_eq!(macro_f1(&[1, 1], &[1, 1], 2), 1.0, "labels absent from both are not averaged");
        assert_eq!(accuracy(&[], &[]), 0.0);
    }
}
