//! Gradient clipping.
use tch::{Kind, Tensor};

use crate::{NamedParams, OptimError};

/// Scales all gradients so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`: `g ← g · min(1, max_norm / (‖g‖ + 1e-6))`.
///
/// Returns the total norm before clipping (a float32/64 scalar tensor, not read on the host).
/// A non-finite norm leaves the gradients unscaled (the coefficient is NaN-guarded to 1) so the
/// caller can report it rather than silently zeroing the step.
///
/// # Errors
/// libtorch errors.
pub fn clip_grad_norm(params: &NamedParams, max_norm: f64) -> Result<Tensor, OptimError> {
    let grads: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| p.grad())
        .filter(Tensor::defined)
        .collect();
    let Some(first) = grads.first() else {
        return Ok(Tensor::zeros([], (Kind::Float, tch::Device::Cpu)));
    };
    let norms = grads
        .iter()
        .map(|g| g.f_norm())
        .collect::<Result<Vec<_>, _>>()?;
    let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
    let coef = total
        .f_add_scalar(1e-6)?
        .f_reciprocal()?
        .f_mul_scalar(max_norm)?
        .f_clamp_max(1.0)?;
    let finite = coef.f_isfinite()?;
    let coef = coef.f_where_self(&finite, &coef.f_ones_like()?)?;
    let coef = coef.f_to_kind(first.kind())?;
    tch::no_grad(|| -> Result<(), OptimError> {
        for g in &grads {
            let mut g = g.shallow_clone();
            let _ = g.f_mul_(&coef)?;
        }
        Ok(())
    })?;
    Ok(total)
}

/// Clamps every gradient element to `[-clip_value, clip_value]`
/// (`torch.nn.utils.clip_grad_value_`).
///
/// # Errors
/// libtorch errors.
pub fn clip_grad_value(params: &NamedParams, clip_value: f64) -> Result<(), OptimError> {
    tch::no_grad(|| -> Result<(), OptimError> {
        for (_, p) in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.f_clamp_(-clip_value, clip_value)?;
            }
        }
        Ok(())
    })
}
