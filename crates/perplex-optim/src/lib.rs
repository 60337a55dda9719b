//! Optimisers, learning-rate schedules and gradient clipping for perplex.
//!
//! Optimisers hold their own state (step count, moments) as named tensors, so a checkpoint can
//! save and restore it exactly (tch's built-in optimisers cannot: tch-rs #360). Updates follow
//! `torch.optim`'s single-tensor formulas and are checked against its trajectories.
//!
//! ```
//! use perplex_optim::{AdamConfig, OptimizerConfig};
//! use tch::{Device, Kind, Tensor};
//!
//! let w = Tensor::ones([3], (Kind::Double, Device::Cpu)).set_requires_grad(true);
//! let mut opt = AdamConfig::default().build(vec![("w".into(), w.shallow_clone())])?;
//! (&w * &w).sum(Kind::Double).backward();
//! opt.step()?;
//! opt.zero_grad();
//! assert!(w.double_value(&[0]) < 1.0);
//! # Ok::<(), perplex_optim::OptimError>(())
//! ```
#![warn(missing_docs)]

pub mod adam;
pub mod clip;
pub mod error;
pub mod optimizer;
pub mod sgd;

pub use adam::{Adam, AdamConfig};
pub use clip::{clip_grad_norm, clip_grad_value};
pub use error::OptimError;
pub use optimizer::{NamedParams, Optimizer, OptimizerConfig};
pub use sgd::{Sgd, SgdConfig};
