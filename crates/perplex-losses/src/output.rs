//! What a loss returns.
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// How per-token losses are combined (PyTorch's `reduction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// Sum divided by the number of counted tokens (or by the sum of their class weights, or by
    /// the global normaliser when one is given). Zero counted tokens give 0.0 and zero gradient.
    #[default]
    Mean,
    /// Sum over counted tokens.
    Sum,
    /// One value per position, shaped like the targets; ignored positions are 0.
    None,
}

/// A loss's result, as fairseq's criterions return `(loss, sample_size, logging_output)`.
#[derive(Debug)]
pub struct LossOutput {
    /// The loss: a scalar for `mean`/`sum`, per-position for `none`. float32 when the model ran in
    /// bf16/f16 (the loss accumulates in float32), else the predictions' dtype.
    pub loss: Tensor,
    /// Number of counted (non-ignored) positions, or the sum of their class weights: the
    /// denominator of `mean`. A scalar tensor, so reading it is left to the caller (no host sync).
    pub count: Tensor,
    /// Named values for logging (detached scalars), e.g. each term of a `weighted_sum`.
    pub metrics: Vec<(String, Tensor)>,
}

impl LossOutput {
    /// A loss with no extra metrics.
    pub fn new(loss: Tensor, count: Tensor) -> Self {
        Self {
            loss,
            count,
            metrics: Vec::new(),
        }
    }
}
