//! The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural
//! Networks", section 3.3; fastai's `lr_find`).
//!
//! The model trains for a few steps while the learning rate grows exponentially from `min_lr` to
//! `max_lr`; the loss, exponentially smoothed, first falls and then blows up. A good learning
//! rate lies where the smoothed loss falls fastest. The run's weights are thrown away.
use std::time::Instant;

use perplex_data::Cursor;
use tch::Kind;

use crate::{OnNonFinite, RunConfig, Trainer, TrainerError};

/// Options of [`lr_find`]; the defaults are fastai's.
#[derive(Debug, Clone, PartialEq)]
pub struct LrFindOptions {
    /// Learning rate of the first step, > 0. Default 1e-7.
    pub min_lr: f64,
    /// Learning rate of the last step, > `min_lr`. Default 10.
    pub max_lr: f64,
    /// Optimiser steps, at least 2. Default 100.
    pub steps: usize,
    /// Smoothing of the loss: `avg ← beta·avg + (1 - beta)·loss`, bias-corrected by
    /// `1 - beta^t` (as Adam's moments). Default 0.98.
    pub beta: f64,
    /// Stop once the smoothed loss exceeds this many times the best one. Default 4.
    pub divergence_factor: f64,
}

impl Default for LrFindOptions {
    fn default() -> Self {
        Self {
            min_lr: 1e-7,
            max_lr: 10.0,
            steps: 100,
            beta: 0.98,
            divergence_factor: 4.0,
        }
    }
}

/// One step of the range test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrFindPoint {
    /// Step, from 1.
    pub step: usize,
    /// Learning rate the step used.
    pub lr: f64,
    /// The step's training loss (the configured objective).
    pub loss: f64,
    /// Bias-corrected exponential moving average of `loss`.
    pub smoothed: f64,
}

/// Why the range test stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrFindStop {
    /// All `steps` steps were taken.
    Completed,
    /// The smoothed loss exceeded `divergence_factor` times the best.
    Diverged,
    /// The loss became NaN or infinite.
    NonFinite,
}

/// What the range test found.
#[derive(Debug, Clone, PartialEq)]
pub struct LrFindResult {
    /// One point per step taken.
    pub points: Vec<LrFindPoint>,
    /// Why it stopped.
    pub stop: LrFindStop,
    /// The learning rate at the steepest descent of the smoothed loss, when there were enough
    /// finite points to tell ([`steepest_descent`]).
    pub suggestion: Option<f64>,
    /// Seconds the steps took.
    pub seconds: f64,
}

/// The learning rate of step `i` (from 0) of `steps`: `min · (max/min)^(i/(steps-1))`.
pub fn lr_at(options: &LrFindOptions, i: usize) -> f64 {
    let t = i as f64 / (options.steps.max(2) - 1) as f64;
    options.min_lr * (options.max_lr / options.min_lr).powf(t)
}

/// The index of the point where the smoothed loss falls fastest against `ln lr`:
/// `argmin_i (s_{i+1} - s_i) / (ln lr_{i+1} - ln lr_i)`, as fastai's `steep` suggestion,
/// ignoring the first tenth of the points and up to five at the end (fastai's `skip_start`
/// and `skip_end`) when that leaves at least 2. `None` with fewer than 2 finite points.
pub fn steepest_descent(points: &[LrFindPoint]) -> Option<usize> {
    let finite = points.iter().take_while(|p| p.smoothed.is_finite()).count();
    let (mut lo, mut hi) = (finite / 10, finite - (finite / 10).min(5));
    if hi < lo + 2 {
        (lo, hi) = (0, finite);
    }
    if hi < lo + 2 {
        return None;
    }
    (lo..hi - 1)
        .map(|i| {
            let (a, b) = (&points[i], &points[i + 1]);
            (i, (b.smoothed - a.smoothed) / (b.lr.ln() - a.lr.ln()))
        })
        .min_by(|x, y| x.1.total_cmp(&y.1))
        .map(|(i, _)| i)
}

fn check(options: &LrFindOptions) -> Result<(), TrainerError> {
    let bad = |message: String| TrainerError::Config {
        source_name: "lr-find options".into(),
        message,
    };
    let o = options;
    if o.min_lr.is_nan() || o.min_lr <= 0.0 || o.min_lr.is_infinite() {
        return Err(bad(format!(
            "min_lr = {} must be a finite number > 0",
            o.min_lr
        )));
    }
    if o.max_lr.is_nan() || o.max_lr <= o.min_lr || o.max_lr.is_infinite() {
        return Err(bad(format!(
            "max_lr = {} must be finite and greater than min_lr = {}",
            o.max_lr, o.min_lr
        )));
    }
    if o.steps < 2 {
        return Err(bad(format!("steps = {} must be at least 2", o.steps)));
    }
    if !(0.0..1.0).contains(&o.beta) {
        return Err(bad(format!("beta = {} must be in [0, 1)", o.beta)));
    }
    if o.divergence_factor.is_nan() || o.divergence_factor <= 1.0 {
        return Err(bad(format!(
            "divergence_factor = {} must be greater than 1",
            o.divergence_factor
        )));
    }
    Ok(())
}

/// Runs the range test on what `config` describes (data, model, loss, optimiser, device, seed,
/// threads, `precision`, `host_allocator`, `accumulate`, clipping): each point is one step of the
/// trainer's own [`Trainer`] step, at a learning rate that grows exponentially (the optimiser's
/// own `lr` and the config's schedule are not used). A non-finite loss or gradient ends the test
/// instead of the run (`on_non_finite` is `skip` here). The training split is read in order,
/// wrapping around (hidden state reset) if `steps` exceeds one epoch. Nothing is written to disk.
///
/// # Errors
/// [`TrainerError::Config`] for bad options, and any error building or running the parts.
pub fn lr_find(
    mut config: RunConfig,
    options: &LrFindOptions,
) -> Result<LrFindResult, TrainerError> {
    check(options)?;
    config.schedule = None;
    config.trainer.on_non_finite = OnNonFinite::Skip;
    let mut trainer = Trainer::in_memory(config)?;
    let batches = trainer.data_train_batches()?;
    tracing::info!(
        device = ?trainer.device(),
        steps = options.steps,
        min_lr = options.min_lr,
        max_lr = options.max_lr,
        steps_per_epoch = batches.len(),
        "learning-rate range test"
    );
    let start = Instant::now();
    let mut points = Vec::with_capacity(options.steps);
    let (mut avg, mut best) = (0.0f64, f64::INFINITY);
    let mut stop = LrFindStop::Completed;
    let mut state = trainer
        .model()
        .initial_state(batches.batch_size(), trainer.device());
    for i in 0..options.steps {
        let window = i % batches.len();
        if (window == 0 && i > 0) || !batches.carries_state() {
            state = trainer
                .model()
                .initial_state(batches.batch_size(), trainer.device());
        }
        let batch = batches
            .get(Cursor {
                epoch: 1,
                index: window,
            })?
            .expect("window index is below len()");
        let lr = lr_at(options, i);
        let (loss, skipped) = trainer.step_at_lr(&batch, &mut state, lr)?;
        let value = loss.to_kind(Kind::Double).double_value(&[]);
        avg = options.beta * avg + (1.0 - options.beta) * value;
        let smoothed = avg / (1.0 - options.beta.powi(i as i32 + 1));
        points.push(LrFindPoint {
            step: i + 1,
            lr,
            loss: value,
            smoothed,
        });
        if skipped || !smoothed.is_finite() {
            stop = LrFindStop::NonFinite;
            break;
        }
        best = best.min(smoothed);
        if smoothed > options.divergence_factor * best {
            stop = LrFindStop::Diverged;
            break;
        }
    }
    let suggestion = steepest_descent(&points).map(|i| points[i].lr);
    Ok(LrFindResult {
        points,
        stop,
        suggestion,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(lrs_losses: &[(f64, f64)]) -> Vec<LrFindPoint> {
        lrs_losses
            .iter()
            .enumerate()
            .map(|(i, &(lr, s))| LrFindPoint {
                step: i + 1,
                lr,
                loss: s,
                smoothed: s,
            })
            .collect()
    }

    #[test]
    fn learning_rate_grows_exponentially_from_min_to_max() {
        let o = LrFindOptions {
            min_lr: 1e-4,
            max_lr: 1.0,
            steps: 5,
            ..Default::default()
        };
        let lrs: Vec<f64> = (0..5).map(|i| lr_at(&o, i)).collect();
        for (got, want) in lrs.iter().zip([1e-4, 1e-3, 1e-2, 1e-1, 1.0]) {
            assert!((got / want - 1.0).abs() < 1e-12, "{got} vs {want}");
        }
    }

    #[test]
    fn suggestion_is_where_the_loss_falls_fastest() {
        let lrs = (0..30).map(|i| 10f64.powf(-6.0 + i as f64 * 0.2));
        // Flat, then a steep fall around index 14, then a rise.
        let losses = (0..30).map(|i| match i {
            0..=12 => 5.0,
            13 => 4.9,
            14 => 4.0,
            15 => 3.8,
            16..=24 => 3.7,
            _ => 3.7 + (i - 24) as f64,
        });
        let p = points(&lrs.zip(losses).collect::<Vec<_>>());
        assert_eq!(steepest_descent(&p), Some(13));
    }

    #[test]
    fn suggestion_ignores_points_after_a_non_finite_loss_and_needs_two() {
        let p = points(&[(1e-3, 2.0), (1e-2, 1.0), (1e-1, f64::NAN)]);
        assert_eq!(steepest_descent(&p), Some(0));
        assert_eq!(steepest_descent(&p[..1]), None);
    }

    #[test]
    fn bad_options_are_named() {
        let e = check(&LrFindOptions {
            min_lr: 1.0,
            max_lr: 0.1,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_lr = 0.1"), "{e}");
        let e = check(&LrFindOptions {
            steps: 1,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("steps = 1"), "{e}");
    }
}
