//! Cross-entropy on probabilities.
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::common::{class_targets, flat2, reduce};
use crate::softmax_cross_entropy::counted;
use crate::{Loss, LossError, LossInfo, LossInput, LossOutput, Reduction};

/// Cross-entropy between targets and predicted probabilities, `H(p, q) = -Σ_c p_c log q_c`
/// (`type = "cross_entropy"`), with `q` clamped to `[eps, 1]` so that a zero probability costs
/// `-log eps` instead of infinity. With class targets this is `-log clamp(q_y, eps, 1)`.
///
/// Predictions are probabilities as given ([`LossInput::from_probs`]) or `softmax(logits)`.
/// Prefer `softmax_cross_entropy` on logits: it is exact where `q` underflows, and the clamp here
/// cuts the gradient where `q < eps`.
///
/// # Shapes
/// - probs: `[..., vocab]`; targets: int64 `[...]` or float `[..., vocab]`
/// - output: scalar (`mean`, `sum`) or the targets' shape without vocab (`none`)
///
/// # Errors
/// Shape mismatches, out-of-range targets, `eps` outside (0, 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrossEntropy {
    /// Lower clamp of the probabilities. Default 1e-7.
    pub eps: f64,
    /// Target value that is skipped. Default -100.
    pub ignore_index: i64,
    /// `mean`, `sum` or `none`. Default `mean`.
    pub reduction: Reduction,
}

impl Default for CrossEntropy {
    fn default() -> Self {
        Self {
            eps: 1e-7,
            ignore_index: -100,
            reduction: Reduction::Mean,
        }
    }
}

inventory::submit! {
    LossInfo {
        name: "cross_entropy",
        description: "cross-entropy H(p, q) = -sum p log clamp(q, eps, 1) on probabilities (softmax of the logits)",
    }
}

#[typetag::serde(name = "cross_entropy")]
impl Loss for CrossEntropy {
    fn forward(&self, input: &LossInput) -> Result<LossOutput, LossError> {
        if !(self.eps > 0.0 && self.eps < 1.0) {
            return Err(LossError::InvalidOption {
                loss: "cross_entropy",
                option: "eps",
                value: self.eps.to_string(),
                expected: "a value in (0, 1)",
            });
        }
        let probs = input.probs()?;
        let q = flat2(&probs)?;
        let log_q = q.f_clamp(self.eps, 1.0)?.f_log()?;
        let kind = log_q.kind();
        let targets = input.targets;
        if targets.is_floating_point() {
            if targets.size() != probs.size() {
                return Err(LossError::ShapeMismatch {
                    a: "probs",
                    a_shape: probs.size(),
                    b: "targets",
                    b_shape: targets.size(),
                    expected: "probability targets must have the predictions' shape".into(),
                });
            }
            let p = flat2(targets)?.f_to_kind(kind)?;
            let per = p
                .f_mul(&log_q)?
                .f_sum_dim_intlist(-1, false, kind)?
                .f_neg()?;
            let count = Tensor::f_scalar_tensor(per.size()[0] as f64, (kind, per.device()))?;
            let loss = reduce(
                per,
                &count,
                self.reduction,
                input,
                &probs.size()[..probs.dim() - 1],
            )?;
            return Ok(LossOutput::new(loss, count));
        }
        let flat = class_targets(input, self.ignore_index)?;
        let (mask, count) = counted(&flat, self.ignore_index, None, kind)?;
        let safe = flat.f_masked_fill(&mask.f_logical_not()?, 0)?;
        let per = log_q
            .f_gather(1, &safe.f_unsqueeze(1)?, false)?
            .f_squeeze_dim(1)?
            .f_neg()?
            .f_mul(&mask.f_to_kind(kind)?)?;
        let loss = reduce(per, &count, self.reduction, input, &targets.size())?;
        Ok(LossOutput::new(loss, count))
    }

    fn ignore_index(&self) -> i64 {
        self.ignore_index
    }

    fn normalizer(&self, targets: &tch::Tensor) -> Result<tch::Tensor, LossError> {
        crate::counted_normalizer(targets, self.ignore_index, None)
    }
}
