//! Shared checks and reductions.
use tch::{Kind, Tensor};

use crate::{LossError, LossInput, Reduction};

/// The dtype a loss computes in: float32 for half-precision predictions, else unchanged.
pub(crate) fn compute_kind(kind: Kind) -> Kind {
    match kind {
        Kind::Half | Kind::BFloat16 => Kind::Float,
        k => k,
    }
}

/// Flattens `[..., C]` predictions to `[N, C]` in the compute dtype.
pub(crate) fn flat2(t: &Tensor) -> Result<Tensor, LossError> {
    let c = *t.size().last().unwrap_or(&0);
    let t = t.f_reshape([-1, c])?;
    let k = compute_kind(t.kind());
    Ok(if k != t.kind() { t.f_to_kind(k)? } else { t })
}

/// Checks that int64 `targets` fit predictions of `input` and are in range; returns them flat
/// `[N]`.
///
/// On the CPU the range check reads two numbers back; on an accelerator it is left to libtorch's
/// device-side assertion so that no step waits for the host.
pub(crate) fn class_targets(input: &LossInput, ignore_index: i64) -> Result<Tensor, LossError> {
    let targets = input.targets;
    if targets.kind() != Kind::Int64 {
        return Err(LossError::BadKind {
            tensor: "targets",
            actual: format!("{:?}", targets.kind()),
            expected: "int64 class indices",
        });
    }
    let positions = input.positions_shape();
    if targets.size() != positions {
        let mut full = positions.clone();
        full.push(input.vocab_size());
        return Err(LossError::ShapeMismatch {
            a: input.source_name(),
            a_shape: full,
            b: "targets",
            b_shape: targets.size(),
            expected:
                "targets must have the predictions' shape without the last (vocabulary) dimension"
                    .into(),
        });
    }
    let flat = targets.f_reshape([-1])?;
    if flat.device() == tch::Device::Cpu && flat.numel() > 0 {
        let v = input.vocab_size();
        let bad = flat
            .f_ne(ignore_index)?
            .f_logical_and(&flat.f_lt(0)?.f_logical_or(&flat.f_ge(v)?)?)?;
        let bad_pos = bad.f_nonzero()?;
        if bad_pos.size()[0] > 0 {
            let position = bad_pos.f_int64_value(&[0, 0])?;
            return Err(LossError::TargetOutOfRange {
                index: flat.f_int64_value(&[position])?,
                position,
                vocab_size: v,
                ignore_index,
            });
        }
    }
    Ok(flat)
}

/// `where(d > 0, d, 1)`: a denominator that turns an all-ignored batch's 0/0 into 0/1 = 0 (with
/// zero gradient, since the numerator has none) without reading the count on the host.
pub(crate) fn safe_denominator(d: &Tensor) -> Result<Tensor, LossError> {
    Ok(d.f_clamp_min(f64::MIN_POSITIVE)?
        .f_where_self(&d.f_gt(0)?, &d.f_ones_like()?)?)
}

/// Reduces per-position losses `per [N]` (zero at ignored positions) whose denominator is `count`.
/// `shape` restores the targets' shape for `none`. The global normaliser, when given, replaces
/// `count` for `mean`.
pub(crate) fn reduce(
    per: Tensor,
    count: &Tensor,
    reduction: Reduction,
    input: &LossInput,
    shape: &[i64],
) -> Result<Tensor, LossError> {
    Ok(match reduction {
        Reduction::None => per.f_reshape(shape)?,
        Reduction::Sum => per.f_sum(per.kind())?,
        Reduction::Mean => reduce_sum_mean(per.f_sum(per.kind())?, count, input)?,
    })
}

/// `sum / denominator` for `mean`, with the global normaliser when given.
pub(crate) fn reduce_sum_mean(
    sum: Tensor,
    count: &Tensor,
    input: &LossInput,
) -> Result<Tensor, LossError> {
    let d = input.mean_denominator(count, sum.kind())?;
    Ok(sum.f_div(&safe_denominator(&d)?)?)
}

pub(crate) fn check_probability(
    loss: &'static str,
    option: &'static str,
    v: f64,
    upper_inclusive: bool,
) -> Result<(), LossError> {
    let ok = v >= 0.0 && (v < 1.0 || (upper_inclusive && v <= 1.0));
    if !ok {
        return Err(LossError::InvalidOption {
            loss,
            option,
            value: v.to_string(),
            expected: if upper_inclusive {
                "a value in [0, 1]"
            } else {
                "a value in [0, 1)"
            },
        });
    }
    Ok(())
}

/// Rows of `logits [N, C]` at ignored positions (`mask [N]` false) replaced by zeros, so that
/// whatever they hold (`-inf` padding rows, huge values) cannot turn into NaN values or gradients
/// of a loss that multiplies them by zero afterwards. Gradients of the kept rows pass unchanged;
/// the ignored rows receive exactly zero.
pub(crate) fn zero_ignored_rows(logits: &Tensor, mask: &Tensor) -> Result<Tensor, LossError> {
    let zeros = logits.f_zeros_like()?;
    Ok(logits.f_where_self(&mask.f_unsqueeze(1)?, &zeros)?)
}

/// The smallest `1 - p` that `-log(1 - p)` sees in the unlikelihood-style losses: the penalty is
/// at most `-log(1e-5) ≈ 11.5` per token and its gradient is cut above `p = 1 - 1e-5` (as in
/// Welleck et al.'s reference implementation, `clamp(1 - p, min=1e-5)`).
pub(crate) const ONE_MINUS_P_FLOOR: f64 = 1e-5;

/// `-log(max(1 - p, ONE_MINUS_P_FLOOR))`, accurate for small `p` (`log1p`).
pub(crate) fn neg_log_one_minus(p: &Tensor) -> Result<Tensor, LossError> {
    Ok(p.f_clamp_max(1.0 - ONE_MINUS_P_FLOOR)?
        .f_neg()?
        .f_log1p()?
        .f_neg()?)
}

/// Checks that a coefficient option is finite (and non-negative when `non_negative`).
pub(crate) fn check_finite(
    loss: &'static str,
    option: &'static str,
    v: f64,
    non_negative: bool,
) -> Result<(), LossError> {
    if !v.is_finite() || (non_negative && v < 0.0) {
        return Err(LossError::InvalidOption {
            loss,
            option,
            value: v.to_string(),
            expected: if non_negative {
                "a finite value >= 0"
            } else {
                "a finite value"
            },
        });
    }
    Ok(())
}

/// Checks an output head against the hidden states: `hidden [..., H]`, `weight [vocab, H]`,
/// `bias [vocab]`; the error names both shapes.
pub(crate) fn check_head(
    hidden: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<(), LossError> {
    let (hs, ws) = (hidden.size(), weight.size());
    if ws.len() != 2 || hs.is_empty() || hs.last() != ws.last() {
        return Err(LossError::ShapeMismatch {
            a: "hidden",
            a_shape: hs,
            b: "weight",
            b_shape: ws,
            expected: "hidden [..., H] and weight [vocab, H]".into(),
        });
    }
    if let Some(b) = bias {
        if b.size() != [ws[0]] {
            return Err(LossError::ShapeMismatch {
                a: "bias",
                a_shape: b.size(),
                b: "weight",
                b_shape: ws,
                expected: "bias [vocab] for weight [vocab, H]".into(),
            });
        }
    }
    Ok(())
}
