//! Knowledge distillation: KL divergence from a teacher's softened distribution.
use serde::{Deserialize, Serialize};

use crate::common::{class_targets, flat2, reduce, zero_ignored_rows};
use crate::softmax_cross_entropy::counted;
use crate::{Loss, LossError, LossInfo, LossInput, LossOutput, Reduction};

/// Distillation loss of Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network"),
/// `type = "distillation_kl"`. With temperature `T`, teacher logits `t_i` and student logits
/// `z_i`, `p = softmax(t_i / T)` and `q = softmax(z_i / T)`:
///
/// `ℓ_i = T² · KL(p ‖ q) = T² · Σ_c p_c · (log p_c - log q_c)`
///
/// The `T²` keeps the gradient's magnitude independent of `T` (Hinton et al. §2). This is
/// `T² · F.kl_div(log_softmax(z / T), log_softmax(t / T), log_target=True)` per token; `mean`
/// divides by the number of counted tokens (PyTorch's `batchmean` on `[N, vocab]` rows), not
/// by the number of batch rows of a `[batch, seq, vocab]` input.
///
/// The teacher is a constant: its logits are detached, so no gradient reaches it. Classes the
/// teacher gives probability 0 (`-inf` teacher logits) contribute 0. Positions whose target is
/// `ignore_index` are not counted (targets are given as usual; only `ignore_index` is read from
/// them).
///
/// # Shapes
/// - logits (student) and `input.teacher_logits`: `[batch, seq, vocab]` or `[N, vocab]`, same
///   shape; the teacher may have another float dtype
/// - targets: int64 `[batch, seq]` / `[N]`
/// - output: scalar (`mean`, `sum`) or the targets' shape (`none`); float32 for bf16/f16 logits
///
/// # Errors
/// [`LossError::MissingInput`] without teacher logits; shape mismatches (naming both shapes);
/// out-of-range targets; `temperature` not finite and positive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillationKl {
    /// Softmax temperature T > 0 of both distributions. Default 2.0.
    pub temperature: f64,
    /// Target value whose position is skipped. Default -100.
    pub ignore_index: i64,
    /// `mean`, `sum` or `none`. Default `mean`.
    pub reduction: Reduction,
}

impl Default for DistillationKl {
    fn default() -> Self {
        Self {
            temperature: 2.0,
            ignore_index: -100,
            reduction: Reduction::Mean,
        }
    }
}

inventory::submit! {
    LossInfo {
        name: "distillation_kl",
        description: "T^2 * KL(softmax(teacher/T) || softmax(student/T)) per token, needs teacher logits (Hinton et al. 2015)",
    }
}

#[typetag::serde(name = "distillation_kl")]
impl Loss for DistillationKl {
    fn forward(&self, input: &LossInput) -> Result<LossOutput, LossError> {
        let t = self.temperature;
        if !(t.is_finite() && t > 0.0) {
            return Err(LossError::InvalidOption {
                loss: "distillation_kl",
                option: "temperature",
                value: t.to_string(),
                expected: "a finite value > 0",
            });
        }
        let teacher = input.teacher_logits.ok_or(LossError::MissingInput {
            loss: "distillation_kl",
            what: "teacher logits: set trainer.teacher to a trained run of the same vocabulary (in code: LossInput::with_teacher_logits)",
        })?;
        let raw = input.logits()?;
        if teacher.size() != raw.size() {
            return Err(LossError::ShapeMismatch {
                a: "logits",
                a_shape: raw.size(),
                b: "teacher_logits",
                b_shape: teacher.size(),
                expected: "teacher logits must have the student logits' shape".into(),
            });
        }
        let student = flat2(raw)?;
        let kind = student.kind();
        let teacher = flat2(&teacher.f_detach()?)?.f_to_kind(kind)?;
        let flat = class_targets(input, self.ignore_index)?;
        let (mask, count) = counted(&flat, self.ignore_index, None, kind)?;
        let log_q = zero_ignored_rows(&student, &mask)?
            .f_div_scalar(t)?
            .f_log_softmax(-1, None::<tch::Kind>)?;
        let log_p = zero_ignored_rows(&teacher, &mask)?
            .f_div_scalar(t)?
            .f_log_softmax(-1, None::<tch::Kind>)?;
        let p = log_p.f_exp()?;
        let terms = p.f_mul(&log_p.f_sub(&log_q)?)?;
        // 0 · log 0 = 0 where the teacher gives a class no mass.
        let terms = terms.f_where_self(&p.f_gt(0.0)?, &terms.f_zeros_like()?)?;
        let per = terms
            .f_sum_dim_intlist(-1, false, kind)?
            .f_mul_scalar(t * t)?
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
