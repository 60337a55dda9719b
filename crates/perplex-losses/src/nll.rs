//! Negative log-likelihood on log-probabilities.
use serde::{Deserialize, Serialize};

use crate::common::{class_targets, flat2, reduce};
use crate::softmax_cross_entropy::{counted, weight_tensor};
use crate::{Loss, LossError, LossInfo, LossInput, LossOutput, Reduction};

/// Negative log-likelihood of the targets under log-probabilities, `ℓ_i = -w_{y_i} · lp_{i, y_i}`
/// (`type = "nll"`), exactly `torch.nn.functional.nll_loss`. Predictions are log-probabilities
/// as given ([`LossInput::from_log_probs`]) or `log_softmax(logits)`.
///
/// # Shapes
/// - log_probs: `[..., vocab]`; targets: int64 `[...]`
/// - output: scalar (`mean`, `sum`) or the targets' shape (`none`)
///
/// # Errors
/// Shape mismatches, out-of-range targets, a `weight` of the wrong length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nll {
    /// Per-class weights, length `vocab`. Default none.
    pub weight: Option<Vec<f64>>,
    /// Target value that is skipped. Default -100.
    pub ignore_index: i64,
    /// `mean`, `sum` or `none`. Default `mean`.
    pub reduction: Reduction,
}

impl Default for Nll {
    fn default() -> Self {
        Self {
            weight: None,
            ignore_index: -100,
            reduction: Reduction::Mean,
        }
    }
}

inventory::submit! {
    LossInfo {
        name: "nll",
        description: "negative log-likelihood on log-probabilities (torch F.nll_loss)",
    }
}

#[typetag::serde(name = "nll")]
impl Loss for Nll {
    fn forward(&self, input: &LossInput) -> Result<LossOutput, LossError> {
        let lp = flat2(&input.log_probs()?)?;
        let weight = weight_tensor("nll", &self.weight, &lp)?;
        let flat = class_targets(input, self.ignore_index)?;
        let (_, count) = counted(&flat, self.ignore_index, weight.as_ref(), lp.kind())?;
        let per = lp.f_nll_loss(
            &flat,
            weight.as_ref(),
            tch::Reduction::None,
            self.ignore_index,
        )?;
        let loss = reduce(per, &count, self.reduction, input, &input.targets.size())?;
        Ok(LossOutput::new(loss, count))
    }

    fn ignore_index(&self) -> i64 {
        self.ignore_index
    }

    fn normalizer(&self, targets: &tch::Tensor) -> Result<tch::Tensor, LossError> {
        crate::counted_normalizer(targets, self.ignore_index, self.weight.as_deref())
    }
}
