//! The student's side of distilling the teacher's continuation (`target = "generated"`): it
//! reads its query followed by the teacher's greedy continuation and is trained, by teacher
//! forcing, with the cross-entropy of every continuation token.

use ftlab_sdk::context::pad_right;
use ftlab_sdk::prelude::*;

/// The mean cross-entropy of `continuations` (one per batch row) after the batch's queries, and
/// the student's logits `[B, V]` at each query's end (the answer position, detached).
pub fn continuation_loss(
    host: &mut Host,
    batch: &Batch,
    continuations: &[&[i64]],
    pad: i64,
) -> Result<(Tensor, Tensor)> {
    let (ids, mask) = (batch.input_ids()?, batch.attention_mask()?);
    let lengths = Vec::<i64>::try_from(mask.sum_dim_intlist(1, false, Kind::Int64))?;
    let rows: Vec<Vec<i64>> = (lengths.iter().zip(continuations).enumerate())
        .map(|(b, (&len, continuation))| {
            let query = Vec::<i64>::try_from(ids.get(b as i64).narrow(0, 0, len))?;
            Ok([&query[..], continuation].concat())
        })
        .collect::<Result<_>>()?;
    let (ids, mask) = pad_right(&rows, pad, ids.device());
    let width = ids.size()[1];
    // The token at position p is predicted by the logits at p - 1.
    let mut targets = vec![-100i64; rows.len() * width as usize];
    for (b, (&len, continuation)) in lengths.iter().zip(continuations).enumerate() {
        for (j, &token) in continuation.iter().enumerate() {
            targets[b * width as usize + (len - 1) as usize + j] = token;
        }
    }
    let targets = Tensor::from_slice(&targets).view([rows.len() as i64, width]).to_device(ids.device());
    let request = ForwardRequest { logits: Logits::All, ..Default::default() };
    let logits = host.forward(&ids, &mask, &request)?.logits.ok_or("the host returned no logits")?;
    let loss = token_cross_entropy(&logits, &targets); // logits (B, T, V)
    let vocab = logits.size()[2];
    let answer = Tensor::from_slice(&lengths).to_device(logits.device()) - 1;
    let at_answer = logits.detach().gather(1, &answer.view([-1, 1, 1]).expand([-1, 1, vocab], false), false);
    Ok((loss, at_answer.squeeze_dim(1)))
}
