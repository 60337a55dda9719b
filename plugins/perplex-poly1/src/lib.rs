//! A loss plugin for perplex: Poly-1 cross-entropy (Leng et al. 2022, "PolyLoss").
//!
//! Linking this crate into a binary makes `[loss] type = "poly1"` available; nothing outside
//! this crate changes. Because the linker drops crates whose symbols are never used, a binary
//! must reference the crate once: call [`link`] at start-up.
//!
//! ```
//! perplex_poly1::link();
//! let names: Vec<_> = perplex_losses::registered_losses().iter().map(|l| l.name).collect();
//! assert!(names.contains(&"poly1"));
//! ```
#![warn(missing_docs)]

use perplex_losses::{
    Loss, LossError, LossInfo, LossInput, LossOutput, Reduction, SoftmaxCrossEntropy,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Poly-1 loss (`type = "poly1"`): `ℓ = CE + ε · (1 - p_t)` per counted token, where `p_t` is the
/// softmax probability of the target (Leng et al. 2022, eq. 3).
///
/// # Shapes
/// logits `[batch, seq, vocab]`, targets int64 `[batch, seq]`; output scalar (`mean`, `sum`) or
/// `[batch, seq]` (`none`).
///
/// # Errors
/// Those of `softmax_cross_entropy` (shapes, target range).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Poly1 {
    /// ε, the weight of the first polynomial term. Default 1.0.
    pub epsilon: f64,
    /// Target value that is skipped. Default -100.
    pub ignore_index: i64,
    /// `mean`, `sum` or `none`. Default `mean`.
    pub reduction: Reduction,
}

impl Default for Poly1 {
    fn default() -> Self {
        Self {
            epsilon: 1.0,
            ignore_index: -100,
            reduction: Reduction::Mean,
        }
    }
}

inventory::submit! {
    LossInfo {
        name: "poly1",
        description: "Poly-1: CE + epsilon * (1 - p_target) (Leng et al. 2022) [plugin perplex-poly1]",
    }
}

#[typetag::serde(name = "poly1")]
impl Loss for Poly1 {
    fn forward(&self, input: &LossInput) -> Result<LossOutput, LossError> {
        let ce = SoftmaxCrossEntropy {
            ignore_index: self.ignore_index,
            reduction: Reduction::None,
            ..Default::default()
        }
        .forward(input)?;
        let targets = input.targets;
        let mask = targets.f_ne(self.ignore_index)?;
        let per_ce = ce.loss; // shaped like targets, 0 at ignored positions
                              // p_t = exp(-CE) at counted positions.
        let pt = per_ce.f_neg()?.f_exp()?;
        let poly = pt.f_neg()?.f_add_scalar(1.0)?.f_mul_scalar(self.epsilon)?;
        let per = per_ce.f_add(&poly.f_mul(&mask.f_to_kind(poly.kind())?)?)?;
        let count = ce.count;
        let loss = self.reduction.apply(per, &count, input)?;
        Ok(LossOutput::new(loss, count))
    }

    fn ignore_index(&self) -> i64 {
        self.ignore_index
    }

    fn normalizer(&self, targets: &tch::Tensor) -> Result<tch::Tensor, LossError> {
        perplex_losses::counted_normalizer(targets, self.ignore_index, None)
    }
}

/// Forces this crate (and so its `typetag` and `inventory` registrations) into the binary.
/// Call it once from `main`. It does nothing else.
#[inline(never)]
pub fn link() {
    std::hint::black_box(Kind::Float);
    std::hint::black_box(Tensor::new as fn() -> Tensor);
}
