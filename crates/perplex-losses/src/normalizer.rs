//! The denominators of `mean`, reported by each loss so that gradient accumulation (and
//! data-parallel training) divides once, by the whole step's denominator.
//!
//! A loss's `mean` divides a sum over positions by a denominator that is itself a sum over
//! positions: the number of counted tokens, or the sum of the targets' class weights
//! (`torch.nn.functional.cross_entropy` with `weight`). Splitting a batch into micro-batches and
//! averaging their means is therefore wrong whenever micro-batches count differently (fairseq's
//! `sample_size`). [`crate::Loss::normalizer`] gives that denominator for any targets; the
//! trainer sums it over the micro-batches (and ranks) of a step and hands the sum back through
//! [`crate::LossInput::with_normalizer`].
use tch::{Kind, Tensor};

use crate::LossError;

/// The `mean` denominator of a class-target loss: `[Σ_i [y_i ≠ ignore_index] · w_{y_i}]`, float64
/// `[1]` on the targets' device (`w` all ones when `weight` is `None`). For probability targets
/// (float, `[..., vocab]`) it is the number of rows, as `F.cross_entropy` divides by then.
///
/// Targets outside `[0, weight.len())` contribute 0 here: the loss itself reports them as
/// [`LossError::TargetOutOfRange`].
///
/// # Errors
/// libtorch errors.
pub fn counted_normalizer(
    targets: &Tensor,
    ignore_index: i64,
    weight: Option<&[f64]>,
) -> Result<Tensor, LossError> {
    let device = targets.device();
    if targets.is_floating_point() {
        let size = targets.size();
        let rows: i64 = size[..size.len().saturating_sub(1)].iter().product();
        return Ok(Tensor::f_from_slice(&[rows as f64])?.f_to_device(device)?);
    }
    let counted = targets.f_ne(ignore_index)?;
    let total = match weight {
        None => counted.f_sum(Kind::Double)?,
        Some(w) => {
            let n = w.len() as i64;
            let w = Tensor::f_from_slice(w)?.f_to_device(device)?;
            let valid =
                counted.f_logical_and(&targets.f_ge(0)?.f_logical_and(&targets.f_lt(n)?)?)?;
            let index = targets
                .f_masked_fill(&valid.f_logical_not()?, 0)?
                .f_reshape([-1])?;
            w.f_index_select(0, &index)?
                .f_mul(&valid.f_reshape([-1])?.f_to_kind(Kind::Double)?)?
                .f_sum(Kind::Double)?
        }
    };
    Ok(total.f_reshape([1])?)
}
