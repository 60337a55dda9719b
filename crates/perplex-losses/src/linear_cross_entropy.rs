//! Output projection fused with softmax cross-entropy, computed in chunks of tokens.
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::common::{
    check_finite, check_head, check_probability, class_targets, compute_kind, flat2, reduce,
    safe_denominator, zero_ignored_rows,
};
use crate::softmax_cross_entropy::counted;
use crate::{Loss, LossError, LossInfo, LossInput, LossOutput, Reduction};

/// Softmax cross-entropy of `logits = hidden · weightᵀ + bias` computed `chunk_size` tokens at a
/// time, so that the `[tokens, vocab]` logits are never held at once
/// (`type = "linear_cross_entropy"`; the idea of Liger Kernel's fused linear cross-entropy and
/// Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary Language Models").
///
/// The value is that of `softmax_cross_entropy` (with `label_smoothing`) on the full logits,
/// plus PaLM's z-loss `z_loss · logsumexp(logits)²` per counted token when `z_loss > 0`: with
/// `ε = label_smoothing`, `V` classes, `lp = log_softmax(z_i)`,
///
/// `ℓ_i = (1 - ε) · (-lp_{y_i}) + (ε / V) · Σ_c (-lp_c) + z_loss · logsumexp(z_i)²`
///
/// and `mean` divides by the number of counted tokens (or the global normaliser).
///
/// # Gradients
/// libtorch's autograd cannot be extended from Rust, so the exact gradients are computed in the
/// forward pass, chunk by chunk and without autograd: `dz = (softmax(z) · (1 + 2 · z_loss ·
/// lse) - (1 - ε) · onehot(y) - ε / V) · s` with `s` the mean's `1 / denominator` (1 for `sum`
/// and `none`), zero at ignored positions; then `d bias = Σ dz`, `d weight = Σ dzᵀ · h`,
/// `d hidden = dz · weight`. The returned loss is a surrogate `value + S - detach(S)` with
/// `S = Σ hidden ⊙ d hidden + Σ weight ⊙ d weight + Σ bias ⊙ d bias` over the inputs that require
/// gradients: its value is exactly the loss and `backward` (with any upstream scalar factor, e.g.
/// the weight of a `weighted_sum` term) deposits exactly the gradients above. Only first-order
/// gradients are supported (no double backward). Non-finite bias entries (`-inf` to mask a
/// vocabulary entry) receive zero gradient.
///
/// With `reduction = "none"` the per-position result is `value_t + (S_t - detach(S_t))` with
/// `S_t = hidden_t · d hidden_t + (Σ weight ⊙ d weight + Σ bias ⊙ d bias) / positions`: the
/// gradient w.r.t. `hidden` is exact for any upstream gradient, the one w.r.t. `weight` and
/// `bias` only for an upstream gradient that is the same at every position (`.sum()`,
/// `.mean()`, times any scalar). Per-token weighting of a `none` output must be done in the
/// targets (`ignore_index`) or with the unfused `softmax_cross_entropy`.
///
/// Matmuls run in the dtype of `hidden`/`weight` (bf16 stays bf16 on tensor cores); the
/// softmax, the loss and the gradient accumulators are float32 for bf16/f16 inputs. Extra memory:
/// one `[chunk_size, vocab]` block (the chunk's logits, turned into their gradient in place) plus
/// gradients the size of `hidden`, `weight` and `bias`.
///
/// When the input was given as logits ([`LossInput::from_logits`]), the loss is computed unfused
/// on them with ordinary autograd (same value).
///
/// # Shapes
/// - hidden: `[batch, seq, H]` or `[N, H]`; weight: `[vocab, H]`; bias: `[vocab]` (optional)
/// - targets: int64 `[batch, seq]` / `[N]`
/// - output: scalar (`mean`, `sum`) or the targets' shape (`none`); float32 for bf16/f16 inputs
///
/// # Errors
/// Shape mismatches between hidden, weight, bias and targets (naming both shapes), out-of-range
/// targets, `label_smoothing` outside [0, 1], a negative or non-finite `z_loss`, `chunk_size < 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinearCrossEntropy {
    /// Target value that is skipped. Default -100.
    pub ignore_index: i64,
    /// ε in [0, 1]: mass moved from the target to a uniform distribution. Default 0.
    pub label_smoothing: f64,
    /// `mean`, `sum` or `none`. Default `mean`.
    pub reduction: Reduction,
    /// Coefficient of the z-loss `logsumexp(logits)²` added per counted token. Default 0 (off).
    pub z_loss: f64,
    /// Most tokens per chunk: the largest logits block held at once is `[chunk_size, vocab]`.
    /// The N tokens are split into `ceil(N / chunk_size)` chunks of equal size (±1), so that no
    /// small remainder chunk runs its three matmuls at a fraction of the GEMM speed (N = 2240:
    /// 2 × 1120, not 2048 + 192). Default 2048 (at vocabulary 50k and 16k tokens: 8% of the
    /// unfused loss's extra peak memory, and faster than 4096 on CPU; `cargo xtask bench losses`).
    pub chunk_size: i64,
}

impl Default for LinearCrossEntropy {
    fn default() -> Self {
        Self {
            ignore_index: -100,
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
            z_loss: 0.0,
            chunk_size: 2048,
        }
    }
}

inventory::submit! {
    LossInfo {
        name: "linear_cross_entropy",
        description: "output projection fused with softmax cross-entropy (+ z-loss) in token chunks, never holding the full logits",
    }
}

/// Lengths of the `ceil(n / chunk_size)` chunks of `n` tokens, equal up to one (the longer ones
/// first), each at most `chunk_size`; none for `n = 0`.
fn chunk_lengths(n: i64, chunk_size: i64) -> impl Iterator<Item = i64> {
    let chunks = (n + chunk_size - 1) / chunk_size;
    let (base, extra) = if chunks > 0 {
        (n / chunks, n % chunks)
    } else {
        (0, 0)
    };
    (0..chunks).map(move |i| base + i64::from(i < extra))
}

/// What the chunked pass produces (no autograd history).
struct Fused {
    /// Per-position losses `[N]` (for `none`) or their sum (scalar).
    value: Tensor,
    /// Summed z-loss part, for the metric.
    z_sum: Tensor,
    grad_hidden: Option<Tensor>,
    grad_weight: Option<Tensor>,
    grad_bias: Option<Tensor>,
}

impl LinearCrossEntropy {
    fn check_options(&self) -> Result<(), LossError> {
        check_probability(
            "linear_cross_entropy",
            "label_smoothing",
            self.label_smoothing,
            true,
        )?;
        check_finite("linear_cross_entropy", "z_loss", self.z_loss, true)?;
        if self.chunk_size < 1 {
            return Err(LossError::InvalidOption {
                loss: "linear_cross_entropy",
                option: "chunk_size",
                value: self.chunk_size.to_string(),
                expected: "a number of tokens >= 1",
            });
        }
        Ok(())
    }

    /// The unfused computation on given logits, with autograd.
    fn unfused(&self, input: &LossInput) -> Result<LossOutput, LossError> {
        let logits = flat2(input.logits()?)?;
        let kind = logits.kind();
        let flat = class_targets(input, self.ignore_index)?;
        let (mask, count) = counted(&flat, self.ignore_index, None, kind)?;
        // Ignored rows zeroed: whatever they hold (`-inf` padding) gets no NaN gradient.
        let logits = zero_ignored_rows(&logits, &mask)?;
        let mut per = logits.f_cross_entropy_loss(
            &flat,
            None::<Tensor>,
            tch::Reduction::None,
            self.ignore_index,
            self.label_smoothing,
        )?;
        let mut metrics = Vec::new();
        if self.z_loss > 0.0 {
            let lse = logits.f_logsumexp([-1], false)?;
            let z = lse
                .f_square()?
                .f_mul_scalar(self.z_loss)?
                .f_mul(&mask.f_to_kind(kind)?)?;
            if self.reduction != Reduction::None {
                let zs = z.f_sum(kind)?.f_detach()?;
                let zs = match self.reduction {
                    Reduction::Mean => crate::common::reduce_sum_mean(zs, &count, input)?,
                    _ => zs,
                };
                metrics.push(("z_loss".to_string(), zs));
            }
            per = per.f_add(&z)?;
        }
        let loss = reduce(per, &count, self.reduction, input, &input.targets.size())?;
        Ok(LossOutput {
            loss,
            count,
            metrics,
        })
    }

    /// The chunked forward pass with hand-written gradients. `scale` multiplies every token's
    /// gradient (`1 / denominator` for `mean`).
    #[allow(clippy::too_many_arguments)]
    fn chunked(
        &self,
        h: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        flat: &Tensor,
        mask: &Tensor,
        scale: &Tensor,
        kind: Kind,
        need: (bool, bool, bool),
    ) -> Result<Fused, LossError> {
        let _guard = tch::no_grad_guard();
        let h = h.f_detach()?;
        let weight = weight.f_detach()?;
        let bias = bias.map(|b| b.f_detach()).transpose()?;
        let (n, hdim) = (h.size()[0], h.size()[1]);
        let vocab = weight.size()[0];
        let mm_kind = h.kind();
        let dev = h.device();
        let eps = self.label_smoothing;
        let zc = self.z_loss;
        let keep_per = self.reduction == Reduction::None;
        let mut grad_weight = if need.1 {
            Some(Tensor::f_zeros([vocab, hdim], (kind, dev))?)
        } else {
            None
        };
        let mut grad_bias = if need.2 {
            Some(Tensor::f_zeros([vocab], (kind, dev))?)
        } else {
            None
        };
        let grad_hidden = if need.0 {
            Some(Tensor::f_zeros([n, hdim], (kind, dev))?)
        } else {
            None
        };
        let mut values = Vec::new();
        let mut total = Tensor::f_scalar_tensor(0.0, (kind, dev))?;
        let mut z_sum = Tensor::f_scalar_tensor(0.0, (kind, dev))?;
        // The gradient accumulators are `kind`; matmuls write into them directly when the
        // matmul dtype is the same.
        let same_kind = kind == mm_kind;
        let mut start = 0;
        for len in chunk_lengths(n, self.chunk_size) {
            let hc = h.f_narrow(0, start, len)?;
            let yc = flat.f_narrow(0, start, len)?;
            let mc = mask.f_narrow(0, start, len)?;
            let safe = yc.f_masked_fill(&mc.f_logical_not()?, 0)?.f_unsqueeze(1)?;
            // One `[len, vocab]` block, transformed in place: logits -> exp(logits - max) ->
            // softmax -> dz. No second block of that size is allocated (`logsumexp` and
            // out-of-place arithmetic would each add one), which halves the peak and the time
            // spent faulting in fresh pages.
            let mut buf = hc.f_linear(&weight, bias.as_ref())?.f_to_kind(kind)?;
            let z_target = buf.f_gather(1, &safe, false)?.f_squeeze_dim(1)?;
            // logsumexp as libtorch computes it (an infinite max is replaced by 0).
            let max = buf.f_amax([-1], true)?;
            let max = max.f_masked_fill(&max.f_isinf()?, 0.0)?;
            let _ = buf.f_sub_(&max)?;
            // Σ_c (z_c - max) for the smoothing term, read from the shifted block before `exp`:
            // `Σ_c -lp_c = V · log Σ_c exp(z_c - max) - Σ_c (z_c - max)`, a sum of two
            // non-negative terms (no cancellation, so no float64 copy of the block is needed).
            let shifted_total = if eps > 0.0 {
                Some(buf.f_sum_dim_intlist(-1, false, kind)?)
            } else {
                None
            };
            let _ = buf.f_exp_()?;
            let sum_exp = buf.f_sum_dim_intlist(-1, true, kind)?;
            let log_sum_exp = sum_exp.f_log()?;
            let lse = log_sum_exp.f_add(&max)?.f_squeeze_dim(1)?;
            // Value.
            let nll = lse.f_sub(&z_target)?;
            let mut val = if eps < 1.0 {
                nll.f_mul_scalar(1.0 - eps)?
            } else {
                nll.f_zeros_like()?
            };
            if let Some(shifted) = &shifted_total {
                let smooth = log_sum_exp
                    .f_squeeze_dim(1)?
                    .f_mul_scalar(vocab as f64)?
                    .f_sub(shifted)?;
                val = val.f_add(&smooth.f_mul_scalar(eps / vocab as f64)?)?;
            }
            if zc > 0.0 {
                let z = lse.f_square()?.f_mul_scalar(zc)?;
                let z = z.f_where_self(&mc, &z.f_zeros_like()?)?;
                z_sum = z_sum.f_add(&z.f_sum(kind)?)?;
                val = val.f_add(&z)?;
            }
            // `where`, not a product: an ignored row may hold an infinite value.
            let val = val.f_where_self(&mc, &val.f_zeros_like()?)?;
            if keep_per {
                values.push(val);
            } else {
                total = total.f_add(&val.f_sum(kind)?)?;
            }
            // Gradient w.r.t. the chunk's logits, in the same block.
            if need.0 || need.1 || need.2 {
                let _ = buf.f_div_(&sum_exp)?; // softmax
                if zc > 0.0 {
                    let factor = lse.f_mul_scalar(2.0 * zc)?.f_add_scalar(1.0)?;
                    let _ = buf.f_mul_(&factor.f_unsqueeze(1)?)?;
                }
                if eps > 0.0 {
                    let _ = buf.f_sub_scalar_(eps / vocab as f64)?;
                }
                let hot = Tensor::f_full([len, 1], -(1.0 - eps), (kind, dev))?;
                let _ = buf.f_scatter_add_(1, &safe, &hot)?;
                let row = mc.f_to_kind(kind)?.f_mul(scale)?;
                let _ = buf.f_mul_(&row.f_unsqueeze(1)?)?;
                let dz = buf;
                if let Some(gb) = grad_bias.as_mut() {
                    let _ = gb.f_add_(&dz.f_sum_dim_intlist(0, false, kind)?)?;
                }
                let dzm = dz.f_to_kind(mm_kind)?;
                // Accumulated in place where the dtypes allow (no `[vocab, H]` temporary).
                if let Some(gw) = grad_weight.as_mut() {
                    if same_kind {
                        let _ = gw.f_addmm_(&dzm.f_tr()?, &hc)?;
                    } else {
                        let _ = gw.f_add_(&dzm.f_tr()?.f_mm(&hc)?.f_to_kind(kind)?)?;
                    }
                }
                if let Some(gh) = grad_hidden.as_ref() {
                    let mut rows = gh.f_narrow(0, start, len)?;
                    if same_kind {
                        let _ = dzm.f_mm_out(&rows, &weight)?;
                    } else {
                        rows.f_copy_(&dzm.f_mm(&weight)?.f_to_kind(kind)?)?;
                    }
                }
            }
            start += len;
        }
        let value = if keep_per {
            if values.is_empty() {
                Tensor::f_zeros([0], (kind, dev))?
            } else {
                Tensor::f_cat(&values, 0)?
            }
        } else {
            total
        };
        Ok(Fused {
            value,
            z_sum,
            grad_hidden,
            grad_weight,
            grad_bias,
        })
    }
}

/// `Σ a ⊙ g` (in `g`'s dtype), the surrogate term whose gradient w.r.t. `a` is `g`.
fn dot(a: &Tensor, g: &Tensor) -> Result<Tensor, LossError> {
    if a.kind() == g.kind() {
        // A reduction without a temporary the size of `a`.
        Ok(a.f_reshape([-1])?.f_dot(&g.f_reshape([-1])?)?)
    } else {
        Ok(a.f_mul(g)?.f_sum(g.kind())?)
    }
}

/// `x - detach(x)`: zero, with `x`'s gradient.
fn zero_with_grad(x: Tensor) -> Result<Tensor, LossError> {
    let d = x.f_detach()?;
    Ok(x.f_sub(&d)?)
}

#[typetag::serde(name = "linear_cross_entropy")]
impl Loss for LinearCrossEntropy {
    fn forward(&self, input: &LossInput) -> Result<LossOutput, LossError> {
        self.check_options()?;
        let Some((hidden, weight, bias)) = input.hidden() else {
            return self.unfused(input);
        };
        check_head(hidden, weight, bias)?;
        let hdim = weight.size()[1];
        let kind = compute_kind(hidden.kind());
        let flat = class_targets(input, self.ignore_index)?;
        let (mask, count) = counted(&flat, self.ignore_index, None, kind)?;
        let h = hidden.f_reshape([-1, hdim])?;
        let den = match self.reduction {
            Reduction::Mean => {
                let d = input.mean_denominator(&count, kind)?;
                safe_denominator(&d)?
            }
            Reduction::Sum | Reduction::None => Tensor::f_scalar_tensor(1.0, (kind, h.device()))?,
        };
        let scale = den.f_reciprocal()?;
        let need = (
            hidden.requires_grad(),
            weight.requires_grad(),
            bias.is_some_and(|b| b.requires_grad()),
        );
        let fused = self.chunked(&h, weight, bias, &flat, &mask, &scale, kind, need)?;

        // Surrogate terms for weight and bias (shared by all positions).
        let mut params: Option<Tensor> = None;
        if let Some(gw) = &fused.grad_weight {
            params = Some(dot(weight, gw)?);
        }
        if let (Some(b), Some(gb)) = (bias, &fused.grad_bias) {
            // A `-inf` bias entry (a masked vocabulary entry) would make `b · 0` NaN: such entries
            // get no gradient (their exact gradient is 0 unless label smoothing makes the loss
            // infinite anyway).
            let finite = b.f_isfinite()?;
            let t = dot(&b.f_where_self(&finite, &b.f_zeros_like()?)?, gb)?;
            params = Some(match params {
                Some(p) => p.f_add(&t)?,
                None => t,
            });
        }
        let mut metrics = Vec::new();
        let loss = match self.reduction {
            Reduction::None => {
                let shape = input.targets.size();
                let mut loss = fused.value.f_reshape(&shape[..])?;
                if let Some(gh) = &fused.grad_hidden {
                    let per = h.f_mul(gh)?.f_sum_dim_intlist(-1, false, kind)?;
                    loss = loss.f_add(&zero_with_grad(per)?.f_reshape(&shape[..])?)?;
                }
                let positions = h.size()[0];
                if let (Some(p), true) = (params, positions > 0) {
                    let share = zero_with_grad(p)?.f_div_scalar(positions as f64)?;
                    loss = loss.f_add(&share)?;
                }
                loss
            }
            Reduction::Sum | Reduction::Mean => {
                let value = fused.value.f_div(&den)?;
                if self.z_loss > 0.0 {
                    metrics.push(("z_loss".to_string(), fused.z_sum.f_div(&den)?));
                }
                let mut s = params;
                if let Some(gh) = &fused.grad_hidden {
                    let t = dot(&h, gh)?;
                    s = Some(match s {
                        Some(p) => p.f_add(&t)?,
                        None => t,
                    });
                }
                match s {
                    Some(s) => value.f_add(&zero_with_grad(s)?)?,
                    None => value,
                }
            }
        };
        Ok(LossOutput {
            loss,
            count,
            metrics,
        })
    }

    fn ignore_index(&self) -> i64 {
        self.ignore_index
    }

    fn normalizer(&self, targets: &tch::Tensor) -> Result<tch::Tensor, LossError> {
        crate::counted_normalizer(targets, self.ignore_index, None)
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_lengths;

    #[test]
    fn chunks_are_equal_up_to_one_and_never_above_chunk_size() {
        let lens = |n, c| chunk_lengths(n, c).collect::<Vec<_>>();
        assert_eq!(lens(2240, 2048), [1120, 1120]);
        assert_eq!(lens(5, 2), [2, 2, 1]);
        assert_eq!(lens(4096, 2048), [2048, 2048]);
        assert_eq!(lens(7, 100), [7]);
        assert!(lens(0, 3).is_empty());
        for n in 0..200 {
            for c in 1..40 {
                let l = lens(n, c);
                assert_eq!(l.iter().sum::<i64>(), n);
                assert_eq!(l.len() as i64, (n + c - 1) / c);
                assert!(l.iter().all(|&x| x >= 1 && x <= c));
                assert!(l.iter().max().unwrap_or(&0) - l.iter().min().unwrap_or(&0) <= 1);
            }
        }
    }
}
