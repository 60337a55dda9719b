//! What a loss sees: the model's output, the targets and the normaliser.
use std::cell::OnceCell;
use std::rc::Rc;

use tch::{Kind, Tensor};

use crate::LossError;

/// Where the predictions come from.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// Final hidden states and the output head; logits are computed only if a loss asks.
    Hidden {
        hidden: &'a Tensor,
        weight: &'a Tensor,
        bias: Option<&'a Tensor>,
    },
    /// Unnormalised scores `[..., vocab]`.
    Logits(&'a Tensor),
    /// Probabilities `[..., vocab]` (for `cross_entropy`).
    Probs(&'a Tensor),
    /// Log-probabilities `[..., vocab]` (for `nll`).
    LogProbs(&'a Tensor),
}

/// The inputs of a loss.
///
/// A model's output enters as final hidden states `[batch, seq, hidden]` plus the output head
/// (weight `[vocab, hidden]`, optional bias `[vocab]`): [`LossInput::from_hidden`]. A loss that
/// needs logits calls [`LossInput::logits`], which computes `[batch, seq, vocab]` once and caches
/// it; a memory-lean loss (`linear_cross_entropy`) reads [`LossInput::hidden`] instead and never
/// materialises them.
///
/// Targets are int64 class ids of the predictions' shape without the vocabulary dimension
/// (`[batch, seq]` or `[N]`); `softmax_cross_entropy` also takes float probability targets of the
/// logits' shape.
#[derive(Debug)]
pub struct LossInput<'a> {
    source: Source<'a>,
    /// Shared with the views [`LossInput::with_term_normalizer`] makes, so that the terms of a
    /// composite loss compute the logits once.
    logits: Rc<OnceCell<Tensor>>,
    /// Targets: int64 ids `[batch, seq]` / `[N]`, or probabilities `[..., vocab]`.
    pub targets: &'a Tensor,
    /// Denominator for `mean` over the whole accumulated batch (all micro-batches, all ranks):
    /// the sum of [`crate::Loss::normalizer`] over them, float64 `[terms]`. `None` normalises by
    /// this micro-batch's own count.
    pub normalizer: Option<&'a Tensor>,
    /// Teacher logits `[..., vocab]` for distillation losses.
    pub teacher_logits: Option<&'a Tensor>,
}

impl<'a> LossInput<'a> {
    /// Predictions given as logits `[..., vocab]`.
    pub fn from_logits(logits: &'a Tensor, targets: &'a Tensor) -> Self {
        Self::new(Source::Logits(logits), targets)
    }

    /// Predictions given as final hidden states `[..., hidden]` and an output head
    /// (`weight [vocab, hidden]`, `bias [vocab]`).
    pub fn from_hidden(
        hidden: &'a Tensor,
        weight: &'a Tensor,
        bias: Option<&'a Tensor>,
        targets: &'a Tensor,
    ) -> Self {
        Self::new(
            Source::Hidden {
                hidden,
                weight,
                bias,
            },
            targets,
        )
    }

    /// Predictions given as probabilities `[..., vocab]`.
    pub fn from_probs(probs: &'a Tensor, targets: &'a Tensor) -> Self {
        Self::new(Source::Probs(probs), targets)
    }

    /// Predictions given as log-probabilities `[..., vocab]`.
    pub fn from_log_probs(log_probs: &'a Tensor, targets: &'a Tensor) -> Self {
        Self::new(Source::LogProbs(log_probs), targets)
    }

    fn new(source: Source<'a>, targets: &'a Tensor) -> Self {
        Self {
            source,
            logits: Rc::new(OnceCell::new()),
            targets,
            normalizer: None,
            teacher_logits: None,
        }
    }

    /// Sets the global denominator of `mean`: [`crate::Loss::normalizer`] summed over every
    /// micro-batch (and rank) of the step, float64 `[terms]` (`[1]` for a single loss; a scalar is
    /// accepted too). Each micro-batch's `mean` then divides by it, so the summed micro-batch
    /// losses and gradients equal the whole batch's.
    pub fn with_normalizer(mut self, normalizer: &'a Tensor) -> Self {
        self.normalizer = Some(normalizer);
        self
    }

    /// The same input with another normaliser (`None`: the micro-batch's own count), sharing the
    /// cached logits: how a composite loss hands each term its own denominator.
    pub fn with_term_normalizer<'b>(&'b self, normalizer: Option<&'b Tensor>) -> LossInput<'b> {
        LossInput {
            source: self.source,
            logits: Rc::clone(&self.logits),
            targets: self.targets,
            normalizer,
            teacher_logits: self.teacher_logits,
        }
    }

    /// The denominator of `mean` in `kind`: the global normaliser (summed over its terms) when
    /// one was given, else `count`, this micro-batch's own.
    ///
    /// # Errors
    /// libtorch errors.
    pub fn mean_denominator(&self, count: &Tensor, kind: Kind) -> Result<Tensor, LossError> {
        Ok(match self.normalizer {
            Some(n) => n.f_sum(Kind::Double)?.f_to_kind(kind)?,
            None => count.f_to_kind(kind)?,
        })
    }

    /// Sets teacher logits `[..., vocab]` for distillation.
    pub fn with_teacher_logits(mut self, teacher_logits: &'a Tensor) -> Self {
        self.teacher_logits = Some(teacher_logits);
        self
    }

    /// The hidden states and head `(hidden [.., H], weight [V, H], bias [V])`, when the input was
    /// given that way.
    pub fn hidden(&self) -> Option<(&'a Tensor, &'a Tensor, Option<&'a Tensor>)> {
        match self.source {
            Source::Hidden {
                hidden,
                weight,
                bias,
            } => Some((hidden, weight, bias)),
            _ => None,
        }
    }

    /// Logits `[..., vocab]`, computed from the hidden states on first use and cached. From
    /// probabilities or log-probabilities, their logarithm stands for logits (same softmax).
    pub fn logits(&self) -> Result<&Tensor, LossError> {
        if let Source::Logits(l) = self.source {
            return Ok(l);
        }
        if let Some(l) = self.logits.get() {
            return Ok(l);
        }
        let l = match self.source {
            Source::Hidden {
                hidden,
                weight,
                bias,
            } => {
                crate::common::check_head(hidden, weight, bias)?;
                hidden.f_linear(weight, bias)?
            }
            Source::Probs(p) => p.f_log()?,
            Source::LogProbs(lp) => lp.shallow_clone(),
            Source::Logits(_) => unreachable!("returned above"),
        };
        Ok(self.logits.get_or_init(|| l))
    }

    /// Probabilities `[..., vocab]`: as given, or `softmax(logits)`.
    pub fn probs(&self) -> Result<Tensor, LossError> {
        match self.source {
            Source::Probs(p) => Ok(p.shallow_clone()),
            _ => Ok(self.logits()?.f_softmax(-1, None::<Kind>)?),
        }
    }

    /// Log-probabilities `[..., vocab]`: as given, or `log_softmax(logits)`.
    pub fn log_probs(&self) -> Result<Tensor, LossError> {
        match self.source {
            Source::LogProbs(lp) => Ok(lp.shallow_clone()),
            _ => Ok(self.logits()?.f_log_softmax(-1, None::<Kind>)?),
        }
    }

    /// Size of the vocabulary dimension.
    pub fn vocab_size(&self) -> i64 {
        let t = match self.source {
            Source::Hidden { weight, .. } => return weight.size()[0],
            Source::Logits(t) | Source::Probs(t) | Source::LogProbs(t) => t,
        };
        t.size().last().copied().unwrap_or(0)
    }

    /// Shape of the predictions without the vocabulary dimension (`[batch, seq]`).
    pub fn positions_shape(&self) -> Vec<i64> {
        let t = match self.source {
            Source::Hidden { hidden, .. } => hidden,
            Source::Logits(t) | Source::Probs(t) | Source::LogProbs(t) => t,
        };
        let s = t.size();
        s[..s.len().saturating_sub(1)].to_vec()
    }

    /// Name of the prediction tensor, for error messages.
    pub(crate) fn source_name(&self) -> &'static str {
        match self.source {
            Source::Hidden { .. } => "hidden",
            Source::Logits(_) => "logits",
            Source::Probs(_) => "probs",
            Source::LogProbs(_) => "log_probs",
        }
    }
}
