//! RMSprop.
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::optimizer::{
    add_scaled, add_scaled_, check, export_state, filled_like, import_state, optimizer_accessors,
};
use crate::{NamedParams, OptimError, Optimizer, OptimizerConfig};

/// RMSprop (`type = "rmsprop"`; Tieleman & Hinton 2012, Coursera "Neural Networks for Machine
/// Learning" lecture 6.5; centered variant from Graves 2013, "Generating Sequences With Recurrent
/// Neural Networks"), as `torch.optim.RMSprop` (single-tensor path, `foreach=False`):
/// `g ← g + λθ; v ← αv + (1-α)g²;` centered: `ḡ ← αḡ + (1-α)g`, `d ← sqrt(v - ḡ²) + ε`,
/// otherwise `d ← sqrt(v) + ε`; with momentum μ > 0: `b ← μb + g/d`, `θ ← θ - lr·b`; otherwise
/// `θ ← θ - lr·g/d`.
///
/// As PyTorch, ε is added outside the square root and there is no bias correction. Differs from
/// PyTorch only in that `maximize`, `capturable`, `differentiable` and `foreach` are not offered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RmspropConfig {
    /// Learning rate. Default 1e-2.
    pub lr: f64,
    /// Smoothing constant α of the squared-gradient average. Default 0.99.
    pub alpha: f64,
    /// ε added to the denominator (outside the square root). Default 1e-8.
    pub eps: f64,
    /// L2 penalty λ added to the gradient. Default 0.
    pub weight_decay: f64,
    /// Momentum μ applied to the normalised step. Default 0.
    pub momentum: f64,
    /// Centered RMSprop: normalise by an estimate of the gradient's variance. Default false.
    pub centered: bool,
}

impl Default for RmspropConfig {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
        }
    }
}

#[typetag::serde(name = "rmsprop")]
impl OptimizerConfig for RmspropConfig {
    fn build(&self, params: NamedParams) -> Result<Box<dyn Optimizer>, OptimError> {
        check("lr", self.lr, self.lr >= 0.0, "lr >= 0")?;
        check("alpha", self.alpha, self.alpha >= 0.0, "alpha >= 0")?;
        check("eps", self.eps, self.eps >= 0.0, "eps >= 0")?;
        check(
            "weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0,
            "weight_decay >= 0",
        )?;
        check(
            "momentum",
            self.momentum,
            self.momentum >= 0.0,
            "momentum >= 0",
        )?;
        Ok(Box::new(Rmsprop {
            square_avg: filled_like(&params, 0.0),
            momentum_buffer: if self.momentum > 0.0 {
                filled_like(&params, 0.0)
            } else {
                Vec::new()
            },
            grad_avg: if self.centered {
                filled_like(&params, 0.0)
            } else {
                Vec::new()
            },
            params,
            config: self.clone(),
            steps: 0,
        }))
    }

    fn lr(&self) -> f64 {
        self.lr
    }
}

/// The RMSprop optimiser built by [`RmspropConfig`].
///
/// State per parameter: `PARAM.square_avg`, plus `PARAM.momentum_buffer` when momentum > 0 and
/// `PARAM.grad_avg` when centered (PyTorch's names).
#[derive(Debug)]
pub struct Rmsprop {
    params: NamedParams,
    square_avg: Vec<Tensor>,
    momentum_buffer: Vec<Tensor>,
    grad_avg: Vec<Tensor>,
    config: RmspropConfig,
    steps: i64,
}

impl Optimizer for Rmsprop {
    fn step(&mut self) -> Result<(), OptimError> {
        let c = &self.config;
        tch::no_grad(|| -> Result<(), OptimError> {
            for (i, (_, p)) in self.params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                let g = if c.weight_decay != 0.0 {
                    add_scaled(&g, &p, c.weight_decay)?
                } else {
                    g
                };
                // libtorch's addcmul/addcdiv compute `x + (value·a)·b` and `x + (value·a) / b`;
                // tch has no `value` argument, so `value·a` is passed as the first factor.
                let v = &mut self.square_avg[i];
                let _ = v.f_mul_scalar_(c.alpha)?;
                let _ = v.f_addcmul_(&g.f_mul_scalar(1.0 - c.alpha)?, &g)?;
                let mut avg = if c.centered {
                    let ga = &mut self.grad_avg[i];
                    let _ = ga.f_lerp_(&g, 1.0 - c.alpha)?;
                    v.f_addcmul(&ga.f_neg()?, ga)?.f_sqrt()?
                } else {
                    v.f_sqrt()?
                };
                let _ = avg.f_add_scalar_(c.eps)?;
                if c.momentum > 0.0 {
                    let buf = &mut self.momentum_buffer[i];
                    let _ = buf.f_mul_scalar_(c.momentum)?;
                    let _ = buf.f_addcdiv_(&g, &avg)?;
                    add_scaled_(&mut p, buf, -c.lr)?;
                } else {
                    let _ = p.f_addcdiv_(&g.f_mul_scalar(-c.lr)?, &avg)?;
                }
            }
            Ok(())
        })?;
        self.steps += 1;
        Ok(())
    }

    optimizer_accessors!();

    fn state(&self) -> Vec<(String, Tensor)> {
        export_state(
            &self.params,
            &[
                ("square_avg", &self.square_avg),
                ("momentum_buffer", &self.momentum_buffer),
                ("grad_avg", &self.grad_avg),
            ],
        )
    }

    fn load_state(
        &mut self,
        state: &[(String, Tensor)],
        step_count: i64,
    ) -> Result<(), OptimError> {
        import_state(
            state,
            &self.params,
            &mut [
                ("square_avg", &mut self.square_avg),
                ("momentum_buffer", &mut self.momentum_buffer),
                ("grad_avg", &mut self.grad_avg),
            ],
        )?;
        self.steps = step_count;
        Ok(())
    }
}
