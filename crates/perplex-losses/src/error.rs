//! The errors of `perplex-losses`.

/// What a loss can refuse.
#[derive(Debug, thiserror::Error)]
pub enum LossError {
    /// Two tensors' shapes do not fit together.
    #[error(
        "shape mismatch: `{a}` has shape {a_shape:?} but `{b}` has shape {b_shape:?}; {expected}"
    )]
    ShapeMismatch {
        /// First tensor's name.
        a: &'static str,
        /// First tensor's shape.
        a_shape: Vec<i64>,
        /// Second tensor's name.
        b: &'static str,
        /// Second tensor's shape.
        b_shape: Vec<i64>,
        /// What was expected.
        expected: String,
    },
    /// A target class index is outside `[0, vocab)` and is not `ignore_index`.
    #[error("target index {index} at flat position {position} is out of range for vocabulary size {vocab_size} (ignore_index is {ignore_index})")]
    TargetOutOfRange {
        /// The offending target.
        index: i64,
        /// Its position in the flattened targets.
        position: i64,
        /// The number of classes.
        vocab_size: i64,
        /// The configured ignore index.
        ignore_index: i64,
    },
    /// A tensor has the wrong dtype.
    #[error("`{tensor}` has dtype {actual}, expected {expected}")]
    BadKind {
        /// Which tensor.
        tensor: &'static str,
        /// Its dtype.
        actual: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The loss needs an input the caller did not give (e.g. teacher logits).
    #[error("loss `{loss}` needs {what}")]
    MissingInput {
        /// The loss's name.
        loss: &'static str,
        /// What is missing.
        what: &'static str,
    },
    /// An option is out of range.
    #[error("invalid option for loss `{loss}`: {option} = {value}: expected {expected}")]
    InvalidOption {
        /// The loss's name.
        loss: &'static str,
        /// The option.
        option: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// libtorch refused an operation.
    #[error("libtorch error in a loss: {}", perplex_data::error::tch_reason(.0))]
    Torch(#[from] tch::TchError),
}
