//! Optimisers, learning-rate schedules and gradient clipping for perplex.
//!
//! Optimisers hold their own state (step count, moments) as named tensors, so a checkpoint can
//! save and restore it exactly (tch's built-in optimisers cannot: tch-rs #360). Updates follow
//! `torch.optim`'s single-tensor formulas and are checked against its trajectories; schedules
//! follow `torch.optim.lr_scheduler` and are checked against its learning rates.
//!
//! | `type` | optimiser | | `type` | schedule |
//! |---|---|---|---|---|
//! | `sgd` | [`SgdConfig`] | | `constant`, `step`, `exponential`, `cosine` | [`ConstantConfig`], [`StepConfig`], [`ExponentialConfig`], [`CosineConfig`] |
//! | `adam`, `adamw` | [`AdamConfig`], [`AdamWConfig`] | | `warmup_cosine`, `warmup_linear`, `inverse_sqrt` | [`WarmupCosineConfig`], [`WarmupLinearConfig`], [`InverseSqrtConfig`] |
//! | `rmsprop`, `adagrad` | [`RmspropConfig`], [`AdagradConfig`] | | `reduce_on_plateau` | [`ReduceOnPlateauConfig`] |
//!
//! ```
//! use perplex_optim::{AdamConfig, OptimizerConfig, ScheduleConfig, WarmupCosineConfig, WarmupRule};
//! use tch::{Device, Kind, Tensor};
//!
//! let w = Tensor::ones([3], (Kind::Double, Device::Cpu)).set_requires_grad(true);
//! let config = AdamConfig::default();
//! let mut opt = config.build(vec![("w".into(), w.shallow_clone())])?;
//! let warmup_cosine = WarmupCosineConfig {
//!     warmup_steps: 2,
//!     total_steps: 10,
//!     min_lr: 0.0,
//!     warmup_rule: WarmupRule::Nanogpt,
//! };
//! let schedule = warmup_cosine.build(config.lr)?;
//! for step in 0..3 {
//!     opt.set_lr(schedule.lr(step));
//!     (&w * &w).sum(Kind::Double).backward();
//!     opt.step()?;
//!     opt.zero_grad();
//! }
//! assert!(w.double_value(&[0]) < 1.0);
//! # Ok::<(), perplex_optim::OptimError>(())
//! ```
#![warn(missing_docs)]

pub mod adagrad;
pub mod adam;
pub mod clip;
pub mod error;
pub mod groups;
pub mod optimizer;
pub mod rmsprop;
pub mod schedule;
pub mod sgd;

pub use adagrad::{Adagrad, AdagradConfig};
pub use adam::{Adam, AdamConfig, AdamWConfig};
pub use clip::{clip_grad_norm, clip_grad_value, first_non_finite_grad, grad_norm};
pub use error::OptimError;
pub use groups::{build_grouped, GroupedOptimizer, ParamGroup};
pub use optimizer::{NamedParams, Optimizer, OptimizerConfig};
pub use rmsprop::{Rmsprop, RmspropConfig};
pub use schedule::{
    ConstantConfig, CosineConfig, ExponentialConfig, InverseSqrtConfig, LrSchedule, PlateauMode,
    ReduceOnPlateau, ReduceOnPlateauConfig, ScheduleConfig, Stateless, StepConfig, StepFunction,
    ThresholdMode, WarmupCosineConfig, WarmupLinearConfig, WarmupRule,
};
pub use sgd::{Sgd, SgdConfig};
