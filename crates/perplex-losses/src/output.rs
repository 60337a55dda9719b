//! What a loss returns.
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::{LossError, LossInput};

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

impl Reduction {
    /// Reduces per-position losses `per` (shaped like the targets, 0 at ignored positions) the
    /// way every built-in loss does: `none` returns `per`, `sum` its sum, `mean` its sum divided
    /// by `input.normalizer` when given, else by `count` — and 0.0 with zero gradient when that
    /// denominator is 0 (an all-ignored batch). For plugin losses, so they share these rules.
    ///
    /// # Errors
    /// libtorch errors.
    pub fn apply(
        self,
        per: Tensor,
        count: &Tensor,
        input: &LossInput,
    ) -> Result<Tensor, LossError> {
        let shape = per.size();
        crate::common::reduce(per.f_reshape([-1])?, count, self, input, &shape)
    }
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
