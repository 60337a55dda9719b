//! Cross-entropy plus a penalty on the probability of banned tokens.
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::common::{
    check_finite, class_targets, flat2, neg_log_one_minus, reduce, zero_ignored_rows,
};
use crate::softmax_cross_entropy::counted;
use crate::{Loss, LossError, LossInfo, LossInput, LossOutput, Reduction};

/// Cross-entropy with an unlikelihood penalty on a fixed set of token ids,
/// `type = "banned_tokens"`. With `p = softmax(z_i)` and the banned set `B`:
///
/// `ℓ_i = -log p_{y_i} + α · Σ_{b ∈ B} -log(1 - p_b)`
///
/// The penalty is the unlikelihood term of Welleck et al. 2019 with fixed negative candidates:
/// it pushes the probability of the banned ids (e.g. an `<unk>` token, markup the model must not
/// emit) towards 0. `B` is a set (repeated ids count once). `-log(1 - p)` is computed as
/// `-log1p(-min(p, 1 - 1e-5))`. A banned id that is also a position's target is still
/// penalised there (the two terms then pull in opposite directions).
///
/// Positions whose target is `ignore_index` are not counted; `mean` divides by the number of
/// counted tokens (or by the global normaliser).
///
/// # Shapes
/// - logits: `[batch, seq, vocab]` or `[N, vocab]`, float
/// - targets: int64 `[batch, seq]` / `[N]`
/// - output: scalar (`mean`, `sum`) or the targets' shape (`none`); float32 for bf16/f16 logits
///
/// # Errors
/// Shape mismatches (naming both shapes), out-of-range targets, a banned id outside
/// `[0, vocab)` ([`LossError::InvalidOption`] naming the id and the vocabulary size), `alpha`
/// negative or not finite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BannedTokens {
    /// Token ids whose probability is pushed down. Default none (plain cross-entropy).
    pub banned_ids: Vec<i64>,
    /// Weight α >= 0 of the penalty. Default 1.0.
    pub alpha: f64,
    /// Target value that is skipped. Default -100.
    pub ignore_index: i64,
    /// `mean`, `sum` or `none`. Default `mean`.
    pub reduction: Reduction,
}

impl Default for BannedTokens {
    fn default() -> Self {
        Self {
            banned_ids: Vec::new(),
            alpha: 1.0,
            ignore_index: -100,
            reduction: Reduction::Mean,
        }
    }
}

inventory::submit! {
    LossInfo {
        name: "banned_tokens",
        description: "cross-entropy + alpha * sum over banned ids b of -log(1 - p_b): pushes configured tokens' probability down",
    }
}

impl BannedTokens {
    /// The banned ids, sorted and deduplicated, checked against the vocabulary size.
    fn ids(&self, vocab: i64) -> Result<Vec<i64>, LossError> {
        if let Some(&bad) = self.banned_ids.iter().find(|&&b| b < 0 || b >= vocab) {
            return Err(LossError::InvalidOption {
                loss: "banned_tokens",
                option: "banned_ids",
                value: format!("{bad} (vocabulary size {vocab})"),
                expected: "token ids in [0, vocabulary size)",
            });
        }
        let mut ids = self.banned_ids.clone();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

#[typetag::serde(name = "banned_tokens")]
impl Loss for BannedTokens {
    fn forward(&self, input: &LossInput) -> Result<LossOutput, LossError> {
        check_finite("banned_tokens", "alpha", self.alpha, true)?;
        let logits = flat2(input.logits()?)?;
        let kind = logits.kind();
        let flat = class_targets(input, self.ignore_index)?;
        let ids = self.ids(logits.size()[1])?;
        let (mask, count) = counted(&flat, self.ignore_index, None, kind)?;
        let logits = zero_ignored_rows(&logits, &mask)?;
        let ce = logits.f_cross_entropy_loss(
            &flat,
            None::<Tensor>,
            tch::Reduction::None,
            self.ignore_index,
            0.0,
        )?;
        let per = if ids.is_empty() || self.alpha == 0.0 {
            ce
        } else {
            let ids = Tensor::from_slice(&ids).f_to_device(logits.device())?;
            let p_banned = logits
                .f_log_softmax(-1, None::<tch::Kind>)?
                .f_index_select(1, &ids)?
                .f_exp()?;
            let penalty = neg_log_one_minus(&p_banned)?.f_sum_dim_intlist(-1, false, kind)?;
            ce.f_add(&penalty.f_mul_scalar(self.alpha)?)?
        };
        let per = per.f_mul(&mask.f_to_kind(kind)?)?;
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
