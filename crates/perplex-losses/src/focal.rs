//! Focal loss: cross-entropy that down-weights well-classified tokens.
use serde::{Deserialize, Serialize};

use crate::common::{check_finite, class_targets, flat2, reduce, zero_ignored_rows};
use crate::softmax_cross_entropy::{class_vector, counted};
use crate::{Loss, LossError, LossInfo, LossInput, LossOutput, Reduction};

/// Multi-class focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection"),
/// `type = "focal"`. With `p_t = softmax(z_i)_{y_i}`:
///
/// `ℓ_i = -α_{y_i} · (1 - p_t)^γ · log p_t`
///
/// `γ = 0` is cross-entropy; larger `γ` lowers the loss of tokens the model already predicts
/// well. `α` is an optional per-class weight vector (all 1 when unset) that multiplies the
/// target class's term. `log p_t` is a fused log-softmax and `1 - p_t = -expm1(log p_t)`, so
/// large logits and `-inf` masked entries are stable.
///
/// Positions whose target is `ignore_index` are not counted; `mean` divides by the number of
/// counted tokens (not by the sum of their `α`), or by the global normaliser.
///
/// # Shapes
/// - logits: `[batch, seq, vocab]` or `[N, vocab]`, float
/// - targets: int64 `[batch, seq]` / `[N]`
/// - output: scalar (`mean`, `sum`) or the targets' shape (`none`); float32 for bf16/f16 logits
///
/// # Errors
/// Shape mismatches (naming both shapes), out-of-range targets, `gamma` negative or not finite,
/// an `alpha` whose length is not the vocabulary size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Focal {
    /// Focusing exponent γ >= 0. Default 2.0.
    pub gamma: f64,
    /// Per-class weights α, length `vocab`. Default none (all 1).
    pub alpha: Option<Vec<f64>>,
    /// Target value that is skipped. Default -100.
    pub ignore_index: i64,
    /// `mean`, `sum` or `none`. Default `mean`.
    pub reduction: Reduction,
}

impl Default for Focal {
    fn default() -> Self {
        Self {
            gamma: 2.0,
            alpha: None,
            ignore_index: -100,
            reduction: Reduction::Mean,
        }
    }
}

inventory::submit! {
    LossInfo {
        name: "focal",
        description: "focal loss -alpha_t (1 - p_t)^gamma log p_t: down-weights easy tokens (Lin et al. 2017)",
    }
}

/// Smallest `1 - p_t` raised to `γ`: keeps `(1 - p_t)^γ` differentiable at `p_t = 1` for
/// `γ < 1` (its value changes by at most `1e-30^γ · |log p_t|`, i.e. nothing).
const ONE_MINUS_PT_FLOOR: f64 = 1e-30;

#[typetag::serde(name = "focal")]
impl Loss for Focal {
    fn forward(&self, input: &LossInput) -> Result<LossOutput, LossError> {
        check_finite("focal", "gamma", self.gamma, true)?;
        let logits = flat2(input.logits()?)?;
        let kind = logits.kind();
        let flat = class_targets(input, self.ignore_index)?;
        let alpha = class_vector("focal", "alpha", &self.alpha, &logits)?;
        let (mask, count) = counted(&flat, self.ignore_index, None, kind)?;
        let safe = flat.f_masked_fill(&mask.f_logical_not()?, 0)?;
        let maskf = mask.f_to_kind(kind)?;
        // Ignored rows may hold anything (`-inf` padding): take them out of the graph.
        let logp_t = zero_ignored_rows(&logits, &mask)?
            .f_log_softmax(-1, None::<tch::Kind>)?
            .f_gather(1, &safe.f_unsqueeze(1)?, false)?
            .f_squeeze_dim(1)?;
        let one_minus = logp_t.f_expm1()?.f_neg()?.f_clamp_min(ONE_MINUS_PT_FLOOR)?;
        let mut per = one_minus
            .f_pow_tensor_scalar(self.gamma)?
            .f_mul(&logp_t)?
            .f_neg()?;
        if let Some(a) = &alpha {
            per = per.f_mul(&a.f_index_select(0, &safe)?)?;
        }
        let per = per.f_mul(&maskf)?;
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
