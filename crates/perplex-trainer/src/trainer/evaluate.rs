//! Evaluation: summed NLL and counted tokens over a loader, without gradients.
use tch::{Device, Kind, Tensor};

use perplex_data::{Batches, Cursor};
use perplex_losses::{metrics::nll_sum, LossInput};
use perplex_model::LanguageModel;

use super::EvalStats;
use crate::TrainerError;

/// Mean NLL and perplexity of `model` on `batches` (no gradients; state carried across windows
/// when the loader's batches continue each other),
/// not counting targets equal to `ignore_index` (the training loss's, [`Loss::ignore_index`]).
///
/// # Errors
/// Model and loss errors.
pub fn evaluate(
    model: &dyn LanguageModel,
    batches: &dyn Batches,
    device: Device,
    ignore_index: i64,
) -> Result<EvalStats, TrainerError> {
    let (sum, count) = evaluate_sums(model, batches, device, ignore_index)?;
    Ok(EvalStats::new(
        sum.double_value(&[]),
        count.double_value(&[]) as u64,
    ))
}

/// The summed NLL (nats) and the number of counted tokens of `model` on `batches`, as float64
/// scalars on the device (what data-parallel evaluation sums over processes).
///
/// # Errors
/// Model and loss errors.
pub fn evaluate_sums(
    model: &dyn LanguageModel,
    batches: &dyn Batches,
    device: Device,
    ignore_index: i64,
) -> Result<(Tensor, Tensor), TrainerError> {
    tch::no_grad(|| {
        let mut state = model.initial_state(batches.batch_size(), device);
        let mut sum = Tensor::zeros([], (Kind::Double, device));
        let mut count = Tensor::zeros([], (Kind::Double, device));
        for index in 0..batches.len() {
            let Some(batch) = batches.get(Cursor { epoch: 1, index })? else {
                break;
            };
            if !batches.carries_state() {
                state = model.initial_state(batches.batch_size(), device);
            }
            let out = model.forward(&batch.inputs, &state, false)?;
            let input = LossInput::from_hidden(
                &out.hidden,
                &out.head.weight,
                out.head.bias.as_ref(),
                &batch.targets,
            );
            let (s, c) = nll_sum(&input, ignore_index)?;
            sum += s;
            count += c;
            state = out.state;
        }
        Ok((sum, count))
    })
}
