//! Queries read after a shared context: which of the context's kept keys/values a batch can
//! reuse, and the right-padded tensors of what remains.
//!
//! llmft encodes `context + query` as one string, so BPE can merge the context's last
//! characters with the query's first (with its literal `\n\n` separator, `n` and the next word
//! are one pre-token). A method that keeps the context's keys/values therefore reuses only the
//! longest token prefix the joint encodings share with the context encoded alone, and runs the
//! rest: the same tokens as the uncached path, at nearly the cached cost.

use tch::{Device, Kind, Tensor};

/// Rows of token ids to run after the first `reused` positions of a kept context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterContext {
    /// Positions of the kept context every row starts with (`ForwardRequest::past_len`).
    pub reused: usize,
    /// Each row without those positions (at least one token each).
    pub rows: Vec<Vec<i64>>,
}

/// Splits jointly encoded `rows` (each `context + query`) at the longest prefix all of them
/// share with `context` (the context's own ids), keeping at least one token per row to run.
pub fn after_context(context: &[i64], rows: Vec<Vec<i64>>) -> AfterContext {
    let shared = |row: &[i64]| context.iter().zip(row).take_while(|(a, b)| a == b).count();
    let reused = rows.iter().map(|r| shared(r).min(r.len().saturating_sub(1))).min().unwrap_or(0);
    AfterContext { reused, rows: rows.into_iter().map(|r| r[reused..].to_vec()).collect() }
}

impl AfterContext {
    /// Right-padded ids `[B, T]` and the attention mask `[B, reused + T]` (ones over the reused
    /// context positions).
    pub fn tensors(&self, pad: i64, device: Device) -> (Tensor, Tensor) {
        let (ids, mask) = pad_right(&self.rows, pad, device);
        if self.reused == 0 {
            return (ids, mask);
        }
        let past = Tensor::ones([self.rows.len() as i64, self.reused as i64], (Kind::Int64, device));
        (ids, Tensor::cat(&[past, mask], 1))
    }
}

/// Right-pads `rows` with `pad`: ids and mask, int64 `[B, T]`.
pub fn pad_right(rows: &[Vec<i64>], pad: i64, device: Device) -> (Tensor, Tensor) {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let (mut ids, mut mask) = (Vec::with_capacity(rows.len() * width), Vec::with_capacity(rows.len() * width));
    for row in rows {
        ids.extend(row.iter().copied().chain(std::iter::repeat(pad)).take(width));
        mask.extend((0..width).map(|i| i64::from(i < row.len())));
    }
    let shape = [rows.len() as i64, width as i64];
    (Tensor::from_slice(&ids).view(shape).to_device(device), Tensor::from_slice(&mask).view(shape).to_device(device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_the_prefix_every_row_shares_with_the_context() {
        let context = [2, 10, 11, 12];
        // Row 0 continues the context; row 1 merged the context's last token with its query.
        let split = after_context(&context, vec![vec![2, 10, 11, 12, 20], vec![2, 10, 11, 13, 21, 22]]);
        assert_eq!(split, AfterContext { reused: 3, rows: vec![vec![12, 20], vec![13, 21, 22]] });
        let (ids, mask) = split.tensors(1, Device::Cpu);
        assert_eq!(Vec::<i64>::try_from(ids.flatten(0, -1)).unwrap(), [12, 20, 1, 13, 21, 22]);
        assert_eq!(Vec::<i64>::try_from(mask.flatten(0, -1)).unwrap(), [1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1]);
        // A row that is the context itself still runs its last token.
        assert_eq!(after_context(&context, vec![context.to_vec()]).reused, 3);
        assert_eq!(after_context(&context, vec![vec![5, 6]]).reused, 0);
    }
}
