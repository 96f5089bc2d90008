//! CPT's projection and loss, apart from the host so that they can be checked by hand.

use ftlab_sdk::prelude::*;

use crate::context::Role;

/// PEFT's radius for roles nothing moves (its `MIN_VALUE`).
const FROZEN_RADIUS: f64 = 1e-10;

/// Each token's L2 radius, as PEFT's `get_epsilon`: `format_epsilon` for templates, `epsilon`
/// for inputs, both times `sqrt(width / 2048)` (PEFT scales to the embedding width, 2048 being
/// its reference), and a vanishing one for labels and separators.
pub fn radii(roles: &[Role], epsilon: f64, format_epsilon: f64, width: i64) -> Vec<f64> {
    let scale = (width as f64 / 2048.0).sqrt();
    let radius = |role: &Role| match role {
        Role::InputTemplate | Role::OutputTemplate => format_epsilon * scale,
        Role::Input => epsilon * scale,
        Role::Separator | Role::Label => FROZEN_RADIUS,
    };
    roles.iter().map(radius).collect()
}

/// Scales each nonzero row of `delta` `[C, E]` back onto its ball of radius `radii` `[C]`, in
/// place (rows inside stay): PEFT's `get_projection`, run before every forward pass.
pub fn project(delta: &Tensor, radii: &Tensor) {
    tch::no_grad(|| {
        let norm = delta.norm_scalaropt_dim(2, [1], false);
        let scale = (radii / norm.maximum(radii)).where_self(&norm.gt(0.0), &norm.ones_like());
        let _ = delta.shallow_clone().f_mul_(&scale.to_kind(delta.kind()).unsqueeze(1));
    })
}

/// Weight of demonstration i's label among `count` (the query's is 1): `decay^(count - i)`,
/// PEFT's exponential decay back from the query.
pub fn decay(i: usize, count: usize, decay: f64) -> f64 {
    decay.powi((count - i) as i32)
}

/// `mean(weight · cross-entropy)` over the targets that count: `logits` `[B, N, V]`, int64
/// `targets` `[B, N]`, `weights` `[B, N]` and bool `counted` `[B, N]` — PEFT's
/// `calculate_loss`, whose mean runs over label tokens whatever their weight.
pub fn weighted_loss(logits: &Tensor, targets: &Tensor, weights: &Tensor, counted: &Tensor) -> Tensor {
    let vocab = logits.size()[2];
    let nll = logits.to_kind(Kind::Float).view([-1, vocab]).cross_entropy_loss::<Tensor>(
        &targets.view([-1]),
        None,
        Reduction::None,
        -100,
        0.0,
    );
    let counted = counted.view([-1]);
    (nll * weights.view([-1]).to_kind(Kind::Float)).masked_select(&counted).mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_outside_their_ball_are_scaled_onto_it() {
        let delta = Tensor::from_slice(&[3.0f32, 4.0, 0.3, 0.4, 0.0, 0.0]).view([3, 2]);
        project(&delta, &Tensor::from_slice(&[1.0f64, 1.0, 1e-10]).to_kind(Kind::Float));
        let got = Vec::<f32>::try_from(delta.view([-1])).unwrap();
        let want = [0.6, 0.8, 0.3, 0.4, 0.0, 0.0];
        assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6), "{got:?}");
    }

    #[test]
    fn radii_follow_the_role_and_the_width() {
        let roles = [Role::Separator, Role::InputTemplate, Role::Input, Role::OutputTemplate, Role::Label];
        let r = radii(&roles, 0.2, 0.1, 512);
        assert_eq!(r, [FROZEN_RADIUS, 0.05, 0.1, 0.05, FROZEN_RADIUS]);
    }

    #[test]
    fn the_loss_is_the_weighted_mean_over_counted_labels() {
        // Two rows, two targets each; uniform logits over 4 words: every term is ln 4.
        let logits = Tensor::zeros([2, 2, 4], (Kind::Float, tch::Device::Cpu));
        let targets = Tensor::from_slice(&[0i64, 1, 2, 3]).view([2, 2]);
        let weights = Tensor::from_slice(&[0.5f32, 1.0, 0.25, 1.0]).view([2, 2]);
        let counted = Tensor::from_slice(&[true, true, false, true]).view([2, 2]);
        let loss = weighted_loss(&logits, &targets, &weights, &counted).double_value(&[]);
        let want = 4f64.ln() * (0.5 + 1.0 + 1.0) / 3.0;
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
        assert_eq!(decay(2, 4, 0.5), 0.25);
    }
}
