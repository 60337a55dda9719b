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
    /// An option given to a command (not read from a run config) is out of its range:
    /// generation's temperature, top-p or banned ids.
    #[error("invalid {option}: {message}")]
    InvalidOption {
        /// The option.
        option: String,
        /// What is wrong and what was expected.
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
    #[error("the training loss became non-finite ({value}) at step {step} (epoch {epoch}){ranks}; no update was made from it, and the run's last checkpoint (if one was written) is kept")]
    NonFinite {
        /// Global step (1-based).
        step: u64,
        /// Epoch (1-based).
        epoch: u64,
        /// The value read.
        value: f64,
        /// In a data-parallel run, the processes whose own loss was non-finite, as
        /// `" on rank 1 of 2"`; empty in one process.
        ranks: String,
    },
    /// A gradient held an `inf` or NaN (with `on_non_finite = "stop"`).
    #[error("the gradient of `{parameter}` became non-finite at step {step} (epoch {epoch}; global gradient norm {norm}); the step was not taken, and the run's last checkpoint (if one was written) is kept")]
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
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// libtorch refused an operation.
    #[error("libtorch error: {}", perplex_data::error::tch_reason(.0))]
    Torch(#[from] tch::TchError),
    /// A data-parallel strategy's communication failed (a process lost, a timeout); the
    /// strategy's own error says which rank and operation.
    #[error(transparent)]
    Distributed(Box<dyn std::error::Error + Send + Sync>),
}

impl TrainerError {
    /// An [`TrainerError::Io`] for `path`, its message the reason in words (`no space left on
    /// device`, `permission denied`), never Rust's debug form of the error.
    pub(crate) fn io(path: &std::path::Path, e: impl IoReason) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            message: e.reason(),
        }
    }
}

/// An error that caused a file operation to fail, told in words.
pub trait IoReason {
    /// What went wrong, e.g. `no space left on device`.
    fn reason(&self) -> String;
}

impl IoReason for std::io::Error {
    fn reason(&self) -> String {
        perplex_data::error::io_reason(self)
    }
}

impl IoReason for tch::TchError {
    fn reason(&self) -> String {
        perplex_data::error::tch_reason(self)
    }
}

impl IoReason for serde_json::Error {
    fn reason(&self) -> String {
        match self.io_error_kind() {
            Some(_) => match std::error::Error::source(self)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
            {
                Some(io) => perplex_data::error::io_reason(io),
                None => self.to_string(),
            },
            None => self.to_string(),
        }
    }
}

impl IoReason for String {
    fn reason(&self) -> String {
        self.clone()
    }
}

impl IoReason for &str {
    fn reason(&self) -> String {
        (*self).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_told_in_words_with_their_path() {
        let path = std::path::Path::new("checkpoints/step-00000400/model.safetensors");
        let e = TrainerError::io(path, std::io::Error::from_raw_os_error(28)).to_string();
        assert!(
            e.contains("checkpoints/step-00000400/model.safetensors")
                && e.contains("no space left on device")
                && !e.contains("Os {")
                && !e.contains("os error"),
            "{e}"
        );
        let tch = tch::TchError::Io(std::io::Error::from_raw_os_error(30));
        let e = TrainerError::io(path, tch).to_string();
        assert!(e.contains("read-only file system"), "{e}");
    }

    #[test]
    fn torch_errors_lose_the_cpp_backtrace() {
        let e = TrainerError::Torch(tch::TchError::Torch(
            "shape mismatch\nException raised from f at x.cpp:1\nframe #0: c10::Error".into(),
        ))
        .to_string();
        assert_eq!(e, "libtorch error: shape mismatch");
    }
}
