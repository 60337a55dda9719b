//! Gradient clipping.
use tch::{Kind, Tensor};

use crate::optimizer::check;
use crate::{NamedParams, OptimError};

/// The global L2 norm of all gradients, `‖(‖g_1‖, …, ‖g_n‖)‖`, as a float64 scalar tensor,
/// exact for every finite gradient: it never overflows to `inf`.
///
/// `torch.nn.utils.get_total_norm` accumulates in the gradients' own dtype, so 64 float32
/// elements of 1e20 give `inf` although the true norm, 8e20, is a float32 number. Here the
/// per-tensor norms (float32 at least) are combined in float64; when that is not finite, the norm
/// is recomputed with scaling (each tensor's norm taken of `g / max|g|` and multiplied back, as
/// LAPACK's `dnrm2` does), in float64. The result is finite exactly when every gradient element is
/// finite (an `inf` gives `inf`, a NaN gives NaN). Reads one number on the host.
///
/// # Errors
/// libtorch errors.
pub fn grad_norm(params: &[(String, Tensor)]) -> Result<Tensor, OptimError> {
    let grads: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| p.grad())
        .filter(Tensor::defined)
        .collect();
    if grads.is_empty() {
        return Ok(Tensor::zeros([], (Kind::Double, tch::Device::Cpu)));
    }
    let norms = grads
        .iter()
        .map(|g| {
            let kind = match g.kind() {
                Kind::Half | Kind::BFloat16 => Kind::Float,
                k => k,
            };
            Ok(g.f_norm_scalaropt_dtype(2, kind)?.f_to_kind(Kind::Double)?)
        })
        .collect::<Result<Vec<_>, OptimError>>()?;
    let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
    if total.f_double_value(&[])?.is_finite() {
        return Ok(total);
    }
    // An element overflowed the fast path, or is itself inf/NaN: the exact, slower path.
    let norms = grads
        .iter()
        .map(scaled_norm)
        .collect::<Result<Vec<_>, _>>()?;
    scaled_norm(&Tensor::f_stack(&norms, 0)?)
}

/// `max|t| · ‖t / max|t|‖` in float64 (0 for an all-zero or empty tensor; `inf` when `t` holds an
/// `inf` and no NaN; NaN when it holds a NaN).
fn scaled_norm(t: &Tensor) -> Result<Tensor, OptimError> {
    let t = t.f_to_kind(Kind::Double)?;
    if t.numel() == 0 {
        return Ok(Tensor::zeros([], (Kind::Double, t.device())));
    }
    let max = t.f_abs()?.f_amax([] as [i64; 0], false)?;
    // A zero max would give 0/0: divide by 1 then. An infinite max gives inf/inf = NaN below,
    // so the max itself is returned then (unless a NaN is present: amax propagates NaN).
    let scale = max.f_where_self(&max.f_gt(0.0)?, &max.f_ones_like()?)?;
    let norm = t.f_div(&scale)?.f_norm()?.f_mul(&scale)?;
    Ok(max.f_where_self(&max.f_isinf()?, &norm)?)
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`: `g ← g · min(1, max_norm / (‖g‖ + 1e-6))`.
///
/// The norm is [`grad_norm`]'s (float64, no overflow: large but finite gradients are clipped
/// exactly where PyTorch's float32 norm overflows to `inf`). Returns the total norm before
/// clipping (a float64 scalar tensor, not read on the host). A non-finite norm (an `inf` or NaN
/// gradient element) leaves the gradients unscaled, so the caller can report it and skip the
/// step rather than silently zeroing it; PyTorch's coefficient becomes 0 (inf) or NaN there.
///
/// # Errors
/// [`OptimError::InvalidOption`] when `max_norm` is negative or NaN; libtorch errors.
pub fn clip_grad_norm(params: &NamedParams, max_norm: f64) -> Result<Tensor, OptimError> {
    check("max_norm", max_norm, max_norm >= 0.0, "max_norm >= 0")?;
    let total = grad_norm(params)?;
    let coef = total
        .f_add_scalar(1e-6)?
        .f_reciprocal()?
        .f_mul_scalar(max_norm)?
        .f_clamp_max(1.0)?;
    // Guard on the norm, not the coefficient: an infinite norm gives a finite coefficient of 0.
    let finite = total.f_isfinite()?;
    let coef = coef.f_where_self(&finite, &coef.f_ones_like()?)?;
    tch::no_grad(|| -> Result<(), OptimError> {
        for (_, p) in params {
            let mut g = p.grad();
            if g.defined() {
                let c = coef.f_to_kind(g.kind())?.f_to_device(g.device())?;
                let _ = g.f_mul_(&c)?;
            }
        }
        Ok(())
    })?;
    Ok(total)
}

/// The name of the first parameter (in `params`' order) whose gradient holds an `inf` or NaN, if
/// any. Reads one flag per parameter on the host: meant for the rare step whose norm is not
/// finite.
///
/// # Errors
/// libtorch errors.
pub fn first_non_finite_grad(params: &[(String, Tensor)]) -> Result<Option<String>, OptimError> {
    for (name, p) in params {
        let g = p.grad();
        if g.defined() && g.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
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

    use super::{clip_grad_norm, clip_grad_value, first_non_finite_grad, grad_norm};
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

    /// One parameter of `kind` whose gradient is `n` copies of `value`.
    fn filled(kind: Kind, n: i64, value: f64) -> NamedParams {
        let p = Tensor::zeros([n], (kind, tch::Device::Cpu)).set_requires_grad(true);
        let g = Tensor::full([n], value, (kind, tch::Device::Cpu));
        (&p * g).sum(kind).backward();
        vec![("w".into(), p)]
    }

    #[test]
    fn huge_but_finite_gradients_are_clipped_exactly_in_f32_bf16_and_f64() {
        // 64 elements of v: the true norm is 8 v, and clipping to 1 leaves 1/8 = 0.125 each.
        // In float32 (and bf16, same exponent range) PyTorch's norm of 1e20s overflows to inf.
        for (kind, value, tol) in [
            (Kind::Float, 1e20, 1e-6),
            (Kind::Float, 3e38, 1e-6),
            (Kind::BFloat16, 1e20, 1e-2),
            (Kind::Double, 1e200, 1e-12),
            (Kind::Double, 1e300, 1e-12),
        ] {
            let params = filled(kind, 64, value);
            let stored = params[0].1.grad().double_value(&[0]);
            let norm = clip_grad_norm(&params, 1.0).unwrap();
            assert_eq!(norm.kind(), Kind::Double);
            let norm = norm.double_value(&[]);
            assert!(
                (norm / (8.0 * stored) - 1.0).abs() < 1e-12,
                "{kind:?} {value}: norm {norm}, expected {}",
                8.0 * stored
            );
            for g in grad_values(&params) {
                assert!(
                    (g - 0.125).abs() < tol,
                    "{kind:?} {value}: clipped gradient {g}, expected 0.125"
                );
            }
        }
    }

    #[test]
    fn grad_norm_is_exact_across_many_tensors_of_huge_values() {
        // 100 tensors whose norms are each 1e300: the total 1e301 overflows a plain float64 sum
        // of squares.
        let params: NamedParams = (0..100)
            .map(|i| {
                let mut p = filled(Kind::Double, 1, 1e300);
                (format!("p{i}"), p.remove(0).1)
            })
            .collect();
        let norm = grad_norm(&params).unwrap().double_value(&[]);
        assert!((norm / 1e301 - 1.0).abs() < 1e-12, "{norm}");
    }

    #[test]
    fn grad_norm_reports_inf_and_nan_and_names_the_first_bad_parameter() {
        let params = with_grads(&[&[1.0, 2.0], &[3.0, f64::INFINITY], &[f64::NAN]]);
        assert_eq!(
            grad_norm(&params[..2]).unwrap().double_value(&[]),
            f64::INFINITY
        );
        assert!(grad_norm(&params).unwrap().double_value(&[]).is_nan());
        assert_eq!(
            first_non_finite_grad(&params).unwrap().as_deref(),
            Some("p1")
        );
        assert_eq!(first_non_finite_grad(&params[..1]).unwrap(), None);
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
