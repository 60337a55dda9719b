//! The errors of `perplex-model`.

/// What can go wrong when building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A hyperparameter is out of range.
    #[error("invalid model config: {key} = {value}: expected {expected}")]
    InvalidConfig {
        /// The key under `[model]`.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// An input tensor has the wrong shape or dtype.
    #[error("model input `{tensor}` has shape {actual:?} ({kind}), expected {expected}")]
    BadInput {
        /// Which tensor.
        tensor: &'static str,
        /// Its shape.
        actual: Vec<i64>,
        /// Its dtype.
        kind: String,
        /// What was expected.
        expected: String,
    },
    /// A transformers directory (`init_from`, `--checkpoint`) cannot be used: its
    /// `config.json`, index or weights, named with the key or tensor at fault.
    #[error("{}: {message}", path.display())]
    Pretrained {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What is wrong, naming the key or tensor.
        message: String,
    },
    /// libtorch refused an operation.
    #[error("libtorch error in the model: {}", perplex_data::error::tch_reason(.0))]
    Torch(#[from] tch::TchError),
}
