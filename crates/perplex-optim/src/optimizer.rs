//! The `Optimizer` and `OptimizerConfig` traits.
use std::fmt::Debug;

use tch::{Kind, Tensor};

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
    fn zero_grad(&mut self) {
        for (_, p) in self.params() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.f_zero_();
            }
        }
    }

    /// The learning rate the next step uses.
    fn lr(&self) -> f64;

    /// Sets the learning rate (schedules call this before each step).
    fn set_lr(&mut self, lr: f64);

    /// The number of steps taken.
    fn step_count(&self) -> i64;

    /// The state as named tensors (`PARAM.exp_avg`, ...), for checkpoints; the step count is
    /// saved separately through [`Optimizer::step_count`].
    ///
    /// The tensors are shallow clones: they share storage with the live state, so the next
    /// [`Optimizer::step`] changes them. Write them out (or `.copy()` them) before stepping again.
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

    /// The parameter groups used when a run config gives none (`param_groups` absent): none,
    /// except for AdamW, which decays only tensors of two or more dimensions.
    fn default_param_groups(&self) -> Vec<crate::ParamGroup> {
        Vec::new()
    }
}

/// The state of an optimiser as named tensors `PARAM.slot`, from per-parameter buffers
/// (`slots`: name and one tensor per parameter; an unused slot is an empty list).
pub(crate) fn export_state(
    params: &NamedParams,
    slots: &[(&str, &[Tensor])],
) -> Vec<(String, Tensor)> {
    slots
        .iter()
        .flat_map(|(slot, buffers)| {
            params
                .iter()
                .zip(buffers.iter())
                .map(move |((n, _), b)| (format!("{n}.{slot}"), b.shallow_clone()))
        })
        .collect()
}

/// Copies saved state written by [`export_state`] into the per-parameter buffers.
pub(crate) fn import_state(
    state: &[(String, Tensor)],
    params: &NamedParams,
    slots: &mut [(&str, &mut [Tensor])],
) -> Result<(), OptimError> {
    for (slot, buffers) in slots.iter_mut() {
        for ((n, _), b) in params.iter().zip(buffers.iter_mut()) {
            restore(state, &format!("{n}.{slot}"), b)?;
        }
    }
    Ok(())
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
    // A copy would cast silently (float64 state into float32 parameters' buffers).
    if src.kind() != dst.kind() {
        return Err(OptimError::BadState(format!(
            "{name} is {:?}, expected {:?} (the parameters' dtype)",
            src.kind(),
            dst.kind()
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

/// `a + alpha·b`, rounded as `torch.add(a, b, alpha=alpha)` (the `grad.add(param, alpha=λ)` and
/// `param.add_(update, alpha=-lr)` of `torch.optim`), which tch cannot call: its `add` has no
/// `alpha`. libtorch fuses `a + alpha·b` into one multiply-add, while `a + b * alpha` would round
/// the product first; `addcmul` with a 0-dim `alpha` rounds as `add` does (checked bit for bit on
/// float32 and float64, lengths 1 to 100 003, against libtorch 2.11's CPU kernels). Other kinds
/// (bf16, f16) take `a + b * alpha`, so that `alpha` is not rounded to the tensor's precision.
pub(crate) fn add_scaled(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor, OptimError> {
    Ok(match scalar_like(a, alpha)? {
        Some(alpha) => a.f_addcmul(b, &alpha)?,
        None => a.f_add(&b.f_mul_scalar(alpha)?)?,
    })
}

/// In-place [`add_scaled`]: `a ← a + alpha·b`.
pub(crate) fn add_scaled_(a: &mut Tensor, b: &Tensor, alpha: f64) -> Result<(), OptimError> {
    let _ = match scalar_like(a, alpha)? {
        Some(alpha) => a.f_addcmul_(b, &alpha)?,
        None => a.f_add_(&b.f_mul_scalar(alpha)?)?,
    };
    Ok(())
}

/// A 0-dim tensor holding `value`, of `t`'s kind and on its device (made there, not copied), for
/// float32 and float64 tensors.
fn scalar_like(t: &Tensor, value: f64) -> Result<Option<Tensor>, OptimError> {
    match t.kind() {
        Kind::Float | Kind::Double => Ok(Some(Tensor::f_scalar_tensor(
            value,
            (t.kind(), t.device()),
        )?)),
        _ => Ok(None),
    }
}

/// A tensor of `value`s shaped like each parameter (same kind and device).
pub(crate) fn filled_like(params: &NamedParams, value: f64) -> Vec<Tensor> {
    params
        .iter()
        .map(|(_, p)| p.full_like(value).detach())
        .collect()
}

/// Implements the accessors every optimiser shares (`lr`, `set_lr`, `step_count`, `params`) for
/// a struct with fields `config.lr`, `steps` and `params`.
macro_rules! optimizer_accessors {
    () => {
        fn lr(&self) -> f64 {
            self.config.lr
        }

        fn set_lr(&mut self, lr: f64) {
            self.config.lr = lr;
        }

        fn step_count(&self) -> i64 {
            self.steps
        }

        fn params(&self) -> &$crate::NamedParams {
            &self.params
        }
    };
}
pub(crate) use optimizer_accessors;

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use crate::{
        AdagradConfig, AdamConfig, AdamWConfig, NamedParams, OptimError, OptimizerConfig,
        RmspropConfig, SgdConfig,
    };

    /// Two float64 parameters and a loss with a gradient that changes from step to step.
    fn problem() -> (NamedParams, Tensor, Tensor) {
        let x = Tensor::from_slice(&[0.3, -1.2, 0.7, 2.0, -0.4, 0.9]).view([2, 3]);
        let w = Tensor::from_slice(&[0.5, -0.25, 1.5, -1.0, 0.75, 0.1]).view([3, 2]);
        let b = Tensor::from_slice(&[0.2, -0.3]);
        let params = vec![
            ("b".to_string(), b.set_requires_grad(true)),
            ("w".to_string(), w.set_requires_grad(true)),
        ];
        let c = Tensor::from_slice(&[1.0, 0.5, 0.8, 1.3]).view([2, 2]);
        (params, x, c)
    }

    fn run(opt: &mut dyn crate::Optimizer, x: &Tensor, c: &Tensor, steps: usize) {
        let b = opt.params()[0].1.shallow_clone();
        let w = opt.params()[1].1.shallow_clone();
        for _ in 0..steps {
            let loss = ((x.matmul(&w) + &b).tanh().square() * c).sum(Kind::Double);
            loss.backward();
            opt.step().unwrap();
            opt.zero_grad();
        }
    }

    /// Deep copies of parameters (fresh leaves) so that two optimisers never share storage.
    fn copy_params(params: &NamedParams) -> NamedParams {
        params
            .iter()
            .map(|(n, p)| (n.clone(), p.detach().copy().set_requires_grad(true)))
            .collect()
    }

    fn configs() -> Vec<Box<dyn OptimizerConfig>> {
        vec![
            Box::new(SgdConfig {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 0.01,
                ..SgdConfig::default()
            }),
            Box::new(AdamConfig {
                lr: 0.05,
                amsgrad: true,
                weight_decay: 0.1,
                ..AdamConfig::default()
            }),
            Box::new(AdamWConfig {
                lr: 0.05,
                ..AdamWConfig::default()
            }),
            Box::new(RmspropConfig {
                momentum: 0.5,
                centered: true,
                weight_decay: 0.01,
                ..RmspropConfig::default()
            }),
            Box::new(AdagradConfig {
                lr: 0.1,
                lr_decay: 0.05,
                initial_accumulator_value: 0.1,
                ..AdagradConfig::default()
            }),
        ]
    }

    #[test]
    fn add_scaled_is_a_plus_alpha_b_in_every_float_kind() {
        let a = Tensor::from_slice(&[1.0, -2.0, 0.5, 3.25, 7.0]);
        let b = Tensor::from_slice(&[0.1, 0.2, -0.3, 0.4, 1e-3]);
        let expected = &a + &b * -0.7;
        for kind in [Kind::Double, Kind::Float, Kind::BFloat16] {
            let (ak, bk) = (a.to_kind(kind), b.to_kind(kind));
            let mut out = super::add_scaled(&ak, &bk, -0.7).unwrap();
            assert_eq!(out.kind(), kind);
            let tol = if kind == Kind::BFloat16 { 5e-2 } else { 1e-6 };
            let diff = (out.to_kind(Kind::Double) - &expected).abs().max();
            assert!(diff.double_value(&[]) < tol, "{kind:?}");
            super::add_scaled_(&mut out, &bk, 0.7).unwrap();
            let diff = (out.to_kind(Kind::Double) - &a).abs().max();
            assert!(diff.double_value(&[]) < tol, "{kind:?} in place");
        }
    }

    #[test]
    fn restored_state_continues_bit_for_bit_like_an_uninterrupted_run() {
        for config in configs() {
            let (params, x, c) = problem();
            let mut straight = config.build(copy_params(&params)).unwrap();
            run(straight.as_mut(), &x, &c, 12);

            let mut first = config.build(copy_params(&params)).unwrap();
            run(first.as_mut(), &x, &c, 6);
            // Snapshot as a checkpoint would: copies, not views of the live state.
            let saved: Vec<(String, Tensor)> = first
                .state()
                .into_iter()
                .map(|(n, t)| (n, t.copy()))
                .collect();
            assert!(!saved.is_empty(), "{config:?} saves no state");
            let resumed_params = copy_params(first.params());
            drop(first);

            let mut resumed = config.build(resumed_params).unwrap();
            resumed.load_state(&saved, 6).unwrap();
            assert_eq!(resumed.step_count(), 6);
            run(resumed.as_mut(), &x, &c, 6);

            assert_eq!(resumed.step_count(), straight.step_count());
            for ((n, a), (_, b)) in resumed.params().iter().zip(straight.params()) {
                assert!(a.equal(b), "{config:?}: {n} differs after resuming");
            }
            for ((n, a), (_, b)) in resumed.state().iter().zip(&straight.state()) {
                assert!(a.equal(b), "{config:?}: state {n} differs after resuming");
            }
        }
    }

    #[test]
    fn load_state_rejects_a_missing_tensor_a_wrong_shape_or_a_wrong_dtype() {
        for config in configs() {
            let (params, _, _) = problem();
            let mut opt = config.build(params).unwrap();
            let mut state = opt.state();
            let (name, t) = state.pop().unwrap();
            let err = opt.load_state(&state, 3).unwrap_err();
            assert!(
                matches!(&err, OptimError::BadState(m) if m.contains(&name)),
                "{config:?}: {err}"
            );
            state.push((name.clone(), t.view([-1]).narrow(0, 0, 1)));
            let err = opt.load_state(&state, 3).unwrap_err();
            assert!(
                matches!(&err, OptimError::BadState(m) if m.contains(&name) && m.contains("shape")),
                "{config:?}: {err}"
            );
            // The parameters here are float64: float32 state is refused, not cast (nor is
            // a `precision = "f64"` run's float64 state loaded into float32 buffers).
            state.pop();
            state.push((name.clone(), t.to_kind(Kind::Float)));
            let err = opt.load_state(&state, 3).unwrap_err();
            assert!(
                matches!(&err, OptimError::BadState(m) if m.contains(&name) && m.contains("is Float, expected Double")),
                "{config:?}: {err}"
            );
        }
    }

    #[test]
    fn parameters_without_a_gradient_are_left_alone() {
        for config in configs() {
            let (params, _, _) = problem();
            let before = copy_params(&params);
            let mut opt = config.build(params).unwrap();
            opt.step().unwrap();
            assert_eq!(opt.step_count(), 1);
            for ((n, a), (_, b)) in opt.params().iter().zip(&before) {
                assert!(a.equal(b), "{config:?}: {n} moved without a gradient");
            }
        }
    }

    #[test]
    fn configs_deserialise_by_type_with_torch_defaults() {
        let adamw: Box<dyn OptimizerConfig> = serde_json::from_str(r#"{"type": "adamw"}"#).unwrap();
        assert_eq!(
            format!("{adamw:?}"),
            format!("{:?}", AdamWConfig::default())
        );
        assert_eq!(AdamWConfig::default().weight_decay, 1e-2);
        let rmsprop: Box<dyn OptimizerConfig> =
            serde_json::from_str(r#"{"type": "rmsprop", "centered": true}"#).unwrap();
        assert_eq!(rmsprop.lr(), 1e-2);
        let adagrad: Box<dyn OptimizerConfig> =
            serde_json::from_str(r#"{"type": "adagrad"}"#).unwrap();
        assert_eq!(
            format!("{adagrad:?}"),
            format!("{:?}", AdagradConfig::default())
        );
    }

    #[test]
    fn unknown_options_are_rejected_by_name() {
        let err =
            serde_json::from_str::<Box<dyn OptimizerConfig>>(r#"{"type": "adamw", "beta1": 0.9}"#)
                .unwrap_err();
        assert!(err.to_string().contains("beta1"), "{err}");
        let err =
            serde_json::from_str::<Box<dyn OptimizerConfig>>(r#"{"type": "lamb"}"#).unwrap_err();
        assert!(err.to_string().contains("lamb"), "{err}");
    }

    #[test]
    fn out_of_range_options_name_the_option_and_the_rule() {
        let cases: Vec<(Box<dyn OptimizerConfig>, &str)> = vec![
            (
                Box::new(SgdConfig {
                    lr: -0.1,
                    ..SgdConfig::default()
                }),
                "lr",
            ),
            (
                Box::new(SgdConfig {
                    nesterov: true,
                    ..SgdConfig::default()
                }),
                "nesterov",
            ),
            (
                Box::new(AdamConfig {
                    betas: (0.9, 1.0),
                    ..AdamConfig::default()
                }),
                "betas",
            ),
            (
                Box::new(AdamWConfig {
                    eps: f64::NAN,
                    ..AdamWConfig::default()
                }),
                "eps",
            ),
            (
                Box::new(RmspropConfig {
                    alpha: -0.5,
                    ..RmspropConfig::default()
                }),
                "alpha",
            ),
            (
                Box::new(RmspropConfig {
                    momentum: -0.5,
                    ..RmspropConfig::default()
                }),
                "momentum",
            ),
            (
                Box::new(AdagradConfig {
                    initial_accumulator_value: -1.0,
                    ..AdagradConfig::default()
                }),
                "initial_accumulator_value",
            ),
            (
                Box::new(AdagradConfig {
                    lr_decay: -1.0,
                    ..AdagradConfig::default()
                }),
                "lr_decay",
            ),
        ];
        for (config, option) in cases {
            let (params, _, _) = problem();
            let err = config.build(params).unwrap_err();
            assert!(
                matches!(&err, OptimError::InvalidOption { option: o, .. } if *o == option),
                "{config:?}: {err}"
            );
            assert!(err.to_string().contains("expected"), "{err}");
        }
    }
}
