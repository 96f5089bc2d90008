//! The loss maths, free of the host: the teacher's cached distributions (bounded memory) and
//! the distillation loss against them.
//!
//! Full vocabulary: the teacher keeps its top-m tokens' probabilities plus the remaining mass as
//! one "rest" bucket; the student's distribution is bucketed the same way, so the KL is over
//! m + 1 categories. Bucketing only merges categories, so this KL never exceeds the exact one
//! (data processing) and equals it when m ≥ V. Verbalizer: both distributions renormalised over
//! the label words' tokens.

use ftlab_sdk::prelude::*;

use crate::Target;

/// The teacher's cached distributions for N inputs, on the run's device.
#[derive(Debug)]
pub struct Targets {
    /// Probabilities over the verbalizer tokens, renormalised over them, `[N, C]`: the
    /// verbalizer-KL target, and the teacher's answer for the agreement metric in both modes.
    pub verbalizer: Tensor,
    /// The full-vocabulary target; `None` when the KL is over the verbalizer only.
    pub top: Option<TopM>,
}

/// A full-vocabulary target in m + 1 buckets.
#[derive(Debug)]
pub struct TopM {
    /// Token ids of the m most probable tokens, int64 `[N, m]` (m = V: every token).
    pub ids: Tensor,
    /// Their probabilities, float `[N, m]`.
    pub probs: Tensor,
    /// The mass of all other tokens, float `[N]`.
    pub rest: Tensor,
}

impl Targets {
    /// Targets from the teacher's next-token logits `[N, V]` at temperature `tau`: the top
    /// `top_m` tokens and the rest (`None`: verbalizer only). Probabilities, never logits, are
    /// kept — the cache is what the loss compares against.
    pub fn from_teacher_logits(logits: &Tensor, tau: f64, top_m: Option<usize>, verbalizer: &Tensor) -> Self {
        let scaled = logits.to_kind(Kind::Float) / tau; // (N, V)
        let verbalizer_probs = scaled.index_select(1, verbalizer).softmax(1, Kind::Float); // (N, C)
        let top = top_m.map(|m| {
            let m = (m as i64).min(scaled.size()[1]);
            let (probs, ids) = scaled.softmax(1, Kind::Float).topk(m, 1, true, true); // (N, m)
            let rest = (1f64 - probs.sum_dim_intlist(1, false, Kind::Float)).clamp_min(0.0); // (N,)
            TopM { ids, probs, rest }
        });
        Self { verbalizer: verbalizer_probs, top }
    }

    /// The rows at `index` (int64 `[B]`).
    pub fn rows(&self, index: &Tensor) -> Self {
        let top = self.top.as_ref().map(|t| TopM {
            ids: t.ids.index_select(0, index),
            probs: t.probs.index_select(0, index),
            rest: t.rest.index_select(0, index),
        });
        Self { verbalizer: self.verbalizer.index_select(0, index), top }
    }

    /// Concatenates the targets of consecutive chunks of inputs (all built with one setting).
    pub fn cat(parts: &[Targets]) -> Result<Self> {
        let first = parts.first().ok_or_else(|| Error::msg("no teacher targets to concatenate"))?;
        let column = |f: &dyn Fn(&Targets) -> Option<&Tensor>| -> Option<Tensor> {
            let tensors: Option<Vec<&Tensor>> = parts.iter().map(f).collect();
            tensors.map(|t| Tensor::cat(&t, 0))
        };
        let top = match first.top {
            Some(_) => Some(TopM {
                ids: column(&|t| t.top.as_ref().map(|x| &x.ids)).ok_or("mixed teacher targets")?,
                probs: column(&|t| t.top.as_ref().map(|x| &x.probs)).ok_or("mixed teacher targets")?,
                rest: column(&|t| t.top.as_ref().map(|x| &x.rest)).ok_or("mixed teacher targets")?,
            }),
            None => None,
        };
        let verbalizer = column(&|t| Some(&t.verbalizer)).ok_or("no verbalizer targets")?;
        Ok(Self { verbalizer, top })
    }
}

/// Per-row KL(p ‖ q) `[B]` of target probabilities `p` and student log-probabilities `log_q`
/// (`[B, K]`); `xlogy` makes a zero-probability category contribute 0.
fn kl_rows(p: &Tensor, log_q: &Tensor) -> Tensor {
    (p.xlogy(p) - p * log_q).sum_dim_intlist(1, false, Kind::Float)
}

/// Per-row KL over the m + 1 buckets of `top`, from the student's tempered logits `[B, V]`.
fn bucketed_kl(scaled: &Tensor, top: &TopM) -> Tensor {
    let log_norm = scaled.logsumexp(1, false); // (B,)
    let log_q_top = scaled.gather(1, &top.ids, false) - log_norm.unsqueeze(1); // (B, m)
    let kl = kl_rows(&top.probs, &log_q_top);
    if top.ids.size()[1] >= scaled.size()[1] {
        return kl; // m = V: no rest bucket, the KL is exact.
    }
    // log of the student's mass outside the top m, without forming 1 − Σ q (cancellation).
    let log_q_rest = scaled.scatter_value(1, &top.ids, f64::NEG_INFINITY).logsumexp(1, false) - log_norm;
    kl + top.rest.xlogy(&top.rest) - &top.rest * log_q_rest
}

/// The distillation loss of a batch and its parts.
#[derive(Debug)]
pub struct LossParts {
    /// τ²·mean KL + λ·CE, the scalar to minimise.
    pub loss: Tensor,
    /// The mean KL over the batch (no τ² factor), for logging.
    pub kl: f64,
}

/// τ²·mean_rows KL(p_teacher ‖ p_student) + λ·CE: `student` holds the student's next-token
/// logits `[B, V]`, `targets` the teacher's for the same rows, `verbalizer` the label tokens
/// `[C]`. The CE is of the student's untempered full-vocabulary logits against `gold` (each
/// row's label token, `[B]`), averaged over the rows with a known label (`labels >= 0`); it is
/// skipped when `ce_weight` is 0 or no row is labelled.
pub fn distill_loss(
    student: &Tensor,
    targets: &Targets,
    verbalizer: &Tensor,
    (tau, ce_weight, target): (f64, f64, Target),
    gold: &Tensor,
    labels: &Tensor,
) -> LossParts {
    let student = student.to_kind(Kind::Float);
    let scaled = &student / tau;
    let kl = match &targets.top {
        Some(top) => bucketed_kl(&scaled, top),
        None => kl_rows(&targets.verbalizer, &scaled.index_select(1, verbalizer).log_softmax(1, Kind::Float)),
    }
    .mean(Kind::Float);
    let mut loss = match target {
        // A continuation's loss is the student's cross-entropy on it (`sequence.rs`); the KL here
        // is only logged.
        Target::Soft | Target::Generated => &kl * (tau * tau),
        // The teacher's answer: its most probable label word, over the full vocabulary.
        Target::Hard => {
            student.cross_entropy_for_logits(&verbalizer.index_select(0, &targets.verbalizer.argmax(1, false)))
        }
    };
    let known = labels.ge(0).nonzero().squeeze_dim(1); // rows with a label
    if ce_weight > 0.0 && known.size()[0] > 0 {
        let ce = student.index_select(0, &known).cross_entropy_for_logits(&gold.index_select(0, &known));
        loss += ce * ce_weight;
    }
    LossParts { loss, kl: kl.double_value(&[]) }
}

/// Fraction of rows whose argmax over the verbalizer is the same for student and teacher.
pub fn agreement(student: &Tensor, targets: &Targets, verbalizer: &Tensor) -> f64 {
    let student = student.index_select(1, verbalizer).argmax(1, false);
    student.eq_tensor(&targets.verbalizer.argmax(1, false)).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    const LN2: f64 = std::f64::consts::LN_2;

    fn t(values: &[f64], shape: &[i64]) -> Tensor {
        Tensor::from_slice(values).to_kind(Kind::Float).view(shape)
    }

    fn ids(values: &[i64]) -> Tensor {
        Tensor::from_slice(values)
    }

    /// V = 4, verbalizer tokens {1, 3}. Teacher logits (ln 4, ln 2, 0, 0) at τ = 1 give
    /// p = (4, 2, 1, 1)/8 = (.5, .25, .125, .125); with m = 2 the target is
    /// top ids (0, 1), probs (.5, .25), rest .25. Logits (ln 16, ln 4, 0, 0) at τ = 2 give the
    /// same p, so one target serves both temperatures.
    fn target(tau: f64) -> Targets {
        let logits = if tau == 1.0 { [4f64.ln(), LN2, 0.0, 0.0] } else { [16f64.ln(), 4f64.ln(), 0.0, 0.0] };
        Targets::from_teacher_logits(&t(&logits, &[1, 4]), tau, Some(2), &ids(&[1, 3]))
    }

    fn loss(student: &[f64], tau: f64, ce_weight: f64, labels: &[i64]) -> f64 {
        let rows = labels.len() as i64;
        let student = t(&student.repeat(labels.len()), &[rows, 4]);
        let target = target(tau).rows(&Tensor::zeros([rows], (Kind::Int64, tch::Device::Cpu)));
        let gold = Tensor::zeros([rows], (Kind::Int64, tch::Device::Cpu)); // token 0
        distill_loss(&student, &target, &ids(&[1, 3]), (tau, ce_weight, Target::Soft), &gold, &ids(labels))
            .loss
            .double_value(&[])
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }

    #[test]
    fn targets_keep_top_m_and_the_rest_mass() {
        let target = target(1.0);
        let top = target.top.as_ref().unwrap();
        assert_eq!(Vec::<i64>::try_from(top.ids.view(-1)).unwrap(), [0, 1]);
        close(top.probs.double_value(&[0, 0]), 0.5);
        close(top.probs.double_value(&[0, 1]), 0.25);
        close(top.rest.double_value(&[0]), 0.25);
        // Verbalizer tokens 1 and 3: (.25, .125) renormalised = (2/3, 1/3).
        close(target.verbalizer.double_value(&[0, 0]), 2.0 / 3.0);
    }

    #[test]
    fn loss_at_tau_1_without_ce_equals_the_hand_value() {
        // Student logits 0: q = (.25, .25, .25, .25), bucketed (.25, .25 | .5).
        // KL = .5 ln(.5/.25) + .25 ln(.25/.25) + .25 ln(.25/.5) = .5 ln 2 − .25 ln 2 = .25 ln 2.
        close(loss(&[0.0; 4], 1.0, 0.0, &[0]), 0.25 * LN2); // 0.1732868
    }

    #[test]
    fn loss_at_tau_1_with_ce_equals_the_hand_value() {
        // KL as above, plus λ·CE with λ = .5: the gold token 0 has q = .25, CE = ln 4.
        // .25 ln 2 + .5 ln 4 = 1.25 ln 2 = 0.8664340.
        close(loss(&[0.0; 4], 1.0, 0.5, &[0]), 1.25 * LN2);
    }

    #[test]
    fn loss_at_tau_2_without_ce_equals_the_hand_value() {
        // Student logits (2 ln 2, 0, 0, 0) / τ = (ln 2, 0, 0, 0): q = (.4, .2, .2, .2),
        // bucketed (.4, .2 | .4). KL = .5 ln(.5/.4) + .25 ln(.25/.2) + .25 ln(.25/.4)
        // = .75 ln 1.25 + .25 ln .625 = 0.0498568; × τ² = 4 → 0.1994270.
        let kl = 0.75 * 1.25f64.ln() + 0.25 * 0.625f64.ln();
        close(loss(&[2.0 * LN2, 0.0, 0.0, 0.0], 2.0, 0.0, &[0]), 4.0 * kl);
        close(4.0 * kl, 0.199_427_0);
    }

    #[test]
    fn loss_at_tau_2_with_ce_counts_only_labelled_rows() {
        // Two identical rows, the second unlabelled (-1): the KL mean is the one-row KL, and
        // the CE (untempered: q(0) = 4/7, CE = ln(7/4) = 0.5596158) averages over row 0 only.
        // 0.1994270 + .5 · 0.5596158 = 0.4792349.
        let kl = 0.75 * 1.25f64.ln() + 0.25 * 0.625f64.ln();
        let expected = 4.0 * kl + 0.5 * (7.0f64 / 4.0).ln();
        close(loss(&[2.0 * LN2, 0.0, 0.0, 0.0], 2.0, 0.5, &[0, -1]), expected);
        close(expected, 0.479_234_9);
        // No labelled row: no CE term at all.
        close(loss(&[2.0 * LN2, 0.0, 0.0, 0.0], 2.0, 0.5, &[-1, -1]), 4.0 * kl);
    }

    #[test]
    fn verbalizer_kl_equals_the_hand_value() {
        // Verbalizer tokens {1, 3}; teacher (.8, .2); student logits (0, ln 3, 5, 0) give
        // (3, 1)/4 = (.75, .25) over them. KL = .8 ln(.8/.75) + .2 ln(.2/.25) = 0.0070021.
        let teacher = Targets { verbalizer: t(&[0.8, 0.2], &[1, 2]), top: None };
        let student = t(&[0.0, 3f64.ln(), 5.0, 0.0], &[1, 4]);
        let parts = distill_loss(&student, &teacher, &ids(&[1, 3]), (1.0, 0.0, Target::Soft), &ids(&[0]), &ids(&[-1]));
        close(parts.loss.double_value(&[]), 0.8 * (0.8f64 / 0.75).ln() + 0.2 * (0.2f64 / 0.25).ln());
        close(parts.loss.double_value(&[]), 0.007_002_1);
    }

    #[test]
    fn hard_targets_are_the_cross_entropy_of_the_teachers_answer() {
        // Teacher (.3, .7) over verbalizer tokens {1, 3}: its answer is token 3. Student logits
        // (0, ln 3, 5, 0): CE = logsumexp - 0 = ln(1 + 3 + e^5 + 1). The KL is still reported.
        let teacher = Targets { verbalizer: t(&[0.3, 0.7], &[1, 2]), top: None };
        let student = t(&[0.0, 3f64.ln(), 5.0, 0.0], &[1, 4]);
        let parts = distill_loss(&student, &teacher, &ids(&[1, 3]), (1.0, 0.0, Target::Hard), &ids(&[0]), &ids(&[-1]));
        close(parts.loss.double_value(&[]), (5.0 + 5f64.exp()).ln());
        close(parts.kl, 0.3 * (0.3f64 / 0.75).ln() + 0.7 * (0.7f64 / 0.25).ln());
    }

    /// Exact KL(softmax(a/τ) ‖ softmax(b/τ)) per row.
    fn exact_kl(teacher: &Tensor, student: &Tensor, tau: f64) -> Tensor {
        let p = (teacher / tau).softmax(1, Kind::Float);
        kl_rows(&p, &(student / tau).log_softmax(1, Kind::Float))
    }

    #[test]
    fn bucketing_is_exact_for_m_at_least_v_and_a_lower_bound_below() {
        tch::manual_seed(0);
        let (teacher, student) =
            (Tensor::randn([5, 12], tch::kind::FLOAT_CPU) * 3.0, Tensor::randn([5, 12], tch::kind::FLOAT_CPU) * 3.0);
        let verbalizer = ids(&[2, 7]);
        for tau in [1.0, 2.0] {
            let exact = exact_kl(&teacher, &student, tau);
            for m in [12, 50] {
                let target = Targets::from_teacher_logits(&teacher, tau, Some(m), &verbalizer);
                let bucketed = bucketed_kl(&(&student / tau), target.top.as_ref().unwrap());
                assert!(f64::try_from((bucketed - &exact).abs().max()).unwrap() < 1e-5, "m = {m}, τ = {tau}");
            }
            // A lower bound up to float32 rounding: KLs here reach ~10, and the two sums (a few
            // dozen float32 ops, ε = 1.2e-7) round differently on each CPU kernel set (2.4e-6
            // over with AVX-512 at m = 11), so the slack is relative to the KL's size, 10× the
            // worst rounding measured; a broken bound overshoots by orders of magnitude more.
            let slack = 4e-6 * (1.0 + f64::try_from(exact.abs().max()).unwrap());
            for m in [1, 4, 11] {
                let target = Targets::from_teacher_logits(&teacher, tau, Some(m), &verbalizer);
                let bucketed = bucketed_kl(&(&student / tau), target.top.as_ref().unwrap());
                let excess = f64::try_from((bucketed - &exact).max()).unwrap();
                eprintln!("numerics: context_distill.bucketed_kl_excess_over_slack {:.6} <1", excess / slack);
                assert!(excess < slack, "bucketed KL exceeds the exact one by {excess} (m = {m}, slack {slack})");
            }
        }
    }

    #[test]
    fn gradients_flow_to_the_student_only_and_vanish_at_the_target() {
        let teacher = t(&[1.0, -2.0, 0.5, 3.0], &[1, 4]);
        let target = Targets::from_teacher_logits(&teacher, 1.0, Some(2), &ids(&[1, 3]));
        // A student whose distribution equals the teacher's has zero bucketed KL and gradient.
        let student = teacher.copy().set_requires_grad(true);
        let parts = distill_loss(&student, &target, &ids(&[1, 3]), (1.0, 0.0, Target::Soft), &ids(&[0]), &ids(&[-1]));
        parts.loss.backward();
        assert!(parts.kl.abs() < 1e-6);
        assert!(f64::try_from(student.grad().abs().max()).unwrap() < 1e-6);
        assert_eq!(agreement(&teacher, &target, &ids(&[1, 3])), 1.0);
    }
}
