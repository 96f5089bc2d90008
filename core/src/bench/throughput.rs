//! Throughput: the machine's matmul rate, and tokens/s of a forward pass and of a training step
//! (forward + backward + AdamW) of an OPT model.
//!
//! Both model measurements do the same work as transformers' defaults so the ratio against
//! PyTorch + transformers compares implementations, not workloads: logits at every position,
//! and for training the shifted next-token cross-entropy over the full vocabulary.

use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::median;
use crate::error::Result;
use crate::model::{ForwardHooks, ForwardInput, Model, OptConfig};
use crate::run::config::TrainConfig;
use crate::run::optim::AdamW;

/// Timing of repeated steps over a fixed batch.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Throughput {
    /// Tokens processed per second (batch × sequence / median step time).
    pub tokens_per_s: f64,
    /// Median seconds per step.
    pub seconds_per_step: f64,
    /// Achieved GFLOP/s, from [`flops_per_token`].
    pub gflops: f64,
}

/// GFLOP/s of a `[m, k] @ [k, n]` float32 matmul (median of `repeats` after a warm-up).
pub fn matmul_gflops(m: i64, k: i64, n: i64, repeats: usize, device: Device) -> f64 {
    let a = Tensor::randn([m, k], (Kind::Float, device));
    let b = Tensor::randn([k, n], (Kind::Float, device));
    let seconds = median_seconds(repeats, || {
        let _ = a.matmul(&b);
        Ok(())
    })
    .unwrap_or(f64::NAN);
    2.0 * (m * k * n) as f64 / seconds / 1e9
}

/// Forward FLOPs per token of a sequence of `seq` tokens: two per multiply-add of every linear
/// layer and of the LM head, plus the attention products (QKᵀ and AV over the whole sequence).
pub fn flops_per_token(c: &OptConfig, seq: i64) -> f64 {
    let (d, f, l) = (c.hidden_size as f64, c.ffn_dim as f64, c.num_hidden_layers as f64);
    let linear = l * (4.0 * d * d + 2.0 * d * f) + c.vocab_size as f64 * c.word_embed_proj_dim as f64;
    let projections = if c.has_projections() { 2.0 * d * c.word_embed_proj_dim as f64 } else { 0.0 };
    let attention = l * 2.0 * seq as f64 * d;
    2.0 * (linear + projections + attention)
}

fn random_batch(model: &Model, batch: i64, seq: i64) -> Tensor {
    Tensor::randint_low(4, model.net.config.vocab_size, [batch, seq], (Kind::Int64, model.device()))
}

/// Forward passes without gradients, logits at every position.
pub fn forward_throughput(model: &Model, batch: i64, seq: i64, repeats: usize) -> Result<Throughput> {
    let ids = random_batch(model, batch, seq);
    let seconds = tch::no_grad(|| {
        median_seconds(repeats, || {
            model.net.forward(ForwardInput { input_ids: Some(&ids), ..Default::default() })?;
            Ok(())
        })
    })?;
    Ok(throughput(&model.net.config, batch, seq, seconds, 1.0))
}

/// Training steps: forward with dropout, next-token cross-entropy, backward, and the AdamW
/// runs use (lr 1e-5, torch's default weight decay 0.01) over every parameter.
pub fn train_step_throughput(model: &Model, batch: i64, seq: i64, repeats: usize) -> Result<Throughput> {
    let ids = random_batch(model, batch, seq);
    let config = TrainConfig { weight_decay: 0.01, ..Default::default() };
    let mut optimizer = AdamW::new(model.vs.variables().into_iter().collect(), &config)?;
    let seconds = median_seconds(repeats, || {
        let out = model.net.forward(ForwardInput { input_ids: Some(&ids), train: true, ..Default::default() })?;
        let logits = out.logits.expect("LogitsAt::All returns logits").narrow(1, 0, seq - 1);
        let targets = ids.narrow(1, 1, seq - 1);
        let loss = logits.reshape([-1, model.net.config.vocab_size]).cross_entropy_for_logits(&targets.reshape([-1]));
        optimizer.zero_grad();
        loss.backward();
        optimizer.step(1e-5)?;
        Ok(())
    })?;
    // Backward costs twice the forward.
    Ok(throughput(&model.net.config, batch, seq, seconds, 3.0))
}

/// Median forward seconds without hooks and with `hooks`, measured alternately so drift in
/// the machine's speed affects both alike.
pub fn hook_overhead(
    model: &Model,
    hooks: &dyn ForwardHooks,
    batch: i64,
    seq: i64,
    repeats: usize,
) -> Result<(f64, f64)> {
    let ids = random_batch(model, batch, seq);
    let run = |hooks: Option<&dyn ForwardHooks>| -> Result<f64> {
        let start = Instant::now();
        tch::no_grad(|| model.net.forward(ForwardInput { input_ids: Some(&ids), hooks, ..Default::default() }))?;
        Ok(start.elapsed().as_secs_f64())
    };
    run(None)?;
    run(Some(hooks))?;
    let (mut plain, mut hooked) = (Vec::new(), Vec::new());
    for _ in 0..repeats.max(1) {
        plain.push(run(None)?);
        hooked.push(run(Some(hooks))?);
    }
    Ok((median(plain), median(hooked)))
}

fn throughput(c: &OptConfig, batch: i64, seq: i64, seconds: f64, flop_factor: f64) -> Throughput {
    let tokens = (batch * seq) as f64;
    Throughput {
        tokens_per_s: tokens / seconds,
        seconds_per_step: seconds,
        gflops: flop_factor * flops_per_token(c, seq) * tokens / seconds / 1e9,
    }
}

/// Median wall time of `repeats` calls after one warm-up call.
fn median_seconds(repeats: usize, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    step()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        step()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_125m_forward_costs_about_250_mflop_per_token() {
        let c = OptConfig::from_json(crate::model::config::OPT_125M_CONFIG, std::path::Path::new("c.json")).unwrap();
        // 2 × (85.0M linear + 38.6M head) + attention at 128 tokens ≈ 252 MFLOP.
        let mflop = flops_per_token(&c, 128) / 1e6;
        assert!((mflop - 252.0).abs() < 2.0, "{mflop}");
    }
}
