//! The errors of `perplex-optim`.

/// What can go wrong when building or stepping an optimiser or a schedule.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A hyperparameter is out of range.
    #[error("invalid optimiser option {option} = {value}: expected {expected}")]
    InvalidOption {
        /// The key under `[optim]`.
        option: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// A learning-rate schedule option is out of range.
    #[error("invalid {schedule} schedule option {option} = {value}: expected {expected}")]
    InvalidSchedule {
        /// The schedule's `type`.
        schedule: &'static str,
        /// The key under the schedule's section.
        option: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// Saved state does not fit this optimiser (or schedule).
    #[error("optimiser state does not fit: {0}")]
    BadState(String),
    /// libtorch refused an operation.
    #[error("libtorch error in the optimiser: {}", perplex_data::error::tch_reason(.0))]
    Torch(#[from] tch::TchError),
}
