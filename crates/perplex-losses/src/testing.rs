//! Checks any [`Loss`] implementation can run on itself, built-in or plugin.
use tch::{Kind, Tensor};

use crate::{Loss, LossError, LossInput};

/// How far a loss accumulated over micro-batches is from the same loss on the whole batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccumulationMismatch {
    /// `|Σ_i loss(micro-batch i) - loss(batch)|`.
    pub loss: f64,
    /// Largest absolute difference of any gradient element (hidden states, head weight, bias).
    pub grad: f64,
}

/// Runs `loss` (reduction `mean`) on a whole batch and, as gradient accumulation does, on `k`
/// micro-batches split along the batch dimension, each given the whole batch's
/// [`Loss::normalizer`] through [`LossInput::with_normalizer`]; returns how far apart the values
/// and the gradients are. An exact loss gives differences at rounding level (float64 inputs:
/// ~1e-15).
///
/// # Shapes
/// - hidden: `[batch, seq, H]` (float; `batch` divisible by `k`)
/// - weight: `[vocab, H]`, bias: `[vocab]`
/// - targets: int64 `[batch, seq]` or probabilities `[batch, seq, vocab]`
/// - teacher_logits: `[batch, seq, vocab]`
///
/// # Errors
/// The loss's own errors; a loss whose training value is not a scalar.
pub fn accumulation_mismatch(
    loss: &dyn Loss,
    hidden: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    targets: &Tensor,
    teacher_logits: Option<&Tensor>,
    k: i64,
) -> Result<AccumulationMismatch, LossError> {
    let leaf = |t: &Tensor| t.detach().copy().set_requires_grad(true);
    let grads = |ts: &[&Tensor]| -> Vec<Tensor> { ts.iter().map(|t| t.grad()).collect() };

    // The whole batch in one piece.
    let (h1, w1, b1) = (leaf(hidden), leaf(weight), bias.map(leaf));
    let mut input = LossInput::from_hidden(&h1, &w1, b1.as_ref(), targets);
    if let Some(t) = teacher_logits {
        input = input.with_teacher_logits(t);
    }
    let whole = loss.forward(&input)?.loss;
    whole.f_backward()?;
    let whole_value = whole.f_double_value(&[])?;
    let mut params1 = vec![&h1, &w1];
    params1.extend(b1.as_ref());

    // The same batch in `k` micro-batches, divided once by the summed normaliser.
    let (h2, w2, b2) = (leaf(hidden), leaf(weight), bias.map(leaf));
    let normalizer = loss.normalizer(targets)?;
    let hs = h2.f_chunk(k, 0)?;
    let ts = targets.f_chunk(k, 0)?;
    let teachers = teacher_logits.map(|t| t.f_chunk(k, 0)).transpose()?;
    let mut accumulated = 0.0;
    for (i, (h, t)) in hs.iter().zip(&ts).enumerate() {
        let mut input = LossInput::from_hidden(h, &w2, b2.as_ref(), t).with_normalizer(&normalizer);
        if let Some(teachers) = &teachers {
            input = input.with_teacher_logits(&teachers[i]);
        }
        let part = loss.forward(&input)?.loss;
        part.f_backward()?;
        accumulated += part.f_double_value(&[])?;
    }
    let mut params2 = vec![&h2, &w2];
    params2.extend(b2.as_ref());

    let mut grad = 0.0f64;
    for (a, b) in grads(&params1).iter().zip(grads(&params2).iter()) {
        let d = (a - b).f_abs()?.f_max()?.f_to_kind(Kind::Double)?;
        grad = grad.max(d.f_double_value(&[])?);
    }
    Ok(AccumulationMismatch {
        loss: (whole_value - accumulated).abs(),
        grad,
    })
}
