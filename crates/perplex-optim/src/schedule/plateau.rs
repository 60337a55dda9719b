//! Reduce-on-plateau: the lr drops when the validation loss stops improving.
use serde::{Deserialize, Serialize};

use super::{check, check_base_lr, LrSchedule, ScheduleConfig};
use crate::OptimError;

/// Whether lower (`min`, a loss) or higher (`max`, an accuracy) metrics are better.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlateauMode {
    /// Lower is better.
    #[default]
    Min,
    /// Higher is better.
    Max,
}

/// How `threshold` measures a significant improvement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThresholdMode {
    /// Relative: better than `best · (1 ∓ threshold)`.
    #[default]
    Rel,
    /// Absolute: better than `best ∓ threshold`.
    Abs,
}

/// Reduce the lr when the validation loss plateaus (`type = "reduce_on_plateau"`), as
/// `torch.optim.lr_scheduler.ReduceLROnPlateau` with one parameter group, stepped once per
/// [`LrSchedule::on_validation`].
///
/// After each validation: if the loss beats `best` by the threshold, it becomes `best` and the
/// bad-epoch counter resets, otherwise the counter grows; during a cooldown the counter is held
/// at 0; when it exceeds `patience`, `lr ← max(lr · factor, min_lr)` (skipped if that changes
/// the lr by no more than `eps`), the cooldown starts and the counter resets.
///
/// Differs from PyTorch only in the default `factor`: 0.25 instead of 0.1, the
/// `word_language_model` habit of dividing the lr by 4 (that example also uses `patience = 0`
/// and `threshold = 0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReduceOnPlateauConfig {
    /// Factor the lr is multiplied by on a plateau (0 < factor < 1). Default 0.25.
    pub factor: f64,
    /// Validations without improvement tolerated before reducing (≥ 0). Default 10.
    pub patience: i64,
    /// Minimum improvement that counts (≥ 0), measured per `threshold_mode`. Default 1e-4.
    pub threshold: f64,
    /// `rel` or `abs`. Default `rel`.
    pub threshold_mode: ThresholdMode,
    /// `min` (a loss) or `max`. Default `min`.
    pub mode: PlateauMode,
    /// Validations to wait after a reduction before counting bad ones again (≥ 0). Default 0.
    pub cooldown: i64,
    /// The lr never goes below this (≥ 0). Default 0.
    pub min_lr: f64,
    /// A reduction smaller than this is skipped (≥ 0). Default 1e-8.
    pub eps: f64,
}

impl Default for ReduceOnPlateauConfig {
    fn default() -> Self {
        Self {
            factor: 0.25,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            mode: PlateauMode::Min,
            cooldown: 0,
            min_lr: 0.0,
            eps: 1e-8,
        }
    }
}

impl ReduceOnPlateauConfig {
    /// The `best` before any validation: the worst value in `mode`.
    fn worst(&self) -> f64 {
        match self.mode {
            PlateauMode::Min => f64::INFINITY,
            PlateauMode::Max => f64::NEG_INFINITY,
        }
    }

    fn is_better(&self, a: f64, best: f64) -> bool {
        match (self.mode, self.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - self.threshold),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - self.threshold,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (self.threshold + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + self.threshold,
        }
    }
}

#[typetag::serde(name = "reduce_on_plateau")]
impl ScheduleConfig for ReduceOnPlateauConfig {
    fn build(&self, base_lr: f64) -> Result<Box<dyn LrSchedule>, OptimError> {
        const NAME: &str = "reduce_on_plateau";
        check_base_lr(NAME, base_lr)?;
        check(
            NAME,
            "factor",
            self.factor,
            self.factor > 0.0 && self.factor < 1.0,
            "0 < factor < 1",
        )?;
        check(
            NAME,
            "patience",
            self.patience,
            self.patience >= 0,
            "patience >= 0",
        )?;
        check(
            NAME,
            "threshold",
            self.threshold,
            self.threshold.is_finite() && self.threshold >= 0.0,
            "a finite threshold >= 0",
        )?;
        check(
            NAME,
            "cooldown",
            self.cooldown,
            self.cooldown >= 0,
            "cooldown >= 0",
        )?;
        check(
            NAME,
            "min_lr",
            self.min_lr,
            self.min_lr.is_finite() && self.min_lr >= 0.0,
            "a finite min_lr >= 0",
        )?;
        check(NAME, "eps", self.eps, self.eps >= 0.0, "eps >= 0")?;
        Ok(Box::new(ReduceOnPlateau {
            lr: base_lr,
            best: self.worst(),
            num_bad_epochs: 0,
            cooldown_counter: 0,
            config: self.clone(),
        }))
    }
}

/// The schedule built by [`ReduceOnPlateauConfig`]: the current lr, changed only by
/// [`LrSchedule::on_validation`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReduceOnPlateau {
    config: ReduceOnPlateauConfig,
    lr: f64,
    best: f64,
    num_bad_epochs: i64,
    cooldown_counter: i64,
}

/// The checkpointed state; `best` is `None` before the first validation (JSON has no infinity).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlateauState {
    lr: f64,
    best: Option<f64>,
    num_bad_epochs: i64,
    cooldown_counter: i64,
}

impl LrSchedule for ReduceOnPlateau {
    fn lr(&self, _step: i64) -> f64 {
        self.lr
    }

    fn on_validation(&mut self, val_loss: f64) {
        let c = &self.config;
        if c.is_better(val_loss, self.best) {
            self.best = val_loss;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0;
        }
        if self.num_bad_epochs > c.patience {
            let new_lr = (self.lr * c.factor).max(c.min_lr);
            if self.lr - new_lr > c.eps {
                self.lr = new_lr;
            }
            self.cooldown_counter = c.cooldown;
            self.num_bad_epochs = 0;
        }
    }

    fn state(&self) -> serde_json::Value {
        let state = PlateauState {
            lr: self.lr,
            best: self.best.is_finite().then_some(self.best),
            num_bad_epochs: self.num_bad_epochs,
            cooldown_counter: self.cooldown_counter,
        };
        serde_json::to_value(state).unwrap_or(serde_json::Value::Null)
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<(), OptimError> {
        let s: PlateauState = serde_json::from_value(state.clone())
            .map_err(|e| OptimError::BadState(format!("reduce_on_plateau state: {e}")))?;
        self.lr = s.lr;
        self.best = s.best.unwrap_or_else(|| self.config.worst());
        self.num_bad_epochs = s.num_bad_epochs;
        self.cooldown_counter = s.cooldown_counter;
        Ok(())
    }
}
