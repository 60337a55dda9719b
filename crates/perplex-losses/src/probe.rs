//! Checking a loss's options before training: one forward pass on a tiny batch.
use tch::{Device, Kind, Tensor};

use crate::{Loss, LossError, LossInput};

/// Runs `loss` once, without gradients, on a probe batch of two positions over a vocabulary of
/// `vocab_size` (hidden states `[1, 2, 4]` and a zero head `[vocab_size, 4]` on the CPU,
/// targets `0` and `vocab_size - 1`, zero teacher logits), the input shape the trainer gives.
/// Options that a loss checks when it runs (`label_smoothing` outside [0, 1], a class `weight`
/// whose length is not the vocabulary size, banned ids outside it, a `weighted_sum` without
/// terms) fail here, before a run writes any file, with the error training would stop with at
/// its first step. Returns the probe's loss (a scalar unless `reduction = "none"`).
///
/// # Errors
/// The loss's [`LossError`].
pub fn probe(loss: &dyn Loss, vocab_size: i64) -> Result<Tensor, LossError> {
    tch::no_grad(|| {
        let opts = (Kind::Float, Device::Cpu);
        let hidden = Tensor::f_zeros([1, 2, 4], opts)?;
        let head = Tensor::f_zeros([vocab_size.max(1), 4], opts)?;
        let targets = Tensor::f_from_slice(&[0i64, (vocab_size - 1).max(0)])?.f_view([1, 2])?;
        let teacher = Tensor::f_zeros([1, 2, vocab_size.max(1)], opts)?;
        let input =
            LossInput::from_hidden(&hidden, &head, None, &targets).with_teacher_logits(&teacher);
        Ok(loss.forward(&input)?.loss)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(json: serde_json::Value) -> Box<dyn Loss> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn bad_options_fail_the_probe_and_good_ones_pass() {
        let ok = loss(serde_json::json!({"type": "softmax_cross_entropy", "label_smoothing": 0.1}));
        assert_eq!(probe(ok.as_ref(), 50).unwrap().dim(), 0);
        let bad =
            loss(serde_json::json!({"type": "softmax_cross_entropy", "label_smoothing": 1.5}));
        let msg = probe(bad.as_ref(), 50).unwrap_err().to_string();
        assert!(msg.contains("label_smoothing"), "{msg}");
        let weights =
            loss(serde_json::json!({"type": "softmax_cross_entropy", "weight": [1.0, 2.0]}));
        assert!(probe(weights.as_ref(), 2).is_ok());
        assert!(probe(weights.as_ref(), 50).is_err());
        let banned = loss(serde_json::json!({"type": "banned_tokens", "banned_ids": [60]}));
        assert!(probe(banned.as_ref(), 50).is_err());
        assert!(probe(banned.as_ref(), 61).is_ok());
    }

    #[test]
    fn every_registered_loss_passes_the_probe_with_its_defaults() {
        for info in crate::registered_losses() {
            let l = loss(serde_json::json!({"type": info.name}));
            // weighted_sum has no default terms: an error naming `terms`, as training gives.
            match probe(l.as_ref(), 50) {
                Ok(_) => {}
                Err(e) => assert!(info.name == "weighted_sum", "{}: {e}", info.name),
            }
        }
    }
}
