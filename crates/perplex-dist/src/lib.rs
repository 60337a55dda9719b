//! Data-parallel training for perplex on PyTorch's own c10d engine: the job's `TCPStore`
//! (behind a `PrefixStore`) and a `ProcessGroupGloo`, reached through a small C++ bridge
//! (`src/bridge.cpp`) compiled against libtorch's headers, as torch-sys compiles its own.
//!
//! Launch with torchrun (or srun, with `MASTER_ADDR` exported); `data.batch_size` is the global
//! batch and each rank reads its rows of it:
//!
//! ```no_run
//! use perplex_dist::DataParallel;
//! use perplex_trainer::{RunConfig, Trainer};
//!
//! // torchrun --nproc-per-node 2 --no-python target/release/perplex train --config run.toml
//! let strategy = DataParallel::from_env()?; // RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT...
//! let config = RunConfig::load(Some("run.toml".as_ref()), &[])?;
//! let summary = Trainer::from_config_with_strategy(config, Box::new(strategy))?.fit()?;
//! println!("{} steps", summary.steps);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A build without Gloo's headers (Debian: `libgloo-dev`) still compiles; joining a group then
//! fails with [`DistError::NotBuilt`], which says what to install.
#![warn(missing_docs)]

#[cfg(perplex_c10d)]
mod bridge;
#[cfg(not(perplex_c10d))]
mod bridge_missing;
pub mod data_parallel;
pub mod error;
pub mod launch;
pub mod process_group;

pub use data_parallel::{DataParallel, ReductionStats};
pub use error::DistError;
pub use launch::Launch;
pub use process_group::{c10d_available, ProcessGroup};
