//! Softmax cross-entropy on logits.
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::common::{class_targets, flat2, reduce};
use crate::{Loss, LossError, LossInfo, LossInput, LossOutput, Reduction};

/// Softmax cross-entropy on logits, exactly `torch.nn.functional.cross_entropy`
/// (`type = "softmax_cross_entropy"`).
///
/// For class targets `y_i` and logits `z_i`, with `ε = label_smoothing`, `C` classes and class
/// weights `w` (all 1 when unset):
///
/// `ℓ_i = (1 - ε) · w_{y_i} · (-log softmax(z_i)_{y_i}) + (ε / C) · Σ_c w_c · (-log softmax(z_i)_c)`
///
/// `mean` divides `Σ ℓ_i` over counted positions by `Σ w_{y_i}` (the number of counted tokens
/// when unweighted), as PyTorch does; positions whose target is `ignore_index` count for nothing.
/// With probability targets `p_i` (float, shaped like the logits)
/// `ℓ_i = -Σ_c w_c · p'_{ic} · log softmax(z_i)_c` with `p' = (1 - ε) p + ε / C`, and `mean`
/// divides by the number of rows `N`. The log-softmax is fused (libtorch `cross_entropy_loss`), so
/// logits of any magnitude and `-inf` masked entries are stable.
///
/// # Shapes
/// - logits: `[batch, seq, vocab]` or `[N, vocab]` (any leading dims), float
/// - targets: int64 `[batch, seq]` / `[N]`, or float probabilities shaped like the logits
/// - output: scalar (`mean`, `sum`) or the targets' shape (`none`); float32 for bf16/f16 logits
///
/// # Errors
/// Shape mismatches (naming both shapes), out-of-range targets (naming index and vocabulary
/// size), a `weight` whose length is not the vocabulary size, `label_smoothing` outside [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoftmaxCrossEntropy {
    /// Per-class weights, length `vocab`. Default none (all 1).
    pub weight: Option<Vec<f64>>,
    /// Target value that is skipped. Default -100.
    pub ignore_index: i64,
    /// ε in [0, 1]: mass moved from the target to a uniform distribution. Default 0.
    pub label_smoothing: f64,
    /// `mean`, `sum` or `none`. Default `mean`.
    pub reduction: Reduction,
}

impl Default for SoftmaxCrossEntropy {
    fn default() -> Self {
        Self {
            weight: None,
            ignore_index: -100,
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
        }
    }
}

inventory::submit! {
    LossInfo {
        name: "softmax_cross_entropy",
        description: "cross-entropy on logits with fused log-softmax; weight, ignore_index, label_smoothing, soft targets (torch F.cross_entropy)",
    }
}

/// Builds the class-weight tensor on the logits' device and dtype, checking its length.
pub(crate) fn weight_tensor(
    loss: &'static str,
    weight: &Option<Vec<f64>>,
    like: &Tensor,
) -> Result<Option<Tensor>, LossError> {
    class_vector(loss, "weight", weight, like)
}

/// A per-class option (`weight`, `alpha`) as a tensor on the logits' device and dtype, checking
/// its length.
pub(crate) fn class_vector(
    loss: &'static str,
    option: &'static str,
    weight: &Option<Vec<f64>>,
    like: &Tensor,
) -> Result<Option<Tensor>, LossError> {
    let Some(w) = weight else { return Ok(None) };
    let c = *like.size().last().unwrap_or(&0);
    if w.len() as i64 != c {
        return Err(LossError::InvalidOption {
            loss,
            option,
            value: format!("{} values for a vocabulary of {c} tokens", w.len()),
            expected: "one weight per vocabulary entry",
        });
    }
    Ok(Some(
        Tensor::from_slice(w)
            .f_to_kind(like.kind())?
            .f_to_device(like.device())?,
    ))
}

/// Count (or class-weight sum) of counted positions: `Σ_i [y_i ≠ ignore] · w_{y_i}`.
pub(crate) fn counted(
    targets: &Tensor,
    ignore_index: i64,
    weight: Option<&Tensor>,
    kind: tch::Kind,
) -> Result<(Tensor, Tensor), LossError> {
    let mask = targets.f_ne(ignore_index)?;
    let count = match weight {
        None => mask.f_sum(kind)?,
        Some(w) => {
            let safe = targets.f_masked_fill(&mask.f_logical_not()?, 0)?;
            w.f_index_select(0, &safe)?
                .f_mul(&mask.f_to_kind(kind)?)?
                .f_sum(kind)?
        }
    };
    Ok((mask, count))
}

#[typetag::serde(name = "softmax_cross_entropy")]
impl Loss for SoftmaxCrossEntropy {
    fn forward(&self, input: &LossInput) -> Result<LossOutput, LossError> {
        crate::common::check_probability(
            "softmax_cross_entropy",
            "label_smoothing",
            self.label_smoothing,
            true,
        )?;
        let raw = input.logits()?;
        let logits = flat2(raw)?;
        let weight = weight_tensor("softmax_cross_entropy", &self.weight, &logits)?;
        let kind = logits.kind();
        let targets = input.targets;
        if targets.is_floating_point() {
            if targets.size() != raw.size() {
                return Err(LossError::ShapeMismatch {
                    a: "logits",
                    a_shape: raw.size(),
                    b: "targets",
                    b_shape: targets.size(),
                    expected: "probability targets must have the logits' shape".into(),
                });
            }
            let probs = flat2(targets)?.f_to_kind(kind)?;
            let per = logits.f_cross_entropy_loss(
                &probs,
                weight.as_ref(),
                tch::Reduction::None,
                self.ignore_index,
                self.label_smoothing,
            )?;
            let count = Tensor::f_scalar_tensor(per.size()[0] as f64, (kind, per.device()))?;
            let loss = reduce(
                per,
                &count,
                self.reduction,
                input,
                &raw.size()[..raw.dim() - 1],
            )?;
            return Ok(LossOutput::new(loss, count));
        }
        let flat = class_targets(input, self.ignore_index)?;
        let (_, count) = counted(&flat, self.ignore_index, weight.as_ref(), kind)?;
        let r = match self.reduction {
            Reduction::None => tch::Reduction::None,
            _ => tch::Reduction::Sum,
        };
        let out = logits.f_cross_entropy_loss(
            &flat,
            weight.as_ref(),
            r,
            self.ignore_index,
            self.label_smoothing,
        )?;
        let loss = match self.reduction {
            Reduction::None => out.f_reshape(targets.size())?,
            Reduction::Sum => out,
            Reduction::Mean => crate::common::reduce_sum_mean(out, &count, input)?,
        };
        Ok(LossOutput::new(loss, count))
    }

    fn ignore_index(&self) -> i64 {
        self.ignore_index
    }

    fn normalizer(&self, targets: &tch::Tensor) -> Result<tch::Tensor, LossError> {
        crate::counted_normalizer(targets, self.ignore_index, self.weight.as_deref())
    }
}
