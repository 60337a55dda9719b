//! Model FLOP utilisation: achieved FLOP/s (the model's FLOPs per token × tokens/s) against a
//! matmul ceiling measured on the run's device, as `xtask bench train` reports it.
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::TrainerError;

/// The best GFLOP/s of a `[1024, 1024] × [1024, 1024]` product of `kind` (float32; float64 for
/// a `precision = "f64"` run, bfloat16 for a `"bf16"` one: the dtype its matmuls run in) (`mm_out` into a preallocated output,
/// so no allocation is timed) on `device`, over 5 timed repetitions after 2 warm-up ones (about
/// 0.1 s on a 2-core CPU in float32). A bound for dense work of that dtype at the current
/// thread count, not the vendor's peak.
///
/// # Errors
/// libtorch errors.
pub fn matmul_ceiling_gflops(device: Device, kind: Kind) -> Result<f64, TrainerError> {
    let n = 1024i64;
    let opts = (kind, device);
    let (a, b) = (
        Tensor::f_randn([n, n], opts)?,
        Tensor::f_randn([n, n], opts)?,
    );
    let out = Tensor::f_empty([n, n], opts)?;
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut best = f64::INFINITY;
    for rep in 0..7 {
        sync();
        let t = Instant::now();
        let _ = a.f_mm_out(&out, &b)?;
        sync();
        if rep >= 2 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * (n * n * n) as f64 / best.max(1e-12) / 1e9)
}

/// What the end-of-run summary reports about speed: `null`s when the model gives no FLOP count.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Utilisation {
    /// The model's training FLOPs per token.
    pub model_flops_per_token: Option<f64>,
    /// `model_flops_per_token × tokens/s`, in GFLOP/s.
    pub achieved_gflop_per_s: Option<f64>,
    /// [`matmul_ceiling_gflops`] measured at the end of the run.
    pub matmul_ceiling_gflop_per_s: Option<f64>,
    /// `achieved / ceiling`.
    pub mfu: Option<f64>,
}

impl Utilisation {
    /// From the model's FLOPs per token and a throughput in tokens/s (measures the ceiling in
    /// `kind`, the dtype of the model's matmuls: `Precision::matmul_kind`).
    pub fn measure(
        flops_per_token: Option<f64>,
        tokens_per_sec: f64,
        device: Device,
        kind: Kind,
    ) -> Self {
        let achieved = flops_per_token.map(|f| f * tokens_per_sec / 1e9);
        let ceiling = achieved.and_then(|_| matmul_ceiling_gflops(device, kind).ok());
        Self {
            model_flops_per_token: flops_per_token,
            achieved_gflop_per_s: achieved,
            matmul_ceiling_gflop_per_s: ceiling,
            mfu: achieved.zip(ceiling).map(|(a, c)| a / c),
        }
    }
}
