//! z-loss: keeps the softmax normaliser near 1.
use serde::{Deserialize, Serialize};

use crate::common::{check_finite, class_targets, flat2, reduce, zero_ignored_rows};
use crate::softmax_cross_entropy::counted;
use crate::{Loss, LossError, LossInfo, LossInput, LossOutput, Reduction};

/// Auxiliary z-loss of PaLM (Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with
/// Pathways", §5), `type = "z_loss"`:
///
/// `ℓ_i = coefficient · (log Σ_c exp z_{ic})²`
///
/// It pulls the log-partition function `log Z = logsumexp(z)` towards 0, which stabilises
/// training of large models. PaLM uses `coefficient = 1e-4` and adds it to the cross-entropy;
/// write that as a `weighted_sum` of `softmax_cross_entropy` and `z_loss` (with `coefficient = 1`
/// and the term's weight `1e-4`, or the other way round).
///
/// Positions whose target is `ignore_index` are not counted; `mean` divides by the number of
/// counted positions (or by the global normaliser). The gradient is
/// `2 · coefficient · logsumexp(z_i) · softmax(z_i)`.
///
/// # Shapes
/// - logits: `[batch, seq, vocab]` or `[N, vocab]`, float
/// - targets: int64 `[batch, seq]` / `[N]` (only read to find ignored positions)
/// - output: scalar (`mean`, `sum`) or the targets' shape (`none`); float32 for bf16/f16 logits
///
/// # Errors
/// Shape mismatches (naming both shapes), out-of-range targets, a non-finite or negative
/// `coefficient`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZLoss {
    /// Multiplier of `logsumexp(z)²`. Default 1e-4.
    pub coefficient: f64,
    /// Target value whose position is skipped. Default -100.
    pub ignore_index: i64,
    /// `mean`, `sum` or `none`. Default `mean`.
    pub reduction: Reduction,
}

impl Default for ZLoss {
    fn default() -> Self {
        Self {
            coefficient: 1e-4,
            ignore_index: -100,
            reduction: Reduction::Mean,
        }
    }
}

inventory::submit! {
    LossInfo {
        name: "z_loss",
        description: "coefficient * logsumexp(logits)^2 per token: keeps the softmax normaliser near 1 (PaLM, Chowdhery et al. 2022)",
    }
}

#[typetag::serde(name = "z_loss")]
impl Loss for ZLoss {
    fn forward(&self, input: &LossInput) -> Result<LossOutput, LossError> {
        check_finite("z_loss", "coefficient", self.coefficient, true)?;
        let logits = flat2(input.logits()?)?;
        let kind = logits.kind();
        let flat = class_targets(input, self.ignore_index)?;
        let (mask, count) = counted(&flat, self.ignore_index, None, kind)?;
        let lse = zero_ignored_rows(&logits, &mask)?.f_logsumexp([-1], false)?;
        let per = lse
            .f_square()?
            .f_mul_scalar(self.coefficient)?
            .f_mul(&mask.f_to_kind(kind)?)?;
        let loss = reduce(per, &count, self.reduction, input, &input.targets.size())?;
        Ok(LossOutput::new(loss, count))
    }

    fn ignore_index(&self) -> i64 {
        self.ignore_index
    }

    fn normalizer(&self, targets: &tch::Tensor) -> Result<tch::Tensor, LossError> {
        crate::counted_normalizer(targets, self.ignore_index, None)
    }
}
