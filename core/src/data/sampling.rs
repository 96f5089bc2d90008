//! Few-shot training sets and in-context demonstrations, drawn index for index as llmft draws
//! them (shared/DESIGN.md §4), so a run can be compared with a published llmft run.
//!
//! - Training set (llmft `ft.py`): `np.random.seed(data_seed)`, then
//!   `np.random.choice(len(pool), k, replace=False)`; the examples in that (sampling) order.
//! - Demonstrations (llmft `eval_utils.create_few_shot_context` with `balanced` and `shuffle`):
//!   1. `np.random.seed(data_seed)`;
//!   2. for each label id in order, `np.random.choice` of `k / num_labels` examples among that
//!      label's examples (in pool order), continuing the same RNG stream;
//!   3. the chosen examples in pool order (llmft selects them with a filter on `idx`);
//!   4. reordered by `np.random.default_rng(data_seed).permutation(k)` (`Dataset.shuffle`).
//!
//!   One context per data seed serves every test item. llmft takes `k / 2` per label whatever
//!   the label count; here it is `k / num_labels`, the same for binary tasks.

use super::dataset::Dataset;
use super::numpy::{LegacyRandomState, NumpyShuffle, Pcg64Generator};
use crate::error::{Error, Result};

/// The seed llmft fixes for subsampling data (QQP's splits, `max_eval_samples`).
pub const SUBSAMPLE_SEED: u32 = 123;

/// Positions of a `k`-shot training set in a pool of `pool_len`, in sampling order:
/// `np.random.seed(data_seed); np.random.choice(pool_len, k, replace=False)`.
pub fn few_shot_positions(pool_len: usize, k: usize, data_seed: u32) -> Result<Vec<usize>> {
    LegacyRandomState::seed(data_seed).choice_without_replacement(pool_len, k).ok_or_else(|| {
        Error::Sampling(format!("cannot draw {k} examples without replacement from a pool of {pool_len}"))
    })
}

/// Positions of `k` class-balanced demonstrations in context order (see the module docs).
pub fn balanced_demonstrations(pool: &Dataset, k: usize, data_seed: u32) -> Result<Vec<usize>> {
    let labels = pool.label_names.len();
    if labels == 0 || k % labels != 0 {
        return Err(Error::Sampling(format!(
            "a balanced context needs k divisible by the {labels} labels of {}; got k = {k}",
            pool.name
        )));
    }
    let per_label = k / labels;
    let mut rng = LegacyRandomState::seed(data_seed);
    let mut chosen = Vec::with_capacity(k);
    for label in 0..labels {
        let of_label: Vec<usize> =
            pool.examples.iter().enumerate().filter(|(_, e)| e.label == label).map(|(p, _)| p).collect();
        let draw = rng.choice_without_replacement(of_label.len(), per_label).ok_or_else(|| {
            Error::Sampling(format!(
                "{}: label `{}` has {} examples, fewer than the {per_label} a balanced {k}-shot context needs",
                pool.name,
                pool.label_names[label],
                of_label.len()
            ))
        })?;
        chosen.extend(draw.into_iter().map(|i| of_label[i]));
    }
    chosen.sort_unstable();
    let permutation = Pcg64Generator::seed(u64::from(data_seed)).permutation(chosen.len());
    Ok(permutation.into_iter().map(|i| chosen[i]).collect())
}

/// llmft's subsampling of one split to at most `max` rows with its own fixed seed
/// (`np.random.seed(123); np.random.choice(len, min(len, max), replace=False)`).
pub fn subsample_positions(len: usize, max: usize) -> Vec<usize> {
    // k ≤ len by construction, so the draw cannot fail.
    LegacyRandomState::seed(SUBSAMPLE_SEED).choice_without_replacement(len, max.min(len)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::Example;
    use serde_json::Value;

    fn fixture() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sampling/numpy.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn usizes(value: &Value) -> Vec<usize> {
        value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect()
    }

    #[test]
    fn training_sets_equal_numpy_legacy_choice() {
        let cases = fixture()["legacy_choice"].as_array().unwrap().clone();
        assert!(cases.len() > 60);
        for case in cases {
            let (n, k, seed) =
                (case["n"].as_u64().unwrap(), case["k"].as_u64().unwrap(), case["seed"].as_u64().unwrap());
            let ours = few_shot_positions(n as usize, k as usize, seed as u32).unwrap();
            assert_eq!(ours, usizes(&case["indices"]), "n={n} k={k} seed={seed}");
        }
    }

    #[test]
    fn consecutive_draws_continue_the_stream_like_llmft_qqp() {
        let fixture = fixture();
        let mut rng = LegacyRandomState::seed(SUBSAMPLE_SEED);
        for draw in fixture["legacy_sequence"]["draws"].as_array().unwrap() {
            let n = draw["n"].as_u64().unwrap() as usize;
            assert_eq!(rng.choice_without_replacement(n, 1000).unwrap(), usizes(&draw["indices"]), "n={n}");
        }
    }

    #[test]
    fn permutations_equal_numpy_default_rng() {
        for case in fixture()["generator_permutation"].as_array().unwrap() {
            let (n, seed) = (case["n"].as_u64().unwrap() as usize, case["seed"].as_u64().unwrap());
            assert_eq!(Pcg64Generator::seed(seed).permutation(n), usizes(&case["permutation"]), "n={n} seed={seed}");
        }
    }

    #[test]
    fn balanced_contexts_equal_llmft_procedure() {
        let label = |i: usize| if (i * i + 3 * i) % 7 < 3 { 0 } else { 1 };
        for case in fixture()["balanced_context"].as_array().unwrap() {
            let pool_size = case["pool"].as_u64().unwrap() as usize;
            let examples = (0..pool_size).map(|i| Example::new(i as i64 + 1000, "p", None, label(i))).collect();
            let pool = Dataset::new("pool", &["entailment", "contradiction"], examples);
            let (k, seed) = (case["k"].as_u64().unwrap() as usize, case["seed"].as_u64().unwrap() as u32);
            let positions = balanced_demonstrations(&pool, k, seed).unwrap();
            let ids: Vec<usize> = positions.iter().map(|&p| pool.examples[p].id as usize).collect();
            assert_eq!(ids, usizes(&case["idx"]), "pool={pool_size} k={k} seed={seed}");
        }
    }

    #[test]
    fn impossible_requests_are_errors() {
        assert!(few_shot_positions(3, 4, 0).unwrap_err().to_string().contains("pool of 3"));
        let pool = Dataset::new("p", &["a", "b"], vec![Example::new(0, "x", None, 0), Example::new(1, "y", None, 1)]);
        assert!(balanced_demonstrations(&pool, 3, 0).unwrap_err().to_string().contains("divisible"));
        assert!(balanced_demonstrations(&pool, 4, 0).unwrap_err().to_string().contains("label `a` has 1"));
        assert_eq!(subsample_positions(5, 1000).len(), 5);
    }
}
