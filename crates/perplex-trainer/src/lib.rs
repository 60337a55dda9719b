//! The perplex training loop: a [`Trainer`] composed from a data source, a model, a loss and an
//! optimiser, configured by a [`RunConfig`] (TOML + environment + `--set` overrides).
//!
//! ```no_run
//! use perplex_trainer::{RunConfig, Trainer};
//!
//! let config = RunConfig::load(
//!     Some("examples/configs/gru-tinyshakespeare.toml".as_ref()),
//!     &["trainer.epochs=1".to_string()],
//! )?;
//! let summary = Trainer::from_config(config)?.fit()?;
//! if let Some(valid) = summary.epochs[0].valid {
//!     println!("validation perplexity {:.1}", valid.perplexity);
//! }
//! # Ok::<(), perplex_trainer::TrainerError>(())
//! ```
//!
//! Each epoch logs (through `tracing`) the training loss, the validation loss and perplexity
//! (`exp` of the mean NLL per token), tokens per second and the learning rate. The run directory
//! receives `config.toml` (resolved), `vocab.json`, `model.safetensors`, `metrics.jsonl`,
//! `metrics.csv`, `summary.json` and `checkpoints/` (see [`checkpoint`]); [`Trainer::resume`]
//! continues a run exactly.
//!
//! The engine's seams, each one trait: the data loader ([`perplex_data::Batches`], given by a
//! [`perplex_data::DataSource`]), the model ([`perplex_model::ModelConfig`]), the loss
//! ([`perplex_losses::Loss`]), the optimiser ([`perplex_optim::OptimizerConfig`]), callbacks
//! ([`Callback`]) and the process strategy ([`strategy::Strategy`]: how gradients, losses and
//! token counts are reduced, which shard each process reads, which process writes). A strategy
//! plugs in without touching the loop:
//!
//! ```no_run
//! use perplex_trainer::strategy::{SingleProcess, Strategy};
//! use perplex_trainer::{RunConfig, Trainer};
//!
//! let config = RunConfig::load(None, &["trainer.max_steps=10".to_string()])?;
//! let strategy: Box<dyn Strategy> = Box::new(SingleProcess); // or a data-parallel one
//! let mut trainer = Trainer::from_config(config)?.with_strategy(strategy);
//! let summary = trainer.fit()?; // one flat loop of steps: step, callbacks, eval, checkpoint
//! println!("{} steps, best validation loss {:?}", summary.steps, summary.best_valid_loss);
//! # Ok::<(), perplex_trainer::TrainerError>(())
//! ```
#![warn(missing_docs)]

pub mod callbacks;
pub mod checkpoint;
pub mod config;
pub(crate) mod config_tree;
pub mod device;
pub mod error;
pub mod fault;
pub mod host_memory;
pub mod inference;
pub mod interrupt;
pub mod lr_find;
pub mod mfu;
pub mod precision;
pub mod run_dir;
pub mod sampling;
pub mod strategy;
pub mod teacher;
pub mod trainer;

pub use callbacks::{
    Action, Callback, CheckpointEvent, EarlyStopping, EvalEvent, MetricsLogger, ProgressBar,
    StepEvent,
};
pub use config::{OnNonFinite, Precision, RunConfig, TrainerConfig};
pub use device::{parse_device, parse_device_for_local_rank};
pub use error::TrainerError;
pub use host_memory::HostAllocator;
pub use inference::{Generation, LoadedModel, TokenLoss};
pub use lr_find::{lr_find, LrFindOptions, LrFindPoint, LrFindResult, LrFindStop};
pub use precision::{autocast_bf16, cpu_has_native_bf16};
pub use sampling::{Sampler, SamplingOptions};
pub use trainer::{
    evaluate, load_weights, named_trainable, EpochStats, EvalStats, FitSummary, Trainer,
};
