//! Adam and AdamW.
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::optimizer::{add_scaled, check, export_state, import_state, optimizer_accessors};
use crate::{NamedParams, OptimError, Optimizer, OptimizerConfig};

/// Adam (`type = "adam"`; Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization"), as
/// `torch.optim.Adam` (single-tensor path, `foreach=False`):
/// `g ← g + λθ; m ← β₁m + (1-β₁)g; v ← β₂v + (1-β₂)g²;`
/// `θ ← θ - (lr / (1-β₁ᵗ)) · m / (sqrt(v) / sqrt(1-β₂ᵗ) + ε)`; with `amsgrad`, `v` in the
/// denominator is the running maximum of `v`.
///
/// Differs from PyTorch only in that the step count `t` is one for all parameters (PyTorch keeps
/// one per parameter, which differs for a parameter left without a gradient at some step), and
/// `maximize`, `capturable`, `differentiable`, `foreach` and `fused` are not offered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamConfig {
    /// Learning rate. Default 1e-3.
    pub lr: f64,
    /// (β₁, β₂). Default (0.9, 0.999).
    pub betas: (f64, f64),
    /// ε added to the denominator. Default 1e-8.
    pub eps: f64,
    /// L2 penalty λ added to the gradient (coupled, as `torch.optim.Adam`). Default 0.
    pub weight_decay: f64,
    /// AMSGrad variant (Reddi et al. 2018). Default false.
    pub amsgrad: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
        }
    }
}

impl AdamConfig {
    pub(crate) fn build_adam(
        &self,
        params: NamedParams,
        decoupled: bool,
    ) -> Result<Adam, OptimError> {
        check("lr", self.lr, self.lr >= 0.0, "lr >= 0")?;
        let (b1, b2) = self.betas;
        check("betas", b1, (0.0..1.0).contains(&b1), "beta1 in [0, 1)")?;
        check("betas", b2, (0.0..1.0).contains(&b2), "beta2 in [0, 1)")?;
        check("eps", self.eps, self.eps >= 0.0, "eps >= 0")?;
        check(
            "weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0,
            "weight_decay >= 0",
        )?;
        let zeros = || {
            params
                .iter()
                .map(|(_, p)| p.zeros_like())
                .collect::<Vec<_>>()
        };
        Ok(Adam {
            exp_avg: zeros(),
            exp_avg_sq: zeros(),
            max_exp_avg_sq: if self.amsgrad { zeros() } else { Vec::new() },
            params,
            config: self.clone(),
            decoupled,
            steps: 0,
        })
    }
}

#[typetag::serde(name = "adam")]
impl OptimizerConfig for AdamConfig {
    fn build(&self, params: NamedParams) -> Result<Box<dyn Optimizer>, OptimError> {
        Ok(Box::new(self.build_adam(params, false)?))
    }

    fn lr(&self) -> f64 {
        self.lr
    }
}

/// AdamW (`type = "adamw"`; Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"),
/// as `torch.optim.AdamW` (single-tensor path, `foreach=False`): Adam without the L2 term in the
/// gradient, and instead `θ ← θ(1 - lr·λ)` before the Adam update:
/// `m ← β₁m + (1-β₁)g; v ← β₂v + (1-β₂)g²;`
/// `θ ← θ(1 - lr·λ) - (lr / (1-β₁ᵗ)) · m / (sqrt(v) / sqrt(1-β₂ᵗ) + ε)`.
///
/// Differs from PyTorch as [`AdamConfig`] does (one shared step count). In a run config without
/// `param_groups`, tensors of fewer than two dimensions (biases, norm gains) are not decayed
/// ([`OptimizerConfig::default_param_groups`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Learning rate. Default 1e-3.
    pub lr: f64,
    /// (β₁, β₂). Default (0.9, 0.999).
    pub betas: (f64, f64),
    /// ε added to the denominator. Default 1e-8.
    pub eps: f64,
    /// Decoupled weight decay λ (the parameter shrinks by `lr·λ` each step). Default 1e-2.
    pub weight_decay: f64,
    /// AMSGrad variant (Reddi et al. 2018). Default false.
    pub amsgrad: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
            amsgrad: false,
        }
    }
}

#[typetag::serde(name = "adamw")]
impl OptimizerConfig for AdamWConfig {
    fn build(&self, params: NamedParams) -> Result<Box<dyn Optimizer>, OptimError> {
        let adam = AdamConfig {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
        };
        Ok(Box::new(adam.build_adam(params, true)?))
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    /// No decay on biases and norm gains (tensors of fewer than two dimensions), as nanoGPT.
    fn default_param_groups(&self) -> Vec<crate::ParamGroup> {
        vec![crate::ParamGroup::no_decay_below_2d()]
    }
}

/// The Adam optimiser built by [`AdamConfig`] (or AdamW, with decoupled weight decay, built by
/// [`AdamWConfig`]).
#[derive(Debug)]
pub struct Adam {
    params: NamedParams,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    max_exp_avg_sq: Vec<Tensor>,
    config: AdamConfig,
    decoupled: bool,
    steps: i64,
}

impl Optimizer for Adam {
    fn step(&mut self) -> Result<(), OptimError> {
        let c = &self.config;
        // `powf` of the float step, as Python's `beta ** step` (`powi` rounds differently).
        let t = (self.steps + 1) as f64;
        let (b1, b2) = c.betas;
        let bias1 = 1.0 - b1.powf(t);
        let bias2_sqrt = (1.0 - b2.powf(t)).powf(0.5);
        let step_size = c.lr / bias1;
        tch::no_grad(|| -> Result<(), OptimError> {
            for (i, (_, p)) in self.params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                let g = if c.weight_decay != 0.0 && !self.decoupled {
                    add_scaled(&g, &p, c.weight_decay)?
                } else {
                    g
                };
                if c.weight_decay != 0.0 && self.decoupled {
                    let _ = p.f_mul_scalar_(1.0 - c.lr * c.weight_decay)?;
                }
                let m = &mut self.exp_avg[i];
                let _ = m.f_lerp_(&g, 1.0 - b1)?;
                let v = &mut self.exp_avg_sq[i];
                let _ = v.f_mul_scalar_(b2)?;
                let _ = v.f_addcmul_(&g, &g.f_mul_scalar(1.0 - b2)?)?;
                let v = if c.amsgrad {
                    let vmax = &mut self.max_exp_avg_sq[i];
                    vmax.f_copy_(&vmax.f_maximum(v)?)?;
                    vmax.shallow_clone()
                } else {
                    v.shallow_clone()
                };
                // One allocation, then in place: the same operations in the same order as torch.
                let mut denom = v.f_sqrt()?;
                let _ = denom.f_div_scalar_(bias2_sqrt)?;
                let _ = denom.f_add_scalar_(c.eps)?;
                // libtorch's addcdiv computes `p + (value·m) / denom`; tch has no `value`
                // argument, so the scaled numerator is passed instead (the same rounding).
                let _ = p.f_addcdiv_(&m.f_mul_scalar(-step_size)?, &denom)?;
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
                ("exp_avg", &self.exp_avg),
                ("exp_avg_sq", &self.exp_avg_sq),
                ("max_exp_avg_sq", &self.max_exp_avg_sq),
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
                ("exp_avg", &mut self.exp_avg),
                ("exp_avg_sq", &mut self.exp_avg_sq),
                ("max_exp_avg_sq", &mut self.max_exp_avg_sq),
            ],
        )?;
        self.steps = step_count;
        Ok(())
    }
}
