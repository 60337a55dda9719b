//! Helpers shared by the integration tests.
#![allow(dead_code)]

use tch::{Device, Kind, Tensor};

/// Deterministic pseudo-random numbers (xorshift64* with Box-Muller), independent of libtorch's
/// global generator so that tests running in parallel do not disturb each other.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    pub fn below(&mut self, n: i64) -> i64 {
        (self.next_u64() % n as u64) as i64
    }

    /// Normal values `scale · N(0, 1)` of the given shape, float64.
    pub fn randn(&mut self, shape: &[i64], scale: f64) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| scale * self.normal()).collect();
        Tensor::from_slice(&v).reshape(shape)
    }

    /// Class ids in `[0, vocab)` of the given shape.
    pub fn targets(&mut self, shape: &[i64], vocab: i64) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<i64> = (0..n).map(|_| self.below(vocab)).collect();
        Tensor::from_slice(&v).reshape(shape)
    }
}

/// A float64 leaf that requires gradients.
pub fn leaf(t: &Tensor) -> Tensor {
    t.to_kind(Kind::Double).detach().set_requires_grad(true)
}

/// A leaf of the given kind that requires gradients.
pub fn leaf_kind(t: &Tensor, kind: Kind) -> Tensor {
    t.to_kind(kind).detach().set_requires_grad(true)
}

/// The gradient accumulated in a leaf, or zeros if none reached it.
pub fn grad_or_zeros(t: &Tensor) -> Tensor {
    let g = t.grad();
    if g.defined() {
        g
    } else {
        t.zeros_like()
    }
}

pub fn to_vec(t: &Tensor) -> Vec<f64> {
    let t = t
        .detach()
        .to_kind(Kind::Double)
        .to_device(Device::Cpu)
        .contiguous()
        .reshape([-1]);
    Vec::<f64>::try_from(&t).expect("tensor to Vec<f64>")
}

pub fn scalar(t: &Tensor) -> f64 {
    t.detach().to_kind(Kind::Double).double_value(&[])
}

/// Largest `|a - b|` over elements (NaN if any is NaN).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (to_vec(a), to_vec(b));
    assert_eq!(a.len(), b.len(), "element counts differ");
    a.iter()
        .zip(&b)
        .map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() })
        .fold(0.0, f64::max)
}

/// Asserts `|a - b| <= rtol · |b| + atol` elementwise (equal infinities pass).
#[track_caller]
pub fn assert_close(a: &Tensor, b: &Tensor, rtol: f64, atol: f64, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: shapes differ");
    let (va, vb) = (to_vec(a), to_vec(b));
    for (i, (x, y)) in va.iter().zip(&vb).enumerate() {
        let ok = x == y || (x - y).abs() <= rtol * y.abs() + atol;
        assert!(
            ok,
            "{what}: element {i}: {x} vs {y} (rtol {rtol}, atol {atol})"
        );
    }
}

/// Central finite differences of a scalar function of several float64 tensors, compared with
/// the gradients autograd gives (`loss.backward()` on leaves built from `inputs`).
///
/// `f` receives fresh tensors (leaves that require grad for the analytic pass, plain tensors for
/// the numerical one) and returns a scalar.
#[track_caller]
pub fn gradcheck(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor, what: &str) {
    let leaves: Vec<Tensor> = inputs.iter().map(leaf).collect();
    let loss = f(&leaves);
    assert_eq!(loss.dim(), 0, "{what}: gradcheck needs a scalar");
    loss.backward();
    let eps = 1e-6;
    for (k, x) in inputs.iter().enumerate() {
        let analytic = leaves[k].grad();
        let analytic = if analytic.defined() {
            to_vec(&analytic)
        } else {
            vec![0.0; x.numel()]
        };
        let base = to_vec(x);
        let shape = x.size();
        for i in 0..base.len() {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let mut args: Vec<Tensor> =
                    inputs.iter().map(|t| t.to_kind(Kind::Double)).collect();
                args[k] = Tensor::from_slice(&v).reshape(&shape[..]);
                scalar(&f(&args))
            };
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let a = analytic[i];
            let tol = 1e-6 * a.abs().max(numeric.abs()) + 1e-8;
            assert!(
                (a - numeric).abs() <= tol,
                "{what}: input {k} element {i}: autograd {a} vs finite difference {numeric}"
            );
        }
    }
}
