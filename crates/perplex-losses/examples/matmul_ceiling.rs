//! The matmul ceiling of `cargo xtask bench train`: the GFLOP/s libtorch reaches on the seed
//! model's largest product, the output projection `[B*T, H] x [H, V]`, at a given thread count,
//! in float32 or bfloat16 (`--dtype`: the dtype a `precision = "bf16"` run's matmuls take under
//! autocast); prints one JSON line.
//!
//! Two layouts are timed: `x.mm(w)` with `w [H, V]` contiguous, and `x.matmul(weightᵀ)` with
//! `weight [V, H]` as `nn.Linear` stores it; the ceiling is the faster one's median. Both write
//! into one preallocated output (`mm_out`): the ceiling is the kernel's, not the allocator's (a
//! fresh 90 MB output is a fresh `mmap` whose page faults cost about a quarter of the product's
//! time on a 2-core VM).
//!
//! ```text
//! cargo run --release -p perplex-losses --example matmul_ceiling -- \
//!     [--m 2240] [--k 512] [--n 10001] [--threads N] [--device cpu|cuda] [--seconds 1.0]
//!     [--dtype f32|bf16]
//! ```
use std::time::Instant;

use tch::{Device, Kind, Tensor};

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median seconds of `f` over repetitions filling about `budget_s` (at least 5), after warm-up.
fn time(device: Device, budget_s: f64, f: impl Fn() -> Tensor) -> (f64, f64) {
    for _ in 0..3 {
        let _ = f();
    }
    sync(device);
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || (start.elapsed().as_secs_f64() < budget_s && times.len() < 1000) {
        let t0 = Instant::now();
        let out = f();
        sync(device);
        times.push(t0.elapsed().as_secs_f64());
        drop(out);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0])
}

fn main() {
    let (mut m, mut k, mut n) = (2240i64, 512i64, 10_001i64);
    let mut threads = 0i32;
    let mut device = Device::Cpu;
    let mut budget_s = 1.0f64;
    let mut kind = Kind::Float;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| {
            eprintln!("matmul_ceiling: {flag} needs a value");
            std::process::exit(2)
        });
        let bad = |e: &dyn std::fmt::Display| -> ! {
            eprintln!("matmul_ceiling: {flag} {v}: {e}");
            std::process::exit(2)
        };
        match flag.as_str() {
            "--m" => m = v.parse().unwrap_or_else(|e| bad(&e)),
            "--k" => k = v.parse().unwrap_or_else(|e| bad(&e)),
            "--n" => n = v.parse().unwrap_or_else(|e| bad(&e)),
            "--threads" => threads = v.parse().unwrap_or_else(|e| bad(&e)),
            "--seconds" => budget_s = v.parse().unwrap_or_else(|e| bad(&e)),
            "--dtype" => {
                kind = match v.as_str() {
                    "f32" => Kind::Float,
                    "bf16" => Kind::BFloat16,
                    _ => bad(&"expected f32 or bf16"),
                }
            }
            "--device" => {
                device = match v.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    d => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
                        Some(Ok(i)) => Device::Cuda(i),
                        _ => bad(&"expected cpu, cuda or cuda:N"),
                    },
                }
            }
            _ => bad(&"unknown argument"),
        }
    }
    if threads > 0 {
        tch::set_num_threads(threads);
    }
    if let Device::Cuda(i) = device {
        if (tch::Cuda::device_count() as usize) <= i {
            eprintln!("matmul_ceiling: CUDA device {i} is not available");
            std::process::exit(3);
        }
    }
    let opts = (kind, device);
    let x = Tensor::randn([m, k], opts);
    let w = Tensor::randn([k, n], opts);
    let weight = Tensor::randn([n, k], opts);
    let flop = 2.0 * (m * k) as f64 * n as f64;
    let out = Tensor::empty([m, n], opts);
    let (mm_med, mm_best) = time(device, budget_s, || x.mm_out(&out, &w));
    let (lin_med, lin_best) = time(device, budget_s, || x.mm_out(&out, &weight.tr()));
    let gf = |s: f64| flop / s / 1e9;
    let report = serde_json::json!({
        "m": m, "k": k, "n": n,
        "device": format!("{device:?}"),
        "dtype": if kind == Kind::BFloat16 { "bf16" } else { "f32" },
        "threads": tch::get_num_threads(),
        "gflop": flop / 1e9,
        "mm_median_gflop_per_s": gf(mm_med),
        "mm_best_gflop_per_s": gf(mm_best),
        "linear_median_gflop_per_s": gf(lin_med),
        "linear_best_gflop_per_s": gf(lin_best),
        "ceiling_gflop_per_s": gf(mm_med.min(lin_med)),
    });
    println!("{report}");
}
