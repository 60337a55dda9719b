//! Schedules without warm-up: `constant`, `step`, `exponential`, `cosine`.
use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

use super::{check, stateless, LrSchedule, ScheduleConfig, StepFunction};
use crate::OptimError;

/// The base learning rate at every step (`type = "constant"`; `torch.optim.lr_scheduler`'s
/// `ConstantLR` with factor 1). No options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstantConfig {}

impl StepFunction for ConstantConfig {
    fn lr_at(&self, base_lr: f64, _step: i64) -> f64 {
        base_lr
    }
}

#[typetag::serde(name = "constant")]
impl ScheduleConfig for ConstantConfig {
    fn build(&self, base_lr: f64) -> Result<Box<dyn LrSchedule>, OptimError> {
        stateless("constant", base_lr, self)
    }
}

/// Step decay (`type = "step"`), as `torch.optim.lr_scheduler.StepLR`:
/// `lr_k = base_lr · γ^⌊k / step_size⌋`.
///
/// PyTorch multiplies the previous lr by γ every `step_size` steps; this evaluates the closed
/// form (the same value up to rounding, about 1e-17 relative per decay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// Steps between decays (≥ 1). Required.
    pub step_size: i64,
    /// Multiplicative factor γ per decay (> 0). Default 0.1.
    #[serde(default = "default_step_gamma")]
    pub gamma: f64,
}

fn default_step_gamma() -> f64 {
    0.1
}

impl StepFunction for StepConfig {
    fn lr_at(&self, base_lr: f64, step: i64) -> f64 {
        base_lr * self.gamma.powf((step / self.step_size) as f64)
    }
}

#[typetag::serde(name = "step")]
impl ScheduleConfig for StepConfig {
    fn build(&self, base_lr: f64) -> Result<Box<dyn LrSchedule>, OptimError> {
        check(
            "step",
            "step_size",
            self.step_size,
            self.step_size >= 1,
            "step_size >= 1",
        )?;
        check_gamma("step", self.gamma)?;
        stateless("step", base_lr, self)
    }
}

/// Exponential decay (`type = "exponential"`), as `torch.optim.lr_scheduler.ExponentialLR`:
/// `lr_k = base_lr · γ^k`.
///
/// PyTorch multiplies the previous lr by γ at every step; this evaluates the closed form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExponentialConfig {
    /// Multiplicative factor γ per step (> 0). Required.
    pub gamma: f64,
}

impl StepFunction for ExponentialConfig {
    fn lr_at(&self, base_lr: f64, step: i64) -> f64 {
        base_lr * self.gamma.powf(step as f64)
    }
}

#[typetag::serde(name = "exponential")]
impl ScheduleConfig for ExponentialConfig {
    fn build(&self, base_lr: f64) -> Result<Box<dyn LrSchedule>, OptimError> {
        check_gamma("exponential", self.gamma)?;
        stateless("exponential", base_lr, self)
    }
}

/// Cosine annealing (`type = "cosine"`; Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient
/// Descent with Warm Restarts", without restarts), as
/// `torch.optim.lr_scheduler.CosineAnnealingLR`:
/// `lr_k = η_min + (base_lr - η_min) · (1 + cos(π·k / t_max)) / 2`.
///
/// As PyTorch's, the curve does not stop at `t_max`: it rises back to `base_lr` at `2·t_max` and
/// repeats (set `t_max` to the run's length, or use `warmup_cosine`). PyTorch computes each lr
/// from the previous one; this evaluates the closed form (equal up to rounding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosineConfig {
    /// Steps from `base_lr` down to `eta_min` (half a period, ≥ 1). Required.
    pub t_max: i64,
    /// The lowest learning rate η_min (≥ 0). Default 0.
    #[serde(default)]
    pub eta_min: f64,
}

impl StepFunction for CosineConfig {
    fn lr_at(&self, base_lr: f64, step: i64) -> f64 {
        self.eta_min
            + (base_lr - self.eta_min) * (1.0 + (PI * step as f64 / self.t_max as f64).cos()) / 2.0
    }
}

#[typetag::serde(name = "cosine")]
impl ScheduleConfig for CosineConfig {
    fn build(&self, base_lr: f64) -> Result<Box<dyn LrSchedule>, OptimError> {
        check("cosine", "t_max", self.t_max, self.t_max >= 1, "t_max >= 1")?;
        check(
            "cosine",
            "eta_min",
            self.eta_min,
            self.eta_min.is_finite() && self.eta_min >= 0.0,
            "a finite eta_min >= 0",
        )?;
        stateless("cosine", base_lr, self)
    }
}

fn check_gamma(schedule: &'static str, gamma: f64) -> Result<(), OptimError> {
    check(
        schedule,
        "gamma",
        gamma,
        gamma.is_finite() && gamma > 0.0,
        "a finite gamma > 0",
    )
}
