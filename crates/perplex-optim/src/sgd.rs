//! Stochastic gradient descent with momentum.
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::optimizer::{
    add_scaled, add_scaled_, check, export_state, import_state, optimizer_accessors,
};
use crate::{NamedParams, OptimError, Optimizer, OptimizerConfig};

/// SGD (`type = "sgd"`), as `torch.optim.SGD` (single-tensor path, `foreach=False`), with
/// momentum after Sutskever et al. 2013, "On the importance of initialization and momentum in
/// deep learning":
/// `g ← g + λθ; b ← μb + (1 - τ)g` (b = g at the first step); `g ← g + μb` (Nesterov) or `g ← b`;
/// `θ ← θ - lr·g`.
///
/// Differs from PyTorch only in that "the first step" is the optimiser's first step for every
/// parameter (PyTorch starts each buffer at that parameter's first gradient, which differs for a
/// parameter left without a gradient at step 1), and `maximize`, `foreach` and `fused` are not
/// offered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SgdConfig {
    /// Learning rate. Default 0.1.
    pub lr: f64,
    /// Momentum μ. Default 0.
    pub momentum: f64,
    /// Dampening τ. Default 0.
    pub dampening: f64,
    /// Nesterov momentum (needs momentum > 0 and dampening 0). Default false.
    pub nesterov: bool,
    /// L2 penalty λ added to the gradient. Default 0.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            lr: 0.1,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

#[typetag::serde(name = "sgd")]
impl OptimizerConfig for SgdConfig {
    fn build(&self, params: NamedParams) -> Result<Box<dyn Optimizer>, OptimError> {
        check("lr", self.lr, self.lr >= 0.0, "lr >= 0")?;
        check(
            "momentum",
            self.momentum,
            self.momentum >= 0.0,
            "momentum >= 0",
        )?;
        check(
            "weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0,
            "weight_decay >= 0",
        )?;
        check(
            "nesterov",
            self.momentum,
            !self.nesterov || (self.momentum > 0.0 && self.dampening == 0.0),
            "Nesterov momentum needs momentum > 0 and dampening = 0",
        )?;
        Ok(Box::new(Sgd {
            buffers: params.iter().map(|(_, p)| p.zeros_like()).collect(),
            params,
            config: self.clone(),
            steps: 0,
        }))
    }

    fn lr(&self) -> f64 {
        self.lr
    }
}

/// The SGD optimiser built by [`SgdConfig`].
#[derive(Debug)]
pub struct Sgd {
    params: NamedParams,
    buffers: Vec<Tensor>,
    config: SgdConfig,
    steps: i64,
}

impl Optimizer for Sgd {
    fn step(&mut self) -> Result<(), OptimError> {
        let c = &self.config;
        let first = self.steps == 0;
        tch::no_grad(|| -> Result<(), OptimError> {
            for ((_, p), buf) in self.params.iter().zip(self.buffers.iter_mut()) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut g = if c.weight_decay != 0.0 {
                    add_scaled(&g, p, c.weight_decay)?
                } else {
                    g
                };
                if c.momentum != 0.0 {
                    if first {
                        buf.f_copy_(&g)?;
                    } else {
                        let _ = buf.f_mul_scalar_(c.momentum)?;
                        add_scaled_(buf, &g, 1.0 - c.dampening)?;
                    }
                    g = if c.nesterov {
                        add_scaled(&g, buf, c.momentum)?
                    } else {
                        buf.shallow_clone()
                    };
                }
                add_scaled_(&mut p.shallow_clone(), &g, -c.lr)?;
            }
            Ok(())
        })?;
        self.steps += 1;
        Ok(())
    }

    optimizer_accessors!();

    fn state(&self) -> Vec<(String, Tensor)> {
        export_state(&self.params, &[("momentum_buffer", &self.buffers)])
    }

    fn load_state(
        &mut self,
        state: &[(String, Tensor)],
        step_count: i64,
    ) -> Result<(), OptimError> {
        import_state(
            state,
            &self.params,
            &mut [("momentum_buffer", &mut self.buffers)],
        )?;
        self.steps = step_count;
        Ok(())
    }
}
