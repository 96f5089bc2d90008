//! Seeded, class-balanced sampling of in-context demonstrations: `k / num_labels` of each label
//! drawn without replacement, then shuffled (shared/DESIGN.md §4–5). Each input has its own
//! random stream, so its context does not depend on which inputs came before it.

pub use ftlab_sdk::rng::SplitMix64;
use ftlab_sdk::{Error, Result};

/// Positions (into `labels`) of `k` demonstrations, `k / num_labels` of each label drawn
/// without replacement, in shuffled order. Positions in `exclude` (e.g. the query's own
/// demonstration) are never drawn. A `k` not divisible by `num_labels`, or a label with too
/// few demonstrations, is an error naming the label.
pub fn balanced(
    labels: &[usize],
    num_labels: usize,
    k: usize,
    exclude: &[usize],
    rng: &mut SplitMix64,
) -> Result<Vec<usize>> {
    if num_labels == 0 || k % num_labels != 0 {
        return Err(Error::msg(format!("k = {k} demonstrations must be a multiple of the {num_labels} labels")));
    }
    let per_label = k / num_labels;
    let mut picks = Vec::with_capacity(k);
    for label in 0..num_labels {
        let mut pool: Vec<usize> = (0..labels.len()).filter(|p| labels[*p] == label && !exclude.contains(p)).collect();
        if pool.len() < per_label {
            return Err(Error::msg(format!(
                "label {label} has {} demonstrations in the labelled pool, but k = {k} needs {per_label} per label; \
                 lower `k` or use more shots",
                pool.len()
            )));
        }
        // A partial Fisher–Yates shuffle: the first `per_label` entries are a uniform draw.
        for i in 0..per_label {
            let j = i + rng.below(pool.len() - i);
            pool.swap(i, j);
        }
        picks.extend_from_slice(&pool[..per_label]);
    }
    rng.shuffle(&mut picks);
    Ok(picks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 6 demonstrations of label 0, 4 of label 1, interleaved.
    const LABELS: [usize; 10] = [0, 1, 0, 0, 1, 0, 1, 0, 1, 0];

    #[test]
    fn contexts_are_balanced_without_repeats() {
        for index in 0..50 {
            let picks = balanced(&LABELS, 2, 8, &[], &mut SplitMix64::for_input(7, index)).unwrap();
            assert_eq!(picks.len(), 8);
            assert_eq!(picks.iter().filter(|p| LABELS[**p] == 0).count(), 4);
            let mut unique = picks.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), 8, "{picks:?}");
        }
    }

    #[test]
    fn contexts_are_deterministic_per_seed_and_differ_per_input() {
        let draw = |seed, index| balanced(&LABELS, 2, 4, &[], &mut SplitMix64::for_input(seed, index)).unwrap();
        assert_eq!(draw(3, 5), draw(3, 5));
        let per_input: std::collections::HashSet<Vec<usize>> = (0..20).map(|i| draw(3, i)).collect();
        assert!(per_input.len() > 10, "only {} distinct contexts for 20 inputs", per_input.len());
        let per_seed: std::collections::HashSet<Vec<usize>> = (0..20).map(|s| draw(s, 0)).collect();
        assert!(per_seed.len() > 10, "only {} distinct contexts for 20 seeds", per_seed.len());
    }

    #[test]
    fn every_demonstration_gets_drawn_and_excluded_ones_never() {
        let mut seen = [0usize; 10];
        for index in 0..200 {
            for p in balanced(&LABELS, 2, 4, &[3], &mut SplitMix64::for_input(0, index)).unwrap() {
                seen[p] += 1;
            }
        }
        assert_eq!(seen[3], 0);
        assert!(seen.iter().enumerate().all(|(p, n)| p == 3 || *n > 0), "{seen:?}");
    }

    #[test]
    fn impossible_requests_are_errors() {
        let mut rng = SplitMix64::new(0);
        assert!(balanced(&LABELS, 2, 3, &[], &mut rng).unwrap_err().message().contains("multiple"));
        let err = balanced(&LABELS, 2, 10, &[], &mut rng).unwrap_err();
        assert!(err.message().contains("label 1 has 4"), "{err}");
    }
}
