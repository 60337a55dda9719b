//! The `Optimizer` and `OptimizerConfig` traits.
use std::fmt::Debug;

use tch::Tensor;

use crate::OptimError;

/// Parameters by name (the model's variable names, e.g. `gru.weight_ih_l0`), sorted by name so
/// that state lines up across runs.
pub type NamedParams = Vec<(String, Tensor)>;

/// A first-order optimiser whose state belongs to it.
///
/// Modelled on candle's `Optimizer`: small, `Result` everywhere. Differences from PyTorch are
/// stated on each implementation.
pub trait Optimizer: Debug + Send {
    /// Updates every parameter from its `.grad()`; parameters without a gradient are skipped.
    ///
    /// # Errors
    /// libtorch errors (device mismatch).
    fn step(&mut self) -> Result<(), OptimError>;

    /// Sets every parameter's gradient to zero.
    fn zero_grad(&mut self);

    /// The learning rate the next step uses.
    fn lr(&self) -> f64;

    /// Sets the learning rate (schedules call this before each step).
    fn set_lr(&mut self, lr: f64);

    /// The number of steps taken.
    fn step_count(&self) -> i64;

    /// The state as named tensors (`PARAM.exp_avg`, ...), for checkpoints; the step count is
    /// saved separately through [`Optimizer::step_count`].
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Restores state written by [`Optimizer::state`] and the step count.
    ///
    /// # Errors
    /// [`OptimError::BadState`] when a tensor is missing or has the wrong shape.
    fn load_state(&mut self, state: &[(String, Tensor)], step_count: i64)
        -> Result<(), OptimError>;

    /// The parameters it updates.
    fn params(&self) -> &NamedParams;
}

/// An optimiser's configuration: the `[optim]` section, picked by `type`.
#[typetag::serde(tag = "type")]
pub trait OptimizerConfig: Debug + Send + Sync {
    /// Builds the optimiser over `params` (create the model's variables first).
    ///
    /// # Errors
    /// [`OptimError::InvalidOption`] for an out-of-range hyperparameter.
    fn build(&self, params: NamedParams) -> Result<Box<dyn Optimizer>, OptimError>;

    /// The base learning rate.
    fn lr(&self) -> f64;
}

/// Looks up `PARAM.suffix` in saved state and copies it into `dst`.
pub(crate) fn restore(
    state: &[(String, Tensor)],
    name: &str,
    dst: &mut Tensor,
) -> Result<(), OptimError> {
    let src = state
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .ok_or_else(|| OptimError::BadState(format!("missing tensor {name}")))?;
    if src.size() != dst.size() {
        return Err(OptimError::BadState(format!(
            "{name} has shape {:?}, expected {:?}",
            src.size(),
            dst.size()
        )));
    }
    tch::no_grad(|| dst.f_copy_(src))?;
    Ok(())
}

pub(crate) fn check(
    option: &'static str,
    value: f64,
    ok: bool,
    expected: &'static str,
) -> Result<(), OptimError> {
    if ok {
        Ok(())
    } else {
        Err(OptimError::InvalidOption {
            option,
            value: value.to_string(),
            expected,
        })
    }
}

pub(crate) fn zero_grads(params: &NamedParams) {
    for (_, p) in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.f_zero_();
        }
    }
}
