//! Adagrad.
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::optimizer::{
    add_scaled, check, export_state, filled_like, import_state, optimizer_accessors,
};
use crate::{NamedParams, OptimError, Optimizer, OptimizerConfig};

/// Adagrad (`type = "adagrad"`; Duchi, Hazan & Singer 2011, "Adaptive Subgradient Methods for
/// Online Learning and Stochastic Optimization"), as `torch.optim.Adagrad` (single-tensor path,
/// `foreach=False`), at step t = 1, 2, ...:
/// `g ← g + λθ; lr_t ← lr / (1 + (t-1)·lr_decay); s ← s + g²; θ ← θ - lr_t · g / (sqrt(s) + ε)`,
/// with `s` starting at `initial_accumulator_value`.
///
/// Differs from PyTorch only in that the step count `t` is one for all parameters (PyTorch keeps
/// one per parameter, which differs with `lr_decay` for a parameter left without a gradient at
/// some step), sparse gradients are not supported, and `maximize`, `differentiable`, `foreach`
/// and `fused` are not offered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdagradConfig {
    /// Learning rate. Default 1e-2.
    pub lr: f64,
    /// Learning-rate decay: step t uses `lr / (1 + (t-1)·lr_decay)`. Default 0.
    pub lr_decay: f64,
    /// L2 penalty λ added to the gradient. Default 0.
    pub weight_decay: f64,
    /// Starting value of the sum of squared gradients. Default 0.
    pub initial_accumulator_value: f64,
    /// ε added to the denominator (outside the square root). Default 1e-10.
    pub eps: f64,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
        }
    }
}

#[typetag::serde(name = "adagrad")]
impl OptimizerConfig for AdagradConfig {
    fn build(&self, params: NamedParams) -> Result<Box<dyn Optimizer>, OptimError> {
        check("lr", self.lr, self.lr >= 0.0, "lr >= 0")?;
        check(
            "lr_decay",
            self.lr_decay,
            self.lr_decay >= 0.0,
            "lr_decay >= 0",
        )?;
        check(
            "weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0,
            "weight_decay >= 0",
        )?;
        check(
            "initial_accumulator_value",
            self.initial_accumulator_value,
            self.initial_accumulator_value >= 0.0,
            "initial_accumulator_value >= 0",
        )?;
        check("eps", self.eps, self.eps >= 0.0, "eps >= 0")?;
        Ok(Box::new(Adagrad {
            sum: filled_like(&params, self.initial_accumulator_value),
            params,
            config: self.clone(),
            steps: 0,
        }))
    }

    fn lr(&self) -> f64 {
        self.lr
    }
}

/// The Adagrad optimiser built by [`AdagradConfig`].
///
/// State per parameter: `PARAM.sum` (PyTorch's name).
#[derive(Debug)]
pub struct Adagrad {
    params: NamedParams,
    sum: Vec<Tensor>,
    config: AdagradConfig,
    steps: i64,
}

impl Optimizer for Adagrad {
    fn step(&mut self) -> Result<(), OptimError> {
        let c = &self.config;
        let t = (self.steps + 1) as f64;
        let clr = c.lr / (1.0 + (t - 1.0) * c.lr_decay);
        tch::no_grad(|| -> Result<(), OptimError> {
            for ((_, p), s) in self.params.iter().zip(self.sum.iter_mut()) {
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
                let _ = s.f_addcmul_(&g, &g)?;
                let std = s.f_sqrt()?.f_add_scalar(c.eps)?;
                // libtorch's addcdiv computes `p + (value·g) / std`; tch has no `value` argument.
                let _ = p.f_addcdiv_(&g.f_mul_scalar(-clr)?, &std)?;
            }
            Ok(())
        })?;
        self.steps += 1;
        Ok(())
    }

    optimizer_accessors!();

    fn state(&self) -> Vec<(String, Tensor)> {
        export_state(&self.params, &[("sum", &self.sum)])
    }

    fn load_state(
        &mut self,
        state: &[(String, Tensor)],
        step_count: i64,
    ) -> Result<(), OptimError> {
        import_state(state, &self.params, &mut [("sum", &mut self.sum)])?;
        self.steps = step_count;
        Ok(())
    }
}
