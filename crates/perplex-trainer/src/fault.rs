//! A test-only fault-injection hook, for the tests of how a run handles a non-finite loss or
//! gradient (on one rank of a data-parallel run: pitfall BB2-22).
//!
//! `PERPLEX_TEST_NAN_AT_STEP=STEP:RANK[:loss|:grad]` makes [`crate::Trainer::fit`] turn the
//! training loss (`loss`, the default) or the gradient of the first trainable parameter by name
//! (`grad`) into NaN at optimiser step `STEP` (1-based, as in the logs) on the process of rank
//! `RANK` (0 in a single process), after that process's backward and before anything is reduced
//! across processes. Unset, it costs one `Option` check per step. Never set it outside tests.
use crate::TrainerError;

/// The environment variable of the hook.
pub const NAN_AT_STEP_ENV: &str = "PERPLEX_TEST_NAN_AT_STEP";

/// What the hook turns into NaN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NanTarget {
    /// The process's loss (its share of the step's loss).
    Loss,
    /// The gradient of the first trainable parameter (by name).
    Grad,
}

/// A NaN to inject at one step on one rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NanInjection {
    /// Optimiser step, from 1.
    pub step: u64,
    /// The rank whose values are poisoned.
    pub rank: usize,
    /// What is poisoned.
    pub target: NanTarget,
}

impl NanInjection {
    /// The injection `PERPLEX_TEST_NAN_AT_STEP` asks for, if it is set.
    ///
    /// # Errors
    /// [`TrainerError::Config`] naming the variable when its value is not `STEP:RANK[:loss|grad]`.
    pub fn from_env() -> Result<Option<Self>, TrainerError> {
        match std::env::var(NAN_AT_STEP_ENV) {
            Ok(v) => Self::parse(&v).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Parses `STEP:RANK[:loss|grad]`.
    ///
    /// # Errors
    /// [`TrainerError::Config`] naming the variable and the value.
    pub fn parse(value: &str) -> Result<Self, TrainerError> {
        let bad = || TrainerError::Config {
            source_name: NAN_AT_STEP_ENV.into(),
            message: format!(
                "{value:?} is not STEP:RANK[:loss|grad] (a step from 1, a rank from 0), e.g. 3:1 \
                 or 3:1:grad"
            ),
        };
        let parts: Vec<&str> = value.trim().split(':').collect();
        let (step, rank, target) = match parts.as_slice() {
            [s, r] => (s, r, NanTarget::Loss),
            [s, r, "loss"] => (s, r, NanTarget::Loss),
            [s, r, "grad"] => (s, r, NanTarget::Grad),
            _ => return Err(bad()),
        };
        let step: u64 = step.parse().map_err(|_| bad())?;
        let rank: usize = rank.parse().map_err(|_| bad())?;
        if step == 0 {
            return Err(bad());
        }
        Ok(Self { step, rank, target })
    }

    /// Whether the injection fires at `step` (1-based) on `rank`.
    pub fn fires(&self, step: u64, rank: usize) -> bool {
        self.step == step && self.rank == rank
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_parses_step_rank_and_target_and_names_itself_when_malformed() {
        let i = NanInjection::parse("3:1").unwrap();
        assert_eq!((i.step, i.rank, i.target), (3, 1, NanTarget::Loss));
        assert!(i.fires(3, 1) && !i.fires(3, 0) && !i.fires(2, 1));
        let i = NanInjection::parse("7:0:grad").unwrap();
        assert_eq!(i.target, NanTarget::Grad);
        for bad in ["", "3", "0:1", "x:1", "3:-1", "3:1:weights", "3:1:grad:x"] {
            let e = NanInjection::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains(NAN_AT_STEP_ENV) && e.contains("STEP:RANK"),
                "{e}"
            );
        }
    }
}
