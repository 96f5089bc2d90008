//! AdamW with decoupled weight decay, learning-rate schedules and global-norm clipping, over
//! the run's trainable tensors only (frozen parameters get no optimizer state).
//!
//! Written here rather than taken from libtorch so that its state can be checkpointed and a
//! resumed run continues exactly (tch does not expose libtorch's optimizer state). Biases and
//! layer norms get no weight decay, as in HF's Trainer.

use std::f64::consts::PI;

use tch::{Kind, Tensor};

use super::config::{Schedule, TrainConfig};
use crate::error::{Error, Result};

/// One trainable tensor with its moments.
struct Slot {
    name: String,
    param: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
    /// Its learning rate relative to `train.lr` (its group's rate over `train.lr`).
    lr_factor: f64,
    /// Optimizer steps taken before it started training: its moments' bias correction counts
    /// from there, as PyTorch's per-parameter step does.
    start: usize,
}

/// AdamW over named tensors.
pub struct AdamW {
    slots: Vec<Slot>,
    /// Tensors that trained before and are frozen now (a method moved its selection): no
    /// moments, but their trained values are checkpointed.
    retired: Vec<(String, Tensor)>,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    /// Optimizer steps taken.
    pub step: usize,
    /// Loss scaling for fp16 autocast (the identity otherwise).
    pub loss_scale: LossScaler,
}

/// Whether a parameter is decayed: not biases and not layer-norm weights.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("layer_norm"))
}

impl Slot {
    fn new(name: String, param: Tensor, config: &TrainConfig, start: usize) -> Self {
        Self {
            decay: decays(&name),
            lr_factor: group_lr(config, &name) / config.lr,
            m: param.zeros_like(),
            v: param.zeros_like(),
            name,
            param,
            start,
        }
    }
}

impl AdamW {
    /// State for `params` (name, tensor), each at its `train.lr_groups` rate; an error names a
    /// group that matches none of them.
    pub fn new(params: Vec<(String, Tensor)>, config: &TrainConfig) -> Result<Self> {
        if let Some(unused) =
            config.lr_groups.keys().find(|prefix| !params.iter().any(|(name, _)| name.starts_with(prefix.as_str())))
        {
            let example = params.first().map(|(n, _)| format!(" (names look like `{n}`)")).unwrap_or_default();
            return Err(Error::RunConfig(format!(
                "`train.lr_groups`: \"{unused}\" is the start of no trainable parameter's name{example}"
            )));
        }
        let slots = params.into_iter().map(|(name, param)| Slot::new(name, param, config, 0)).collect();
        let loss_scale = LossScaler::new(config.autocast == crate::device::Autocast::Fp16);
        Ok(Self {
            slots,
            retired: Vec::new(),
            betas: config.betas,
            eps: config.eps,
            weight_decay: config.weight_decay,
            step: 0,
            loss_scale,
        })
    }

    /// Trains `params` from now on: tensors that trained already keep their moments, new ones
    /// start with none, and those left out lose theirs (their values stay checkpointed).
    pub fn retarget(&mut self, params: Vec<(String, Tensor)>, config: &TrainConfig) {
        let mut old: Vec<Slot> = std::mem::take(&mut self.slots);
        for (name, param) in params {
            let slot = match old.iter().position(|s| s.name == name) {
                Some(i) => old.swap_remove(i),
                None => Slot::new(name, param, config, self.step),
            };
            self.retired.retain(|(n, _)| *n != slot.name);
            self.slots.push(slot);
        }
        self.retired.extend(old.into_iter().map(|s| (s.name, s.param)));
    }

    /// Moves the moments of trainable tensor `name` as its method asked (`Method::step_done`):
    /// entry i takes old entry `from[i]`, or zero where `from[i]` is -1. Its step count goes
    /// on. An error names a tensor that does not train or an index out of range.
    pub fn move_moments(&mut self, name: &str, from: &Tensor) -> Result<()> {
        let slot = (self.slots.iter_mut().find(|s| s.name == name)).ok_or_else(|| Error::Optimizer {
            step: self.step,
            message: format!("`{name}` does not train: its moments cannot move"),
        })?;
        let numel = slot.m.numel() as i64;
        let from = from.to_device(slot.m.device()).to_kind(Kind::Int64).reshape([-1]);
        let in_range = from.numel() as i64 == numel
            && bool::try_from(from.ge(-1).logical_and(&from.lt(numel)).all()).unwrap_or(false);
        if !in_range {
            let message = format!("the moments of `{name}` ({numel} entries) cannot move by {:?}: want one index in -1..{numel} per entry", from.size());
            return Err(Error::Optimizer { step: self.step, message });
        }
        let kept = from.ge(0);
        let source = from.clamp_min(0);
        tch::no_grad(|| -> Result<()> {
            for moment in [&mut slot.m, &mut slot.v] {
                let moved =
                    moment.reshape([-1]).index_select(0, &source).where_self(&kept, &moment.zeros_like().reshape([-1]));
                moment.f_copy_(&moved.view_as(moment))?;
            }
            Ok(())
        })
    }

    /// The gradients that exist (a parameter no loss reached has none).
    fn grads(&self) -> Vec<Tensor> {
        self.slots.iter().map(|s| s.param.grad()).filter(Tensor::defined).collect()
    }

    /// Multiplies every gradient by `factor`.
    fn scale_grads(&self, factor: f64) {
        for mut g in self.grads() {
            let _ = g.g_mul_scalar_(factor);
        }
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for mut g in self.grads() {
            let _ = g.zero_();
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads = self.grads();
        if grads.is_empty() {
            return 0.0;
        }
        let squares: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float)).collect();
        let norm = Tensor::stack(&squares, 0).sum(Kind::Float).sqrt().double_value(&[]);
        if max_norm > 0.0 && norm > max_norm {
            self.scale_grads(max_norm / (norm + 1e-6));
        }
        norm
    }

    /// Divides the gradients of a loss multiplied by `loss_scale.scale` back.
    pub fn unscale_grads(&mut self) {
        if !self.loss_scale.enabled {
            return;
        }
        self.scale_grads(1.0 / self.loss_scale.scale);
    }

    /// One update at learning rate `lr` (each group's rate scaled alike), with PyTorch's fused
    /// AdamW kernel (one pass over each tensor; decayed and undecayed parameters of each rate as
    /// their own groups).
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let mut groups: Vec<(bool, f64, usize)> = Vec::new();
        for s in &self.slots {
            if !groups.contains(&(s.decay, s.lr_factor, s.start)) {
                groups.push((s.decay, s.lr_factor, s.start));
            }
        }
        for (decay, lr_factor, start) in groups {
            let slots: Vec<(&Slot, Tensor)> = (self.slots.iter())
                .filter(|s| s.decay == decay && s.lr_factor == lr_factor && s.start == start)
                .map(|s| (s, s.param.grad()))
                .filter(|(_, g)| g.defined())
                .collect();
            let Some((first, _)) = slots.first() else { continue };
            let step = Tensor::from((self.step - start) as f32).to_device(first.param.device());
            let hyper = ftlab_torch_ext::AdamWStep {
                lr: lr * lr_factor,
                betas: self.betas,
                weight_decay: if decay { self.weight_decay } else { 0.0 },
                eps: self.eps,
            };
            let params: Vec<&Tensor> = slots.iter().map(|(s, _)| &s.param).collect();
            let grads: Vec<&Tensor> = slots.iter().map(|(_, g)| g).collect();
            let m: Vec<&Tensor> = slots.iter().map(|(s, _)| &s.m).collect();
            let v: Vec<&Tensor> = slots.iter().map(|(s, _)| &s.v).collect();
            ftlab_torch_ext::fused_adamw(&params, &grads, &m, &v, &step, hyper)
                .map_err(|e| Error::Optimizer { step: self.step, message: e.to_string() })?;
        }
        Ok(())
    }

    /// Everything needed to resume: the parameters and both moments by name (with the step a
    /// tensor started training at, when not 0), and the values of tensors that trained before.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = Vec::with_capacity(3 * self.slots.len() + self.retired.len());
        for s in &self.slots {
            state.push((format!("param/{}", s.name), s.param.detach()));
            state.push((format!("m/{}", s.name), s.m.shallow_clone()));
            state.push((format!("v/{}", s.name), s.v.shallow_clone()));
            if s.start > 0 {
                state.push((format!("start/{}", s.name), Tensor::from(s.start as i64)));
            }
        }
        state.extend(self.retired.iter().map(|(name, param)| (format!("param/{name}"), param.detach())));
        state
    }

    /// Restores [`AdamW::state`] read from `path`; every slot must be present with its shape.
    /// Values of tensors that trained before (not slots now) go into `tensor(name)`.
    pub fn load_state(
        &mut self,
        state: &[(String, Tensor)],
        step: usize,
        path: &std::path::Path,
        tensor: impl Fn(&str) -> Option<Tensor>,
    ) -> Result<()> {
        let find = |key: String| {
            state
                .iter()
                .find(|(n, _)| *n == key)
                .map(|(_, t)| t)
                .ok_or_else(|| crate::Error::Checkpoint { path: path.into(), key })
        };
        tch::no_grad(|| -> Result<()> {
            for s in &mut self.slots {
                s.param.f_copy_(find(format!("param/{}", s.name))?)?;
                s.m.f_copy_(find(format!("m/{}", s.name))?)?;
                s.v.f_copy_(find(format!("v/{}", s.name))?)?;
                let start = state.iter().find(|(n, _)| *n == format!("start/{}", s.name));
                s.start = start.map_or(0, |(_, t)| t.int64_value(&[]) as usize);
            }
            self.retired.clear();
            for (key, value) in state {
                let Some(name) = key.strip_prefix("param/").filter(|n| !self.slots.iter().any(|s| s.name == *n)) else {
                    continue;
                };
                let mut param =
                    tensor(name).ok_or_else(|| crate::Error::Checkpoint { path: path.into(), key: key.clone() })?;
                param.f_copy_(value)?;
                self.retired.push((name.to_string(), param));
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> i64 {
        self.slots.iter().map(|s| s.param.numel() as i64).sum()
    }
}

/// The peak learning rate of parameter `name`: its longest `train.lr_groups` prefix's, else
/// `train.lr`.
pub fn group_lr(config: &TrainConfig, name: &str) -> f64 {
    (config.lr_groups.iter())
        .filter(|(prefix, _)| name.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len())
        .map_or(config.lr, |(_, lr)| *lr)
}

/// Learning rate at optimizer step `step` (0-based) of `total`.
pub fn learning_rate(config: &TrainConfig, step: usize, total: usize) -> f64 {
    let warmup =
        if config.schedule == Schedule::Constant { 0 } else { (config.warmup_ratio * total as f64).ceil() as usize };
    if step < warmup {
        return config.lr * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match config.schedule {
        Schedule::Constant | Schedule::WarmupConstant => config.lr,
        Schedule::Linear => config.lr * (1.0 - progress).max(0.0),
        Schedule::Cosine => config.lr * 0.5 * (1.0 + (PI * progress.min(1.0)).cos()),
    }
}

/// Dynamic loss scaling for fp16 autocast, with PyTorch's `GradScaler` defaults: small fp16
/// gradients underflow to zero, so the loss is multiplied by `scale` before the backward pass
/// and the gradients divided by it after; a step whose gradients overflowed is skipped and the
/// scale halved, and after 2000 clean steps it doubles. Disabled (scale 1), it changes nothing.
#[derive(Debug, Clone)]
pub struct LossScaler {
    /// The current factor.
    pub scale: f64,
    enabled: bool,
    clean_steps: usize,
}

impl LossScaler {
    /// Clean steps before the scale doubles.
    const GROWTH_INTERVAL: usize = 2000;

    /// A scaler starting at 2¹⁶ when `enabled`, else the identity.
    pub fn new(enabled: bool) -> Self {
        Self { scale: if enabled { 65536.0 } else { 1.0 }, enabled, clean_steps: 0 }
    }

    /// Records whether the step's gradients were finite, adjusting the scale; returns whether
    /// to take the step.
    pub fn update(&mut self, finite: bool) -> bool {
        if !self.enabled {
            return true;
        }
        if !finite {
            self.scale /= 2.0;
            self.clean_steps = 0;
            return false;
        }
        self.clean_steps += 1;
        if self.clean_steps == Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_then_follow_their_shape() {
        let mut c =
            TrainConfig { lr: 1.0, warmup_ratio: 0.1, schedule: Schedule::WarmupConstant, ..Default::default() };
        let lrs: Vec<f64> = (0..100).map(|s| learning_rate(&c, s, 100)).collect();
        assert_eq!((lrs[0], lrs[9], lrs[10], lrs[99]), (0.1, 1.0, 1.0, 1.0));
        c.schedule = Schedule::Linear;
        assert!((learning_rate(&c, 55, 100) - 0.5).abs() < 1e-9);
        c.schedule = Schedule::Cosine;
        assert!((learning_rate(&c, 55, 100) - 0.5).abs() < 1e-9);
        c.schedule = Schedule::Constant;
        assert_eq!(learning_rate(&c, 0, 100), 1.0);
    }

    /// One AdamW step equals torch.optim.AdamW's, computed by hand: with m̂ = g and v̂ = g² after
    /// bias correction, the first update is lr·sign(g) (up to ε) plus decoupled decay.
    #[test]
    fn first_step_matches_torch_adamw() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let c = TrainConfig { weight_decay: 0.1, ..Default::default() };
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], &c).unwrap();
        (&p * Tensor::from_slice(&[3.0f32, -0.5])).sum(Kind::Float).backward();
        opt.step(0.01).unwrap();
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        // p·(1 − lr·wd) − lr·g/(|g| + ε)
        let expected = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        for (g, e) in got.iter().zip(expected) {
            assert!((f64::from(*g) - e).abs() < 1e-6, "{got:?} vs {expected:?}");
        }
        assert!(!decays("model.decoder.layers.0.fc1.bias") && !decays("model.decoder.final_layer_norm.weight"));
        assert!(decays("model.decoder.layers.0.fc1.weight"));
    }

    /// A group's rate replaces `lr` for the names it starts (the longest prefix winning), scaled
    /// by the schedule as `lr` is; a prefix naming nothing is refused with its name.
    #[test]
    fn parameter_groups_step_at_their_own_rates() {
        let names = ["vanilla_ft.score.weight", "model.decoder.layers.0.fc1.weight", "model.decoder.layers.0.fc1.bias"];
        let params: Vec<Tensor> = names.iter().map(|_| Tensor::from_slice(&[0.0f32]).set_requires_grad(true)).collect();
        let groups = [("vanilla_ft.".to_string(), 0.1), ("model.decoder.layers.0.fc1.b".to_string(), 0.001)];
        let c = TrainConfig { lr: 0.01, lr_groups: groups.into_iter().collect(), ..Default::default() };
        let named = || names.iter().map(|n| n.to_string()).zip(params.iter().map(Tensor::shallow_clone)).collect();
        let mut opt = AdamW::new(named(), &c).unwrap();
        for p in &params {
            (p * -1.0).sum(Kind::Float).backward();
        }
        opt.step(0.005).unwrap(); // half the peak rate, as a schedule would give
        let moved: Vec<f64> = params.iter().map(|p| p.double_value(&[0])).collect();
        for (got, expected) in moved.iter().zip([0.05, 0.005, 0.0005]) {
            assert!((got - expected).abs() < 1e-7, "{moved:?}");
        }
        let typo = TrainConfig { lr_groups: [("vanila_ft.".to_string(), 0.1)].into_iter().collect(), ..c };
        let err = AdamW::new(named(), &typo).err().unwrap().to_string();
        assert!(err.contains("train.lr_groups") && err.contains("vanila_ft."), "{err}");
    }

    /// Retargeting keeps the moments of tensors that go on training; a new one starts with none
    /// and its bias correction counts from its own first step (so that step moves it by the
    /// full rate, as any first step does, where the run's 4th would move it by 0.58 of it);
    /// a dropped one's value stays in the state, and `load_state` puts all of it back.
    #[test]
    fn retargeting_moves_state_to_the_tensors_that_train() {
        let c = TrainConfig { weight_decay: 0.0, ..Default::default() };
        let scalar = || Tensor::from_slice(&[0.0f32]).set_requires_grad(true);
        let (a, b) = (scalar(), scalar());
        let step = |opt: &mut AdamW, p: &Tensor| {
            opt.zero_grad();
            (p * -1.0).sum(Kind::Float).backward();
            opt.step(0.01).unwrap();
        };
        let mut opt = AdamW::new(vec![("a".into(), a.shallow_clone())], &c).unwrap();
        for _ in 0..3 {
            step(&mut opt, &a);
        }
        opt.retarget(vec![("b".into(), b.shallow_clone())], &c);
        step(&mut opt, &b);
        assert!((a.double_value(&[0]) - 0.03).abs() < 1e-6 && (b.double_value(&[0]) - 0.01).abs() < 1e-6);
        let state = opt.state();
        let mut names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["m/b", "param/a", "param/b", "start/b", "v/b"]);

        let (a2, b2) = (scalar(), scalar());
        let mut resumed = AdamW::new(vec![("b".into(), b2.shallow_clone())], &c).unwrap();
        let path = std::path::Path::new("state.safetensors");
        resumed.load_state(&state, 4, path, |n| (n == "a").then(|| a2.shallow_clone())).unwrap();
        assert_eq!((a2.double_value(&[0]), b2.double_value(&[0])), (a.double_value(&[0]), b.double_value(&[0])));
        step(&mut opt, &b);
        step(&mut resumed, &b2);
        assert_eq!(b.double_value(&[0]), b2.double_value(&[0]), "the resumed optimizer steps alike");
        let err = AdamW::new(vec![("b".into(), scalar())], &c).unwrap().load_state(&state, 4, path, |_| None);
        assert!(err.unwrap_err().to_string().contains("param/a"));
    }

    /// Moved moments follow `from` (kept entries keep theirs, -1 starts at zero) and the step
    /// count goes on; a tensor that does not train or a bad index list is refused by name.
    #[test]
    fn moments_move_as_the_method_asks() {
        let c = TrainConfig { weight_decay: 0.0, ..Default::default() };
        let p = Tensor::from_slice(&[0.0f32, 0.0, 0.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("s".into(), p.shallow_clone())], &c).unwrap();
        (&p * Tensor::from_slice(&[1.0f32, 2.0, 3.0])).sum(Kind::Float).backward();
        opt.step(0.01).unwrap();
        let m = |opt: &AdamW| Vec::<f32>::try_from(&opt.state()[1].1).unwrap();
        let before = m(&opt);
        opt.move_moments("s", &Tensor::from_slice(&[2i64, -1, 0])).unwrap();
        assert_eq!(m(&opt), [before[2], 0.0, before[0]]);
        assert_eq!(opt.step, 1);
        let err = |opt: &mut AdamW, name: &str, from: &[i64]| {
            opt.move_moments(name, &Tensor::from_slice(from)).unwrap_err().to_string()
        };
        assert!(err(&mut opt, "t", &[0, 1, 2]).contains("`t` does not train"));
        assert!(err(&mut opt, "s", &[0, 1, 3]).contains("-1..3"));
        assert!(err(&mut opt, "s", &[0, 1]).contains("-1..3"));
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let p = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], &TrainConfig::default()).unwrap();
        (&p * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float).backward();
        assert!((opt.clip_grad_norm(1.0) - 5.0).abs() < 1e-6);
        let g: Vec<f32> = Vec::try_from(&p.grad()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-4 && (g[1] - 0.8).abs() < 1e-4, "{g:?}");
    }

    #[test]
    fn the_loss_scale_halves_on_overflow_and_grows_after_clean_steps() {
        let mut scaler = LossScaler::new(true);
        assert!(!scaler.update(false));
        assert_eq!(scaler.scale, 32768.0);
        for _ in 0..LossScaler::GROWTH_INTERVAL {
            assert!(scaler.update(true));
        }
        assert_eq!(scaler.scale, 65536.0);
        let mut off = LossScaler::new(false);
        assert!(off.update(false) && off.scale == 1.0, "disabled, it never skips");
    }
}
