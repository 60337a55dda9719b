//! Learning-rate schedules: a config (the `[schedule]` section, picked by `type`) builds an
//! [`LrSchedule`] that answers "what learning rate does step k use".
//!
//! Every schedule follows `torch.optim.lr_scheduler` (or, for the warm-up schedules, nanoGPT's
//! warm-up and the Hugging Face `transformers` formulas) and is checked against its learning
//! rates. A schedule
//! returns a number; the caller hands it to [`crate::Optimizer::set_lr`] before each step.
use std::fmt::Debug;

use crate::OptimError;

mod decay;
mod plateau;
mod warmup;

pub use decay::{ConstantConfig, CosineConfig, ExponentialConfig, StepConfig};
pub use plateau::{PlateauMode, ReduceOnPlateau, ReduceOnPlateauConfig, ThresholdMode};
pub use warmup::{InverseSqrtConfig, WarmupCosineConfig, WarmupLinearConfig, WarmupRule};

/// A schedule's configuration, picked by `type` (`constant`, `step`, `exponential`, `cosine`,
/// `warmup_cosine`, `warmup_linear`, `inverse_sqrt`, `reduce_on_plateau`).
#[typetag::serde(tag = "type")]
pub trait ScheduleConfig: Debug + Send + Sync {
    /// Builds the schedule for an optimiser whose configured learning rate is `base_lr`.
    ///
    /// # Errors
    /// [`OptimError::InvalidSchedule`] for an out-of-range option or base learning rate.
    fn build(&self, base_lr: f64) -> Result<Box<dyn LrSchedule>, OptimError>;
}

/// A learning-rate schedule: the learning rate of each step, plus the validation hook that
/// reduce-on-plateau needs.
pub trait LrSchedule: Debug + Send {
    /// The learning rate for optimiser step `step` (0-based: the step about to be taken).
    fn lr(&self, step: i64) -> f64;

    /// Called after each validation with the validation loss (reduce-on-plateau uses it).
    /// Default: nothing.
    fn on_validation(&mut self, _val_loss: f64) {}

    /// Serialisable state (reduce-on-plateau's current lr, best, bad-epoch counter) for
    /// checkpoints; default `Null` (a schedule that is a function of the step alone).
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores state written by [`LrSchedule::state`].
    ///
    /// # Errors
    /// [`OptimError::BadState`] when the value does not fit this schedule.
    fn load_state(&mut self, _state: &serde_json::Value) -> Result<(), OptimError> {
        Ok(())
    }
}

impl<S: LrSchedule + ?Sized> LrSchedule for Box<S> {
    fn lr(&self, step: i64) -> f64 {
        (**self).lr(step)
    }

    fn on_validation(&mut self, val_loss: f64) {
        (**self).on_validation(val_loss);
    }

    fn state(&self) -> serde_json::Value {
        (**self).state()
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<(), OptimError> {
        (**self).load_state(state)
    }
}

/// A schedule that is a function of the step alone: its config evaluated at a base lr.
pub trait StepFunction: Debug + Clone + Send + Sync + 'static {
    /// The learning rate at `step` (≥ 0) for base learning rate `base_lr`.
    fn lr_at(&self, base_lr: f64, step: i64) -> f64;
}

/// The [`LrSchedule`] of a [`StepFunction`] config: the config and the base lr it scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Stateless<C> {
    /// The optimiser's configured learning rate.
    pub base_lr: f64,
    /// The schedule's options.
    pub config: C,
}

impl<C: StepFunction> LrSchedule for Stateless<C> {
    fn lr(&self, step: i64) -> f64 {
        self.config.lr_at(self.base_lr, step.max(0))
    }
}

/// Checks a schedule option, naming the schedule in the error.
pub(crate) fn check(
    schedule: &'static str,
    option: &'static str,
    value: impl ToString,
    ok: bool,
    expected: &'static str,
) -> Result<(), OptimError> {
    if ok {
        Ok(())
    } else {
        Err(OptimError::InvalidSchedule {
            schedule,
            option,
            value: value.to_string(),
            expected,
        })
    }
}

/// Builds the stateless schedule of `config` after checking the base lr.
pub(crate) fn stateless<C: StepFunction>(
    schedule: &'static str,
    base_lr: f64,
    config: &C,
) -> Result<Box<dyn LrSchedule>, OptimError> {
    check_base_lr(schedule, base_lr)?;
    Ok(Box::new(Stateless {
        base_lr,
        config: config.clone(),
    }))
}

pub(crate) fn check_base_lr(schedule: &'static str, base_lr: f64) -> Result<(), OptimError> {
    check(
        schedule,
        "base_lr",
        base_lr,
        base_lr.is_finite() && base_lr >= 0.0,
        "a finite learning rate >= 0",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(json: &str, base_lr: f64) -> Result<Box<dyn LrSchedule>, OptimError> {
        let config: Box<dyn ScheduleConfig> = serde_json::from_str(json).unwrap();
        config.build(base_lr)
    }

    fn lrs(schedule: &dyn LrSchedule, steps: std::ops::Range<i64>) -> Vec<f64> {
        steps.map(|k| schedule.lr(k)).collect()
    }

    #[test]
    fn constant_keeps_the_base_lr() {
        let s = build(r#"{"type": "constant"}"#, 0.3).unwrap();
        assert_eq!(lrs(s.as_ref(), 0..4), vec![0.3; 4]);
    }

    /// nanoGPT's `get_lr` after warm-up: `min_lr + coeff · (lr - min_lr)`,
    /// `coeff = 0.5 · (1 + cos(π · (it - warmup) / (decay_iters - warmup)))`.
    #[test]
    fn warmup_cosine_decays_to_min_lr() {
        let json = r#"{"type": "warmup_cosine", "warmup_steps": 100, "total_steps": 2000, "min_lr": 1e-4}"#;
        let s = build(json, 1e-3).unwrap();
        for it in [100i64, 500, 1000, 1500, 1999, 2000] {
            let coeff = 0.5 * (1.0 + (std::f64::consts::PI * (it - 100) as f64 / 1900.0).cos());
            let nanogpt = 1e-4 + coeff * (1e-3 - 1e-4);
            assert!((s.lr(it) - nanogpt).abs() < 1e-15, "step {it}");
        }
        assert!((s.lr(2000) - 1e-4).abs() < 1e-15);
        let bad =
            r#"{"type": "warmup_cosine", "warmup_steps": 1, "total_steps": 2, "min_lr": 0.5}"#;
        assert!(build(bad, 0.1).unwrap_err().to_string().contains("min_lr"));
    }

    /// BB2-09: with nanoGPT's warm-up (the default) step 0 already trains, the cosine reaches
    /// `min_lr` exactly at `total_steps` and stays there, and no lr falls below `min_lr`. The
    /// pitfall's `tiny.toml` schedule (w = 4, T = 12, lr 1e-3, `min_lr` 1e-4); expected values
    /// computed in Python from `get_lr` of `shared/reference/pytorch_gpt_lm.py` (nanoGPT after
    /// PR #578): `lr·(it+1)/(w+1)` below w, `min_lr` above T.
    #[test]
    fn bb2_09_warmup_cosine_trains_at_step_0_and_ends_exactly_at_min_lr() {
        let json =
            r#"{"type": "warmup_cosine", "warmup_steps": 4, "total_steps": 12, "min_lr": 1e-4}"#;
        let s = build(json, 1e-3).unwrap();
        let expected = [
            2e-4,
            4e-4,
            6e-4,
            8e-4,
            1e-3,
            9.657458e-4,
            8.681981e-4,
            7.222075e-4,
            5.5e-4,
            3.777925e-4,
            2.318019e-4,
            1.342542e-4,
            1e-4,
            1e-4,
        ];
        for (k, want) in expected.iter().enumerate() {
            let got = s.lr(k as i64);
            assert!(
                ((got - want) / want).abs() < 1e-6,
                "step {k}: lr {got}, expected {want}"
            );
        }
        assert!(s.lr(0) > 0.0, "the first step must not be a no-op");
        assert_eq!(s.lr(12), 1e-4, "exactly min_lr at total_steps");
        for k in 0..200 {
            assert!(s.lr(k) >= 1e-4, "step {k}: {} below min_lr", s.lr(k));
        }
        assert!((4..200).all(|k| s.lr(k + 1) <= s.lr(k)), "no rise after T");
    }

    #[test]
    fn warmup_rules_nanogpt_by_default_transformers_from_zero() {
        for ty in ["warmup_cosine", "warmup_linear"] {
            let json = format!(r#"{{"type": "{ty}", "warmup_steps": 4, "total_steps": 10}}"#);
            let s = build(&json, 1.0).unwrap();
            assert_eq!(lrs(s.as_ref(), 0..5), vec![0.2, 0.4, 0.6, 0.8, 1.0], "{ty}");
            assert!(s.lr(10).abs() < 1e-15, "{ty} is not 0 at total_steps");
            let json = format!(
                r#"{{"type": "{ty}", "warmup_steps": 4, "total_steps": 10,
                     "warmup_rule": "transformers"}}"#
            );
            let s = build(&json, 1.0).unwrap();
            assert_eq!(
                lrs(s.as_ref(), 0..5),
                vec![0.0, 0.25, 0.5, 0.75, 1.0],
                "{ty}"
            );
        }
        let linear = build(
            r#"{"type": "warmup_linear", "warmup_steps": 4, "total_steps": 10}"#,
            1.0,
        )
        .unwrap();
        assert_eq!(linear.lr(7), 0.5);
        assert_eq!(linear.lr(20), 0.0);
        let err = serde_json::from_str::<Box<dyn ScheduleConfig>>(
            r#"{"type": "warmup_cosine", "warmup_steps": 1, "total_steps": 2, "warmup_rule": "llm.c"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("nanogpt"), "{err}");
    }

    #[test]
    fn inverse_sqrt_warms_up_then_decays_as_one_over_root_step() {
        let s = build(r#"{"type": "inverse_sqrt", "warmup_steps": 4}"#, 1.0).unwrap();
        assert_eq!(lrs(s.as_ref(), 0..5), vec![0.2, 0.4, 0.6, 0.8, 1.0]);
        let transformers =
            r#"{"type": "inverse_sqrt", "warmup_steps": 4, "warmup_rule": "transformers"}"#;
        let t = build(transformers, 1.0).unwrap();
        assert_eq!(lrs(t.as_ref(), 0..5), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(s.lr(16), 0.5);
        assert_eq!(s.lr(64), 0.25);
        let no_warmup = build(r#"{"type": "inverse_sqrt", "warmup_steps": 0}"#, 1.0).unwrap();
        assert_eq!(no_warmup.lr(0), 1.0);
        assert_eq!(no_warmup.lr(30_000), 0.5);
    }

    #[test]
    fn stateless_schedules_have_null_state() {
        let s = build(r#"{"type": "step", "step_size": 2}"#, 1.0).unwrap();
        assert_eq!(s.state(), serde_json::Value::Null);
        assert!(
            (s.lr(2) - 0.1).abs() < 1e-17,
            "StepLR's gamma defaults to 0.1"
        );
    }

    #[test]
    fn reduce_on_plateau_divides_by_four_after_patience_bad_validations() {
        let mut s = build(r#"{"type": "reduce_on_plateau", "patience": 1}"#, 1.0).unwrap();
        for loss in [5.0, 4.0, 4.5] {
            s.on_validation(loss);
            assert_eq!(s.lr(0), 1.0);
        }
        s.on_validation(4.5);
        assert_eq!(s.lr(0), 0.25);
        assert_eq!(s.lr(1_000), 0.25, "the lr does not depend on the step");
    }

    #[test]
    fn reduce_on_plateau_respects_min_lr_and_cooldown() {
        let mut s = build(
            r#"{"type": "reduce_on_plateau", "patience": 0, "cooldown": 1, "min_lr": 0.1,
                "factor": 0.5}"#,
            1.0,
        )
        .unwrap();
        let mut seen = Vec::new();
        for loss in [1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0] {
            s.on_validation(loss);
            seen.push(s.lr(0));
        }
        assert_eq!(seen, vec![1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.1]);
    }

    #[test]
    fn reduce_on_plateau_state_round_trips_through_json() {
        let json = r#"{"type": "reduce_on_plateau", "patience": 2, "cooldown": 1}"#;
        let mut a = build(json, 0.1).unwrap();
        // Before any validation `best` is infinite, which JSON cannot hold.
        let fresh = serde_json::to_string(&a.state()).unwrap();
        let mut b = build(json, 0.1).unwrap();
        b.load_state(&serde_json::from_str(&fresh).unwrap())
            .unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));

        let losses = [3.0, 2.0, 2.5, 2.5, 2.5, 2.4, 2.6, 2.6, 2.6, 2.6];
        for loss in &losses[..5] {
            a.on_validation(*loss);
        }
        let saved = serde_json::to_string(&a.state()).unwrap();
        let mut b = build(json, 0.1).unwrap();
        b.load_state(&serde_json::from_str(&saved).unwrap())
            .unwrap();
        for loss in &losses[5..] {
            a.on_validation(*loss);
            b.on_validation(*loss);
            assert_eq!(a.lr(0), b.lr(0));
        }
        assert_eq!(a.state(), b.state());
        assert!(a.lr(0) < 0.1);
    }

    #[test]
    fn reduce_on_plateau_rejects_foreign_state() {
        let mut s = build(r#"{"type": "reduce_on_plateau"}"#, 0.1).unwrap();
        let err = s.load_state(&serde_json::Value::Null).unwrap_err();
        assert!(matches!(err, OptimError::BadState(_)), "{err}");
    }

    #[test]
    fn out_of_range_schedule_options_name_the_schedule_and_option() {
        let cases = [
            (r#"{"type": "step", "step_size": 0}"#, "step", "step_size"),
            (
                r#"{"type": "exponential", "gamma": -0.5}"#,
                "exponential",
                "gamma",
            ),
            (r#"{"type": "cosine", "t_max": 0}"#, "cosine", "t_max"),
            (
                r#"{"type": "warmup_cosine", "warmup_steps": 10, "total_steps": 5}"#,
                "warmup_cosine",
                "total_steps",
            ),
            (
                r#"{"type": "warmup_linear", "warmup_steps": -1, "total_steps": 5}"#,
                "warmup_linear",
                "warmup_steps",
            ),
            (
                r#"{"type": "inverse_sqrt", "warmup_steps": 5, "timescale": 0}"#,
                "inverse_sqrt",
                "timescale",
            ),
            (
                r#"{"type": "reduce_on_plateau", "factor": 1.0}"#,
                "reduce_on_plateau",
                "factor",
            ),
            (
                r#"{"type": "reduce_on_plateau", "patience": -1}"#,
                "reduce_on_plateau",
                "patience",
            ),
        ];
        for (json, schedule, option) in cases {
            let err = build(json, 0.1).unwrap_err();
            assert!(
                matches!(&err, OptimError::InvalidSchedule { schedule: s, option: o, .. }
                    if *s == schedule && *o == option),
                "{json}: {err}"
            );
        }
        let err = build(r#"{"type": "constant"}"#, -1.0).unwrap_err();
        assert!(err.to_string().contains("base_lr"), "{err}");
    }

    #[test]
    fn missing_required_or_unknown_schedule_options_fail_to_parse() {
        let parse = |json: &str| serde_json::from_str::<Box<dyn ScheduleConfig>>(json);
        let err = parse(r#"{"type": "cosine"}"#).unwrap_err();
        assert!(err.to_string().contains("t_max"), "{err}");
        let err = parse(r#"{"type": "step", "step_size": 3, "gamam": 0.5}"#).unwrap_err();
        assert!(err.to_string().contains("gamam"), "{err}");
        let err = parse(r#"{"type": "reduce_on_plateau", "mode": "minimum"}"#).unwrap_err();
        assert!(err.to_string().contains("minimum"), "{err}");
        let err = parse(r#"{"type": "one_cycle"}"#).unwrap_err();
        assert!(err.to_string().contains("one_cycle"), "{err}");
    }
}
