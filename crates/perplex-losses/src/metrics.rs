//! Evaluation metrics that do not depend on the training objective.
use tch::{Kind, Tensor};

use crate::common::{class_targets, flat2};
use crate::{LossError, LossInput};

/// Summed negative log-likelihood (nats) of the targets and the number of counted tokens, as
/// float64 scalar tensors: `(Σ_i -log softmax(z_i)_{y_i}, Σ_i [y_i ≠ ignore_index])`.
///
/// Perplexity is `exp(sum / count)`. Used by evaluation whatever the training loss is.
///
/// # Errors
/// Shape mismatches and out-of-range targets, as the losses.
pub fn nll_sum(input: &LossInput, ignore_index: i64) -> Result<(Tensor, Tensor), LossError> {
    let logits = flat2(input.logits()?)?;
    let flat = class_targets(input, ignore_index)?;
    let sum = logits
        .f_cross_entropy_loss(
            &flat,
            None::<Tensor>,
            tch::Reduction::Sum,
            ignore_index,
            0.0,
        )?
        .f_to_kind(Kind::Double)?;
    let count = flat.f_ne(ignore_index)?.f_sum(Kind::Double)?;
    Ok((sum, count))
}
