//! Batches: encoded examples grouped and padded to the longest row of each batch (dynamic
//! padding, never to a global maximum), optionally grouped by length so rows in a batch are
//! alike and little padding is computed. The order is a pure function of the seed.

use tch::{Device, Tensor};

use super::numpy::{NumpyShuffle, Pcg64Generator};
use crate::tokenizer::{Padding, Tokenizer};

/// One example ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedExample {
    /// Its position in the dataset it came from.
    pub position: usize,
    /// Token ids, starting with `</s>`.
    pub ids: Vec<i64>,
    /// Its label id.
    pub label: usize,
    /// The first token a next-token loss reads: the response of a prompt/response row, 1 for a
    /// document (all but `</s>`), `ids.len()` for a query (only its label word would follow).
    pub target_start: usize,
}

impl EncodedExample {
    /// A query whose label word follows it.
    pub fn query(position: usize, ids: Vec<i64>, label: usize) -> Self {
        Self { position, target_start: ids.len(), ids, label }
    }
}

/// How examples are grouped into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOrder {
    /// Consecutive examples, in dataset order.
    Sequential,
    /// Sorted by length (ties in dataset order), batches in that order: evaluation.
    ByLength,
    /// Shuffled by `seed`, then consecutive: training without bucketing.
    Shuffled {
        /// Seed of the permutation.
        seed: u64,
    },
    /// Shuffled by `seed`, sorted by length (so equal lengths stay shuffled), cut into batches,
    /// and the batches shuffled by `seed`: training with little padding.
    BucketedShuffled {
        /// Seed of both permutations.
        seed: u64,
    },
}

/// A padded batch with everything scoring and losses need.
#[derive(Debug)]
pub struct Batch {
    /// int64 `[B, T]`, T the longest row of this batch.
    pub input_ids: Tensor,
    /// int64 `[B, T]`, 1 on tokens, 0 on padding.
    pub attention_mask: Tensor,
    /// int64 `[B]`: label ids.
    pub labels: Tensor,
    /// int64 `[B]`: the token id of each row's gold label word.
    pub label_token_ids: Tensor,
    /// int64 `[C]`: the token id of every label word, by label id.
    pub verbalizer_ids: Tensor,
    /// Each row's position in its dataset.
    pub positions: Vec<usize>,
    /// Each row's label id (as in `labels`), for scoring on the host.
    pub label_ids: Vec<usize>,
    /// int64 `[B]`: each row's [`EncodedExample::target_start`].
    pub target_starts: Tensor,
    /// Non-padding tokens in the batch.
    pub tokens: usize,
}

/// Groups `examples` into batches of at most `batch_size` (indices into `examples`).
pub fn plan(examples: &[EncodedExample], batch_size: usize, order: BatchOrder) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let by_length = |indices: &mut Vec<usize>| indices.sort_by_key(|&i| examples[i].ids.len());
    let mut indices: Vec<usize> = (0..examples.len()).collect();
    match order {
        BatchOrder::Sequential => {}
        BatchOrder::ByLength => by_length(&mut indices),
        BatchOrder::Shuffled { seed } | BatchOrder::BucketedShuffled { seed } => {
            let permutation = Pcg64Generator::seed(seed).permutation(indices.len());
            indices = permutation.into_iter().map(|p| indices[p]).collect();
            if matches!(order, BatchOrder::BucketedShuffled { .. }) {
                by_length(&mut indices);
            }
        }
    }
    let mut batches: Vec<Vec<usize>> = indices.chunks(batch_size).map(<[usize]>::to_vec).collect();
    if let BatchOrder::BucketedShuffled { seed } = order {
        // A different stream from the example permutation: the seed's successor.
        let permutation = Pcg64Generator::seed(seed.wrapping_add(1)).permutation(batches.len());
        batches = permutation.into_iter().map(|p| std::mem::take(&mut batches[p])).collect();
    }
    batches
}

/// Pads the examples at `indices` into a batch on `device`.
pub fn collate(
    tokenizer: &Tokenizer,
    examples: &[EncodedExample],
    indices: &[usize],
    word_ids: &[i64],
    padding: Padding,
    device: Device,
) -> Batch {
    let rows: Vec<Vec<i64>> = indices.iter().map(|&i| examples[i].ids.clone()).collect();
    let padded = tokenizer.pad(&rows, padding, device);
    let label_ids: Vec<usize> = indices.iter().map(|&i| examples[i].label).collect();
    let labels: Vec<i64> = label_ids.iter().map(|&l| l as i64).collect();
    let gold_words: Vec<i64> = label_ids.iter().map(|&l| word_ids.get(l).copied().unwrap_or(-1)).collect();
    let target_starts: Vec<i64> = indices.iter().map(|&i| examples[i].target_start as i64).collect();
    Batch {
        input_ids: padded.input_ids,
        attention_mask: padded.attention_mask,
        labels: Tensor::from_slice(&labels).to_device(device),
        label_token_ids: Tensor::from_slice(&gold_words).to_device(device),
        verbalizer_ids: Tensor::from_slice(word_ids).to_device(device),
        positions: indices.iter().map(|&i| examples[i].position).collect(),
        label_ids,
        target_starts: Tensor::from_slice(&target_starts).to_device(device),
        tokens: rows.iter().map(Vec::len).sum(),
    }
}

/// Plans and collates every batch.
pub fn batches(
    tokenizer: &Tokenizer,
    examples: &[EncodedExample],
    word_ids: &[i64],
    batch_size: usize,
    order: BatchOrder,
    device: Device,
) -> Vec<Batch> {
    plan(examples, batch_size, order)
        .iter()
        .map(|indices| collate(tokenizer, examples, indices, word_ids, Padding::Right, device))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples(lengths: &[usize]) -> Vec<EncodedExample> {
        lengths
            .iter()
            .enumerate()
            .map(|(position, &n)| EncodedExample::query(position, vec![2; n], position % 2))
            .collect()
    }

    #[test]
    fn pads_each_batch_to_its_own_longest_row() {
        let tokenizer = crate::model::tiny::tokenizer().unwrap();
        let set = examples(&[3, 9, 4, 2, 8]);
        let batches = batches(&tokenizer, &set, &[10, 11], 2, BatchOrder::ByLength, Device::Cpu);
        let widths: Vec<i64> = batches.iter().map(|b| b.input_ids.size()[1]).collect();
        assert_eq!(widths, [3, 8, 9], "sorted by length: [2,3] [4,8] [9]");
        assert_eq!(batches[0].positions, [3, 0]);
        assert_eq!(Vec::<i64>::try_from(&batches[0].attention_mask.sum_dim_intlist(1, false, None)).unwrap(), [2, 3]);
        assert_eq!(Vec::<i64>::try_from(&batches[0].label_token_ids).unwrap(), [11, 10]);
        assert_eq!(batches.iter().map(|b| b.tokens).sum::<usize>(), 26);
    }

    #[test]
    fn shuffled_orders_are_deterministic_per_seed_and_cover_everything() {
        let set = examples(&[5, 1, 7, 3, 3, 9, 2, 4, 6, 8]);
        for order in [BatchOrder::Shuffled { seed: 3 }, BatchOrder::BucketedShuffled { seed: 3 }] {
            let a = plan(&set, 3, order);
            assert_eq!(a, plan(&set, 3, order));
            let mut all: Vec<usize> = a.concat();
            all.sort_unstable();
            assert_eq!(all, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(plan(&set, 3, BatchOrder::Shuffled { seed: 3 }), plan(&set, 3, BatchOrder::Shuffled { seed: 4 }));
        // Bucketed: each batch holds neighbouring lengths.
        for batch in plan(&set, 2, BatchOrder::BucketedShuffled { seed: 1 }) {
            let lengths: Vec<usize> = batch.iter().map(|&i| set[i].ids.len()).collect();
            assert!(lengths.iter().max().unwrap() - lengths.iter().min().unwrap() <= 2, "{lengths:?}");
        }
    }
}
