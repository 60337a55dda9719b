//! Gradient clipping.
use tch::{Kind, Tensor};

use crate::optimizer::check;
use crate::{NamedParams, OptimError};

/// Scales all gradients so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`: `g ← g · min(1, max_norm / (‖g‖ + 1e-6))`.
///
/// Returns the total norm before clipping (a float32/64 scalar tensor, not read on the host).
/// A non-finite norm (inf or NaN) leaves the gradients unscaled (the coefficient is guarded to 1)
/// so the caller can report it rather than silently zeroing the step; this differs from PyTorch,
/// whose coefficient becomes 0 (inf) or NaN.
///
/// # Errors
/// [`OptimError::InvalidOption`] when `max_norm` is negative or NaN; libtorch errors.
pub fn clip_grad_norm(params: &NamedParams, max_norm: f64) -> Result<Tensor, OptimError> {
    check("max_norm", max_norm, max_norm >= 0.0, "max_norm >= 0")?;
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
    // Guard on the norm, not the coefficient: an infinite norm gives a finite coefficient of 0.
    let finite = total.f_isfinite()?;
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
/// [`OptimError::InvalidOption`] when `clip_value` is negative or NaN; libtorch errors.
pub fn clip_grad_value(params: &NamedParams, clip_value: f64) -> Result<(), OptimError> {
    check(
        "clip_value",
        clip_value,
        clip_value >= 0.0,
        "clip_value >= 0",
    )?;
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

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::{clip_grad_norm, clip_grad_value};
    use crate::{NamedParams, OptimError};

    /// Parameters whose gradients are exactly `grads` (the gradient of `sum(p · g)`).
    fn with_grads(grads: &[&[f64]]) -> NamedParams {
        let params: NamedParams = grads
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let p = Tensor::zeros([g.len() as i64], (Kind::Double, tch::Device::Cpu))
                    .set_requires_grad(true);
                (format!("p{i}"), p)
            })
            .collect();
        let loss = params
            .iter()
            .zip(grads)
            .map(|((_, p), g)| (p * Tensor::from_slice(g)).sum(Kind::Double))
            .fold(
                Tensor::zeros([], (Kind::Double, tch::Device::Cpu)),
                |a, b| a + b,
            );
        loss.backward();
        params
    }

    fn grad_values(params: &NamedParams) -> Vec<f64> {
        params
            .iter()
            .flat_map(|(_, p)| Vec::<f64>::try_from(p.grad()).unwrap())
            .collect()
    }

    #[test]
    fn clip_grad_norm_scales_gradients_to_the_max_norm_and_returns_the_old_norm() {
        // ‖(3, 4, 12)‖ = 13.
        let params = with_grads(&[&[3.0, 4.0], &[12.0]]);
        let norm = clip_grad_norm(&params, 1.0).unwrap();
        assert_eq!(norm.double_value(&[]), 13.0);
        let g = grad_values(&params);
        let new_norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        let coef = 1.0 / (13.0 + 1e-6);
        assert!((new_norm - 13.0 * coef).abs() < 1e-15, "{new_norm}");
        assert!((g[0] - 3.0 * coef).abs() < 1e-15);
    }

    #[test]
    fn clip_grad_norm_leaves_gradients_below_the_max_norm_unchanged() {
        let params = with_grads(&[&[0.3, -0.4]]);
        let norm = clip_grad_norm(&params, 1.0).unwrap();
        assert!((norm.double_value(&[]) - 0.5).abs() < 1e-15);
        assert_eq!(grad_values(&params), vec![0.3, -0.4]);
    }

    #[test]
    fn clip_grad_norm_reports_an_infinite_or_nan_norm_without_zeroing_gradients() {
        for bad in [f64::INFINITY, f64::NAN] {
            let params = with_grads(&[&[1.0, bad], &[2.0]]);
            let norm = clip_grad_norm(&params, 1.0).unwrap();
            assert!(!norm.double_value(&[]).is_finite());
            let g = grad_values(&params);
            assert_eq!(
                (g[0], g[2]),
                (1.0, 2.0),
                "gradients were rescaled for {bad}"
            );
            assert_eq!(g[1].is_nan(), bad.is_nan());
        }
    }

    #[test]
    fn clip_grad_norm_without_gradients_returns_zero() {
        let p = Tensor::zeros([2], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        let norm = clip_grad_norm(&vec![("p".into(), p)], 1.0).unwrap();
        assert_eq!(norm.double_value(&[]), 0.0);
    }

    #[test]
    fn clip_grad_value_clamps_each_element() {
        let params = with_grads(&[&[-3.0, 0.5, 2.0]]);
        clip_grad_value(&params, 1.0).unwrap();
        assert_eq!(grad_values(&params), vec![-1.0, 0.5, 1.0]);
    }

    #[test]
    fn negative_or_nan_clip_thresholds_are_rejected() {
        let params = with_grads(&[&[1.0]]);
        for (err, option) in [
            (clip_grad_norm(&params, -1.0).unwrap_err(), "max_norm"),
            (clip_grad_norm(&params, f64::NAN).unwrap_err(), "max_norm"),
            (clip_grad_value(&params, -1.0).unwrap_err(), "clip_value"),
        ] {
            assert!(
                matches!(&err, OptimError::InvalidOption { option: o, .. } if *o == option),
                "{err}"
            );
        }
        assert_eq!(grad_values(&params), vec![1.0]);
    }
}
