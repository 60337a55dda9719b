//! Schedules with a linear warm-up: `warmup_cosine`, `warmup_linear`, `inverse_sqrt`.
//!
//! The warm-up follows nanoGPT by default (`warmup_rule = "nanogpt"`, `lr · (k + 1) / (w + 1)`),
//! so the first optimiser step already moves the parameters; `warmup_rule = "transformers"` gives
//! the Hugging Face `transformers` formulas exactly (`lr · k / w`, which is 0 at step 0: the
//! first step is a no-op, pitfall BB2-09).
use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

use super::{check, stateless, LrSchedule, ScheduleConfig, StepFunction};
use crate::OptimError;

/// How the learning rate of warm-up step `k < w` (0-based) is scaled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmupRule {
    /// `(k + 1) / (w + 1)`: nanoGPT's `get_lr` since karpathy/nanoGPT PR #578 (and
    /// `shared/reference/pytorch_gpt_lm.py`). Step 0 gets `lr / (w + 1)`, step `w` the full lr.
    #[default]
    Nanogpt,
    /// `k / max(1, w)`: `transformers`' `get_*_schedule_with_warmup` (a `LambdaLR`). Step 0 gets
    /// lr 0, so the first optimiser step changes nothing.
    Transformers,
}

impl WarmupRule {
    /// The factor of the base lr at warm-up step `step < warmup_steps`.
    fn factor(self, step: i64, warmup_steps: i64) -> f64 {
        match self {
            Self::Nanogpt => (step + 1) as f64 / (warmup_steps + 1) as f64,
            Self::Transformers => step as f64 / warmup_steps.max(1) as f64,
        }
    }
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

/// Linear warm-up then cosine decay to `min_lr` (`type = "warmup_cosine"`), nanoGPT's `get_lr`:
/// `lr_k = base_lr · r(k)` for `k < w` (`r` the [`WarmupRule`]), then
/// `min_lr + (base_lr - min_lr) · (1 + cos(π·(k - w) / max(1, T - w))) / 2` for `w <= k <= T`,
/// and `min_lr` from `T` on. With `warmup_rule = "transformers"` and `min_lr = 0` this is
/// `transformers`' `get_cosine_schedule_with_warmup` up to step `T` (which, unclamped, would
/// rise again after `T`).
///
/// With `warmup_steps = 4`, `total_steps = 12`, lr 1e-3 and `min_lr = 1e-4` steps 0..13 get
/// 2e-4, 4e-4, 6e-4, 8e-4, 1e-3, 9.657e-4, ..., 1.343e-4, 1e-4, 1e-4.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupCosineConfig {
    /// Warm-up steps w (the lr rises linearly to `base_lr` at step w). Required.
    pub warmup_steps: i64,
    /// Total steps T, warm-up included (the lr reaches `min_lr` at step T and stays there).
    /// Required.
    pub total_steps: i64,
    /// The floor of the cosine: the decay goes from `base_lr` to `min_lr` (nanoGPT's `min_lr`,
    /// usually `base_lr / 10`). Default 0, `transformers`' schedule.
    #[serde(default)]
    pub min_lr: f64,
    /// The warm-up's formula. Default `"nanogpt"`.
    #[serde(default)]
    pub warmup_rule: WarmupRule,
}

impl StepFunction for WarmupCosineConfig {
    fn lr_at(&self, base_lr: f64, step: i64) -> f64 {
        let (w, t) = (self.warmup_steps, self.total_steps);
        if step < w {
            return base_lr * self.warmup_rule.factor(step, w);
        }
        if step >= t {
            // Exactly the floor (the cosine at T is -1 only up to rounding), and no rise after.
            return self.min_lr;
        }
        let progress = (step - w) as f64 / (t - w).max(1) as f64;
        let cosine = 0.5 * (1.0 + (PI * progress).cos());
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
/// `get_linear_schedule_with_warmup` (a `torch.optim.lr_scheduler.LambdaLR`) but for the
/// warm-up's [`WarmupRule`]: `lr_k = base_lr · r(k)` for `k < w`, else
/// `base_lr · max(0, (T - k) / max(1, T - w))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupLinearConfig {
    /// Warm-up steps w (the lr rises linearly to `base_lr` at step w). Required.
    pub warmup_steps: i64,
    /// Total steps T, warm-up included (the lr is 0 from step T on). Required.
    pub total_steps: i64,
    /// The warm-up's formula. Default `"nanogpt"`.
    #[serde(default)]
    pub warmup_rule: WarmupRule,
}

impl StepFunction for WarmupLinearConfig {
    fn lr_at(&self, base_lr: f64, step: i64) -> f64 {
        let (w, t) = (self.warmup_steps, self.total_steps);
        let factor = if step < w {
            self.warmup_rule.factor(step, w)
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
/// `inverse_sqrt`) but for the warm-up's [`WarmupRule`]: `lr_k = base_lr · r(k)` for `k < w`,
/// else `base_lr / sqrt((k + s - w) / s)` with timescale `s` (so `base_lr · sqrt(w / k)` when
/// `s = w`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InverseSqrtConfig {
    /// Warm-up steps w (the lr rises linearly, reaching `base_lr` at w). Required.
    pub warmup_steps: i64,
    /// Timescale s of the decay (≥ 1). Default `warmup_steps`, or 10 000 when that is 0 (as
    /// `transformers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timescale: Option<i64>,
    /// The warm-up's formula. Default `"nanogpt"`.
    #[serde(default)]
    pub warmup_rule: WarmupRule,
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
            self.warmup_rule.factor(step, w)
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
