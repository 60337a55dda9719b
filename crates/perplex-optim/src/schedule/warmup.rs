//! Schedules with a linear warm-up from 0, in the Hugging Face `transformers` style:
//! `warmup_cosine`, `warmup_linear`, `inverse_sqrt`.
use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

use super::{check, stateless, LrSchedule, ScheduleConfig, StepFunction};
use crate::OptimError;

/// The warm-up factor `k / max(1, w)` for `k < w`, as `transformers`' schedules.
fn warmup_factor(step: i64, warmup_steps: i64) -> f64 {
    step as f64 / warmup_steps.max(1) as f64
}

fn check_warmup_total(
    schedule: &'static str,
    warmup_steps: i64,
    total_steps: i64,
) -> Result<(), OptimError> {
    check(
        schedule,
        "warmup_steps",
        warmup_steps,
        warmup_steps >= 0,
        "warmup_steps >= 0",
    )?;
    check(
        schedule,
        "total_steps",
        total_steps,
        total_steps >= 1 && total_steps >= warmup_steps,
        "total_steps >= 1 and >= warmup_steps",
    )
}

/// Linear warm-up then cosine decay to 0 (`type = "warmup_cosine"`), as `transformers`'
/// `get_cosine_schedule_with_warmup` (half a cosine; a `torch.optim.lr_scheduler.LambdaLR`):
/// `lr_k = base_lr · k / max(1, w)` for `k < w`, else
/// `min_lr + (base_lr - min_lr) · max(0, (1 + cos(π·(k - w) / max(1, T - w))) / 2)` (`min_lr`
/// 0 by default; nanoGPT's `get_lr` decays to a `min_lr` instead).
///
/// As that formula, the cosine is not clamped past `total_steps`: the lr rises again after `T`
/// (set `total_steps` to the run's length).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupCosineConfig {
    /// Warm-up steps w (the lr rises linearly from 0 at step 0). Required.
    pub warmup_steps: i64,
    /// Total steps T, warm-up included (the lr reaches `min_lr` at step T). Required.
    pub total_steps: i64,
    /// The floor of the cosine: the decay goes from `base_lr` to `min_lr` (nanoGPT's `min_lr`,
    /// usually `base_lr / 10`). Default 0, `transformers`' schedule.
    #[serde(default)]
    pub min_lr: f64,
}

impl StepFunction for WarmupCosineConfig {
    fn lr_at(&self, base_lr: f64, step: i64) -> f64 {
        let (w, t) = (self.warmup_steps, self.total_steps);
        if step < w {
            return base_lr * warmup_factor(step, w);
        }
        let progress = (step - w) as f64 / (t - w).max(1) as f64;
        let cosine = (0.5 * (1.0 + (PI * progress).cos())).max(0.0);
        self.min_lr + (base_lr - self.min_lr) * cosine
    }
}

#[typetag::serde(name = "warmup_cosine")]
impl ScheduleConfig for WarmupCosineConfig {
    fn build(&self, base_lr: f64) -> Result<Box<dyn LrSchedule>, OptimError> {
        check_warmup_total("warmup_cosine", self.warmup_steps, self.total_steps)?;
        check(
            "warmup_cosine",
            "min_lr",
            self.min_lr,
            (0.0..=base_lr).contains(&self.min_lr),
            "0 <= min_lr <= lr",
        )?;
        stateless("warmup_cosine", base_lr, self)
    }
}

/// Linear warm-up then linear decay to 0 (`type = "warmup_linear"`), as `transformers`'
/// `get_linear_schedule_with_warmup` (a `torch.optim.lr_scheduler.LambdaLR`):
/// `lr_k = base_lr · k / max(1, w)` for `k < w`, else `base_lr · max(0, (T - k) / max(1, T - w))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupLinearConfig {
    /// Warm-up steps w (the lr rises linearly from 0 at step 0). Required.
    pub warmup_steps: i64,
    /// Total steps T, warm-up included (the lr is 0 from step T on). Required.
    pub total_steps: i64,
}

impl StepFunction for WarmupLinearConfig {
    fn lr_at(&self, base_lr: f64, step: i64) -> f64 {
        let (w, t) = (self.warmup_steps, self.total_steps);
        let factor = if step < w {
            warmup_factor(step, w)
        } else {
            ((t - step) as f64 / (t - w).max(1) as f64).max(0.0)
        };
        base_lr * factor
    }
}

#[typetag::serde(name = "warmup_linear")]
impl ScheduleConfig for WarmupLinearConfig {
    fn build(&self, base_lr: f64) -> Result<Box<dyn LrSchedule>, OptimError> {
        check_warmup_total("warmup_linear", self.warmup_steps, self.total_steps)?;
        stateless("warmup_linear", base_lr, self)
    }
}

/// Linear warm-up then inverse-square-root decay (`type = "inverse_sqrt"`; Vaswani et al. 2017,
/// "Attention Is All You Need"), as `transformers`' `get_inverse_sqrt_schedule` (and fairseq's
/// `inverse_sqrt` with a warm-up from 0):
/// `lr_k = base_lr · k / max(1, w)` for `k < w`, else `base_lr / sqrt((k + s - w) / s)` with
/// timescale `s` (so `base_lr · sqrt(w / k)` when `s = w`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InverseSqrtConfig {
    /// Warm-up steps w (the lr rises linearly from 0 at step 0, reaching `base_lr` at w).
    /// Required.
    pub warmup_steps: i64,
    /// Timescale s of the decay (≥ 1). Default `warmup_steps`, or 10 000 when that is 0 (as
    /// `transformers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timescale: Option<i64>,
}

impl InverseSqrtConfig {
    fn timescale(&self) -> i64 {
        match self.timescale {
            Some(s) => s,
            None if self.warmup_steps > 0 => self.warmup_steps,
            None => 10_000,
        }
    }
}

impl StepFunction for InverseSqrtConfig {
    fn lr_at(&self, base_lr: f64, step: i64) -> f64 {
        let w = self.warmup_steps;
        let factor = if step < w {
            warmup_factor(step, w)
        } else {
            let s = self.timescale();
            1.0 / ((step + s - w) as f64 / s as f64).sqrt()
        };
        base_lr * factor
    }
}

#[typetag::serde(name = "inverse_sqrt")]
impl ScheduleConfig for InverseSqrtConfig {
    fn build(&self, base_lr: f64) -> Result<Box<dyn LrSchedule>, OptimError> {
        check(
            "inverse_sqrt",
            "warmup_steps",
            self.warmup_steps,
            self.warmup_steps >= 0,
            "warmup_steps >= 0",
        )?;
        let s = self.timescale();
        check("inverse_sqrt", "timescale", s, s >= 1, "timescale >= 1")?;
        stateless("inverse_sqrt", base_lr, self)
    }
}
