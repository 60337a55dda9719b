//! Rotary position embeddings (RoPE) on queries and keys.
//!
//! Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding" (2021), in the
//! half-split layout of GPT-NeoX and Hugging Face's LLaMA (`rotate_half`): channel `i` of the
//! first half pairs with channel `i + head_dim / 2`, and the pair at position `p` is turned by
//! the angle `p · 10000^(-2i / head_dim)`. The score `q_m · k_n` then depends on the positions
//! only through `m - n`.
use tch::{Device, Kind, Tensor};

/// The base of the angle frequencies (RoFormer's 10000).
const BASE: f64 = 10_000.0;

/// `cos` and `sin` of the angles of positions `start .. start + len`, `[len, head_dim]` of
/// `kind` (the parameters' dtype: float32, or float64 for a float64 model, whose tables must
/// not carry float32 rounding), each frequency written twice, once per half.
///
/// The angles of a position are computed the same way whatever `start` is, so a cached decoding
/// step gets exactly the table row of the full forward.
pub(crate) fn tables(
    start: i64,
    len: i64,
    head_dim: i64,
    kind: Kind,
    device: Device,
) -> Result<(Tensor, Tensor), tch::TchError> {
    let options = (kind, device);
    let inv_freq = Tensor::f_arange_start_step(0, head_dim, 2, options)?
        .f_div_scalar(head_dim as f64)?
        .f_mul_scalar(-BASE.ln())?
        .f_exp()?;
    let positions = Tensor::f_arange_start(start, start + len, options)?;
    let angles = positions.f_outer(&inv_freq)?;
    let angles = Tensor::f_cat(&[&angles, &angles], -1)?;
    Ok((angles.f_cos()?, angles.f_sin()?))
}

/// Rotates `x` (`[batch, heads, len, head_dim]`) by the tables of [`tables`] (`[len, head_dim]`):
/// `x · cos + rotate_half(x) · sin`, in `x`'s dtype.
pub(crate) fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, tch::TchError> {
    apply(x, &cos.f_to_kind(x.kind())?, &sin.f_to_kind(x.kind())?)
}

/// `x · cos + rotate_half(x) · sin` with the tables as given (transformers'
/// `apply_rotary_pos_emb`: a Llama's float32 tables promote bf16 queries and keys to float32
/// under autocast, as there).
pub(crate) fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, tch::TchError> {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let halves = x.f_split(half, -1)?;
    let rotated = Tensor::f_cat(&[&halves[1].f_neg()?, &halves[0]], -1)?;
    x.f_mul(cos)?.f_add(&rotated.f_mul(sin)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotated_at(x: &Tensor, position: i64) -> Tensor {
        let (cos, sin) = tables(position, 1, 8, Kind::Float, Device::Cpu).unwrap();
        rotate(&x.view([1, 1, 1, 8]), &cos, &sin).unwrap().view([8])
    }

    #[test]
    fn the_score_depends_only_on_the_distance_between_positions() {
        tch::manual_seed(0);
        let q = Tensor::randn([8], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([8], (Kind::Float, Device::Cpu));
        let score = |m, n| rotated_at(&q, m).dot(&rotated_at(&k, n)).double_value(&[]);
        for shift in [1, 5, 40] {
            assert!((score(7, 3) - score(7 + shift, 3 + shift)).abs() < 1e-5);
        }
        assert!(
            (score(7, 3) - score(7, 4)).abs() > 1e-4,
            "the distance must matter"
        );
    }

    #[test]
    fn position_zero_is_the_identity_and_norms_are_kept() {
        let x = Tensor::randn([8], (Kind::Float, Device::Cpu));
        assert!(rotated_at(&x, 0).allclose(&x, 0.0, 0.0, false));
        let norm = |t: &Tensor| t.norm().double_value(&[]);
        assert!((norm(&rotated_at(&x, 13)) - norm(&x)).abs() < 1e-5);
    }

    /// A float64 model's tables are computed in float64: at position 4000 they agree with
    /// Rust's `f64` `cos`/`sin` to 1e-10, where float32 tables are off by more than 1e-5.
    #[test]
    fn float64_tables_carry_no_float32_rounding() {
        let (head_dim, position) = (8, 4000);
        let exact: Vec<f64> = (0..head_dim)
            .map(|i| {
                let freq = BASE.powf(-((2 * (i % (head_dim / 2))) as f64) / head_dim as f64);
                (position as f64 * freq).cos()
            })
            .collect();
        let error = |kind: Kind| {
            let (cos, _) = tables(position, 1, head_dim, kind, Device::Cpu).unwrap();
            assert_eq!(cos.kind(), kind);
            let got = Vec::<f64>::try_from(cos.to_kind(Kind::Double).view([-1])).unwrap();
            got.iter()
                .zip(&exact)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max)
        };
        assert!(error(Kind::Double) < 1e-10, "{}", error(Kind::Double));
        assert!(error(Kind::Float) > 1e-5, "{}", error(Kind::Float));
    }

    /// BB2-05 (rotary): decoding step `t` after a prompt of `n` gets the angles
    /// `(n + t) · freq`, the same table row as the full forward.
    #[test]
    fn a_table_row_does_not_depend_on_where_the_table_starts() {
        let (cos_all, sin_all) = tables(0, 10, 8, Kind::Float, Device::Cpu).unwrap();
        let (cos, sin) = tables(7, 1, 8, Kind::Float, Device::Cpu).unwrap();
        assert!(cos.equal(&cos_all.narrow(0, 7, 1)));
        assert!(sin.equal(&sin_all.narrow(0, 7, 1)));
    }
}
