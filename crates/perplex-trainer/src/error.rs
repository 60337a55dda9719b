//! The errors of `perplex-trainer`.
use std::path::PathBuf;

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// The run config is invalid: unknown key, bad value, unknown loss/model/optimiser type.
    #[error("config error in {source_name}: {message}")]
    Config {
        /// The file (or `--set`/environment) the error comes from.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// A device that is not available or not understood.
    #[error("device `{device}`: {message}")]
    Device {
        /// The configured device.
        device: String,
        /// Why it cannot be used.
        message: String,
    },
    /// Reading the corpus failed.
    #[error(transparent)]
    Data(#[from] perplex_data::DataError),
    /// Building or running the model failed.
    #[error(transparent)]
    Model(#[from] perplex_model::ModelError),
    /// The loss refused its input.
    #[error(transparent)]
    Loss(#[from] perplex_losses::LossError),
    /// The optimiser failed.
    #[error(transparent)]
    Optim(#[from] perplex_optim::OptimError),
    /// The loss became NaN or infinite.
    #[error("the training loss became non-finite ({value}) at step {step} (epoch {epoch}); the last good checkpoint is kept")]
    NonFinite {
        /// Global step (1-based).
        step: u64,
        /// Epoch (1-based).
        epoch: u64,
        /// The value read.
        value: f64,
    },
    /// A gradient held an `inf` or NaN (with `on_non_finite = "stop"`).
    #[error("the gradient of `{parameter}` became non-finite at step {step} (epoch {epoch}; global gradient norm {norm}); the step was not taken and the last good checkpoint is kept")]
    NonFiniteGradient {
        /// Global step (1-based).
        step: u64,
        /// Epoch (1-based).
        epoch: u64,
        /// The first parameter (by name) whose gradient is not finite.
        parameter: String,
        /// The global gradient norm read (inf or NaN).
        norm: f64,
    },
    /// A resumed run has nothing left to do; nothing was changed.
    #[error("{} has finished ({reason}): nothing was changed; to train on, {hint}", run.display())]
    Finished {
        /// The run directory.
        run: PathBuf,
        /// Optimiser steps taken.
        step: u64,
        /// Why it is finished, e.g. "all 10 epochs done at step 3900".
        reason: String,
        /// What to raise, e.g. "raise trainer.epochs: --resume RUN --set trainer.epochs=11".
        hint: String,
    },
    /// Writing or reading run files failed.
    #[error("cannot write or read {path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// libtorch refused an operation.
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
}

impl TrainerError {
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}
