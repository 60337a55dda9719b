//! A weighted sum of losses.
use serde::{Deserialize, Serialize};

use crate::{Loss, LossError, LossInfo, LossInput, LossOutput};

/// One term of a [`WeightedSum`]: `weight · loss`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Term {
    /// Multiplier of this term. Default 1.0.
    #[serde(default = "one")]
    pub weight: f64,
    /// The loss, as in `[loss]`: `{ type = "z_loss", coefficient = 1.0 }`.
    pub loss: Box<dyn Loss>,
}

fn one() -> f64 {
    1.0
}

impl Term {
    /// A term `weight · loss`.
    pub fn new(weight: f64, loss: impl Loss + 'static) -> Self {
        Self {
            weight,
            loss: Box::new(loss),
        }
    }
}

/// A composite loss `Σ_i weight_i · loss_i` (`type = "weighted_sum"`), e.g. cross-entropy plus
/// PaLM's z-loss:
///
/// ```toml
/// [loss]
/// type = "weighted_sum"
/// terms = [
///     { weight = 1.0, loss = { type = "softmax_cross_entropy" } },
///     { weight = 1e-4, loss = { type = "z_loss", coefficient = 1.0 } },
/// ]
/// ```
///
/// Every term sees the same [`LossInput`] (logits computed from hidden states once and shared),
/// except for the normaliser: each term's `mean` divides by its own denominator
/// ([`Loss::normalizer`] returns one per term), so accumulation stays exact when terms count
/// differently (a class-weighted cross-entropy plus a z-loss).
/// The result's `count` is the first term's; each term's value (detached, before its weight;
/// summed when the term's reduction is `none`) is logged as a metric named after its `type`
/// (`z_loss`), or `type_i` with its index `i` when an earlier term has the same type; the inner
/// losses' own metrics follow under their own names, or `term/name` (`linear_cross_entropy/z_loss`)
/// where that name is already taken. With `reduction = "none"` terms, their per-position
/// losses are added elementwise (they must have the same shape).
///
/// Not `Clone`/`PartialEq` (its terms are trait objects), unlike the other configs.
///
/// # Shapes
/// Those of the terms.
///
/// # Errors
/// No terms, a non-finite weight, any term's error, terms whose outputs cannot be added.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightedSum {
    /// The terms `{ weight, loss }`. Default none (an error when used).
    pub terms: Vec<Term>,
}

inventory::submit! {
    LossInfo {
        name: "weighted_sum",
        description: "sum of weighted losses, e.g. cross-entropy + 1e-4 z_loss; logs each term as a metric",
    }
}

#[typetag::serde(name = "weighted_sum")]
impl Loss for WeightedSum {
    fn forward(&self, input: &LossInput) -> Result<LossOutput, LossError> {
        if self.terms.is_empty() {
            return Err(LossError::InvalidOption {
                loss: "weighted_sum",
                option: "terms",
                value: "[]".into(),
                expected: "at least one term",
            });
        }
        if let Some(n) = input.normalizer {
            if n.numel() != self.normalizer_terms() {
                return Err(LossError::ShapeMismatch {
                    a: "normalizer",
                    a_shape: n.size(),
                    b: "terms",
                    b_shape: vec![self.normalizer_terms() as i64],
                    expected: "one denominator per term (Loss::normalizer of this weighted_sum)"
                        .into(),
                });
            }
        }
        let mut offset = 0i64;
        let mut total: Option<tch::Tensor> = None;
        let mut count = None;
        let mut metrics = Vec::new();
        let mut inner = Vec::new();
        let mut names: Vec<&'static str> = Vec::new();
        for (i, term) in self.terms.iter().enumerate() {
            if !term.weight.is_finite() {
                return Err(LossError::InvalidOption {
                    loss: "weighted_sum",
                    option: "terms.weight",
                    value: format!("{} (term {i})", term.weight),
                    expected: "a finite value",
                });
            }
            // Each term divides by its own denominator (a class-weighted cross-entropy by the
            // weight sum, a z-loss by the token count): its slice of the global normaliser.
            let terms = term.loss.normalizer_terms() as i64;
            let slice = input
                .normalizer
                .map(|n| n.f_reshape([-1])?.f_narrow(0, offset, terms))
                .transpose()?;
            offset += terms;
            let out = term
                .loss
                .forward(&input.with_term_normalizer(slice.as_ref()))?;
            let ty = term.loss.typetag_name();
            let name = if names.contains(&ty) {
                format!("{ty}_{i}")
            } else {
                ty.to_string()
            };
            names.push(ty);
            let logged = if out.loss.dim() == 0 {
                out.loss.f_detach()?
            } else {
                out.loss.f_detach()?.f_sum(out.loss.kind())?
            };
            inner.extend(out.metrics.into_iter().map(|m| (name.clone(), m)));
            metrics.push((name, logged));
            let weighted = out.loss.f_mul_scalar(term.weight)?;
            total = Some(match total {
                None => weighted,
                Some(t) => t.f_add(&weighted)?,
            });
            if count.is_none() {
                count = Some(out.count);
            }
        }
        for (term, (name, value)) in inner {
            let name = if metrics.iter().any(|(n, _)| *n == name) {
                format!("{term}/{name}")
            } else {
                name
            };
            metrics.push((name, value));
        }
        Ok(LossOutput {
            loss: total.expect("at least one term"),
            count: count.expect("at least one term"),
            metrics,
        })
    }

    /// The terms' denominators, concatenated in order.
    fn normalizer(&self, targets: &tch::Tensor) -> Result<tch::Tensor, LossError> {
        let parts = self
            .terms
            .iter()
            .map(|t| t.loss.normalizer(targets))
            .collect::<Result<Vec<_>, _>>()?;
        if parts.is_empty() {
            return Ok(tch::Tensor::f_zeros(
                [0],
                (tch::Kind::Double, targets.device()),
            )?);
        }
        Ok(tch::Tensor::f_cat(&parts, 0)?)
    }

    /// The first term's.
    fn ignore_index(&self) -> i64 {
        self.terms.first().map_or(-100, |t| t.loss.ignore_index())
    }

    fn normalizer_terms(&self) -> usize {
        self.terms.iter().map(|t| t.loss.normalizer_terms()).sum()
    }
}
