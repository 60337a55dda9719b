//! Token-level unlikelihood training: penalise repeating earlier tokens.
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::common::{
    check_finite, class_targets, flat2, neg_log_one_minus, reduce, zero_ignored_rows,
};
use crate::softmax_cross_entropy::counted;
use crate::{Loss, LossError, LossInfo, LossInput, LossOutput, Reduction};

/// Token-level unlikelihood loss (Welleck et al. 2019, "Neural Text Generation with Unlikelihood
/// Training", §4), `type = "unlikelihood"`. With `p = softmax(z_t)` at position `t` of a
/// sequence with targets `y`:
///
/// `ℓ_t = -log p_{y_t} + α · Σ_{c ∈ C_t} -log(1 - p_c)`,
/// `C_t = {y_0, …, y_{t-1}} \ {y_t}`
///
/// The negative candidates `C_t` are the earlier targets of the same sequence (a set: a token
/// repeated earlier counts once), without the current target and without `ignore_index`. Since
/// targets are the inputs shifted by one, this is the previous context except its first token.
/// `-log(1 - p)` is computed as `-log1p(-min(p, 1 - 1e-5))`: at most `≈ 11.5` per candidate, and
/// no gradient above `p = 1 - 1e-5` (the clamp of the paper's reference code).
///
/// Positions whose target is `ignore_index` are not counted and are no candidates; `mean`
/// divides the summed loss by the number of counted tokens (or by the global normaliser), as
/// the reference implementation does. The candidate sets take `O(tokens × vocab)` memory, like
/// the logits.
///
/// # Shapes
/// - logits: `[batch, seq, vocab]` (a `[N, vocab]` input is one sequence of length `N`)
/// - targets: int64 `[batch, seq]` / `[N]`; the last dimension is the sequence
/// - output: scalar (`mean`, `sum`) or the targets' shape (`none`); float32 for bf16/f16 logits
///
/// # Errors
/// Shape mismatches (naming both shapes), out-of-range targets, `alpha` negative or not finite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Unlikelihood {
    /// Weight α >= 0 of the unlikelihood term. Default 1.0.
    pub alpha: f64,
    /// Target value that is skipped. Default -100.
    pub ignore_index: i64,
    /// `mean`, `sum` or `none`. Default `mean`.
    pub reduction: Reduction,
}

impl Default for Unlikelihood {
    fn default() -> Self {
        Self {
            alpha: 1.0,
            ignore_index: -100,
            reduction: Reduction::Mean,
        }
    }
}

inventory::submit! {
    LossInfo {
        name: "unlikelihood",
        description: "cross-entropy + alpha * sum over earlier targets c of -log(1 - p_c): token-level unlikelihood (Welleck et al. 2019)",
    }
}

/// Candidate mask `[N, V]` (compute dtype, 0/1): `cand[t, c] = 1` when `c` is a counted target
/// earlier in `t`'s sequence and `c ≠ y_t`. `safe`/`maskf` are the flat targets (ignored set to 0)
/// and the counted mask; `seq` is the sequence length.
fn candidates(safe: &Tensor, maskf: &Tensor, seq: i64, vocab: i64) -> Result<Tensor, LossError> {
    let n = safe.size()[0];
    let onehot = Tensor::f_zeros([n, vocab], (maskf.kind(), maskf.device()))?.f_scatter(
        1,
        &safe.f_unsqueeze(1)?,
        &maskf.f_unsqueeze(1)?,
    )?;
    if n == 0 {
        return Ok(onehot);
    }
    let rows = onehot.f_reshape([-1, seq, vocab])?;
    // Occurrences strictly before t: inclusive running count minus the current one.
    let earlier = rows.f_cumsum(1, None::<tch::Kind>)?.f_sub(&rows)?;
    let cand = earlier
        .f_gt(0.5)?
        .f_logical_and(&rows.f_lt(0.5)?)?
        .f_reshape([n, vocab])?;
    Ok(cand.f_to_kind(maskf.kind())?)
}

#[typetag::serde(name = "unlikelihood")]
impl Loss for Unlikelihood {
    fn forward(&self, input: &LossInput) -> Result<LossOutput, LossError> {
        check_finite("unlikelihood", "alpha", self.alpha, true)?;
        let logits = flat2(input.logits()?)?;
        let kind = logits.kind();
        let vocab = logits.size()[1];
        let flat = class_targets(input, self.ignore_index)?;
        let (mask, count) = counted(&flat, self.ignore_index, None, kind)?;
        let maskf = mask.f_to_kind(kind)?;
        let safe = flat.f_masked_fill(&mask.f_logical_not()?, 0)?;
        let seq = input.targets.size().last().copied().unwrap_or(1).max(1);
        let logits = zero_ignored_rows(&logits, &mask)?;
        let ce = logits.f_cross_entropy_loss(
            &flat,
            None::<Tensor>,
            tch::Reduction::None,
            self.ignore_index,
            0.0,
        )?;
        let per = if self.alpha > 0.0 {
            let cand = candidates(&safe, &maskf, seq, vocab)?;
            let probs = logits.f_softmax(-1, None::<tch::Kind>)?;
            let ul = neg_log_one_minus(&probs)?
                .f_mul(&cand)?
                .f_sum_dim_intlist(-1, false, kind)?;
            ce.f_add(&ul.f_mul_scalar(self.alpha)?)?
        } else {
            ce
        };
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
