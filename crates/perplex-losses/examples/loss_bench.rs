//! One configuration of `cargo xtask bench losses`: the forward and backward pass of the output
//! projection plus cross-entropy, computed naively (`Linear -> softmax_cross_entropy`, the full
//! `[tokens, vocab]` logits held by autograd) or fused (`linear_cross_entropy`, chunked), timed
//! over a few repetitions; prints one JSON line.
//!
//! One process per (method, configuration) so that the peak resident set (`VmHWM` in
//! `/proc/self/status`) belongs to that configuration alone. The report gives the peak and the
//! extra peak over the resident set measured after libtorch's start and before the inputs were
//! allocated (so the inputs and their gradients, the same for both methods, are included).
//!
//! ```text
//! cargo run --release -p perplex-losses --example loss_bench -- \
//!     --method chunked --vocab 50000 --tokens 16384 [--hidden 512] [--reps 3] [--warmup 1] \
//!     [--threads N] [--device cpu|cuda] [--chunk-size 2048]
//! ```
//!
//! On CUDA, tch exposes no allocator statistics (nothing like `torch.cuda.max_memory_allocated`);
//! the device memory reported is `nvidia-smi`'s `memory.used` after the last repetition minus the
//! same before the inputs. libtorch's caching allocator keeps what it reserved, so that
//! difference is the peak reserved memory (an upper bound of the peak allocated).
use std::time::Instant;

use perplex_losses::{LinearCrossEntropy, Loss, LossInput, SoftmaxCrossEntropy};
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
struct Args {
    method: String,
    vocab: i64,
    tokens: i64,
    hidden: i64,
    reps: usize,
    warmup: usize,
    threads: i32,
    device: Device,
    chunk_size: Option<i64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        method: "chunked".into(),
        vocab: 50_000,
        tokens: 16_384,
        hidden: 512,
        reps: 3,
        warmup: 1,
        threads: 0,
        device: Device::Cpu,
        chunk_size: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<i64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--method" => a.method = value()?,
            "--vocab" => a.vocab = num(value()?)?,
            "--tokens" => a.tokens = num(value()?)?,
            "--hidden" => a.hidden = num(value()?)?,
            "--reps" => a.reps = num(value()?)?.max(1) as usize,
            "--warmup" => a.warmup = num(value()?)?.max(0) as usize,
            "--threads" => a.threads = num(value()?)? as i32,
            "--chunk-size" => a.chunk_size = Some(num(value()?)?),
            "--device" => {
                a.device = match value()?.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    d => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
                        Some(Ok(i)) => Device::Cuda(i),
                        _ => return Err(format!("unknown device {d}: cpu, cuda or cuda:N")),
                    },
                }
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.method != "naive" && a.method != "chunked" {
        return Err(format!("--method {}: expected naive or chunked", a.method));
    }
    Ok(a)
}

/// A `kB` field of `/proc/self/status` in MiB (`VmRSS`, `VmHWM`); 0 where unreadable.
fn status_mib(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// `memory.used` (MiB) of CUDA device `index` as nvidia-smi reports it.
fn gpu_used_mib(index: usize) -> Option<f64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.used",
            "--format=csv,noheader,nounits",
            &format!("--id={index}"),
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loss_bench: {e}");
            std::process::exit(2);
        }
    };
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let dev = args.device;
    if let Device::Cuda(i) = dev {
        if (tch::Cuda::device_count() as usize) <= i {
            eprintln!("loss_bench: CUDA device {i} is not available");
            std::process::exit(3);
        }
    }
    // Start libtorch (and the CUDA context) before the baseline is read.
    let warm = Tensor::ones([4, 4], (Kind::Float, dev));
    let _ = warm.matmul(&warm).sum(Kind::Float).double_value(&[]);
    sync(dev);
    let gpu_index = match dev {
        Device::Cuda(i) => Some(i),
        _ => None,
    };
    let baseline_rss = status_mib("VmRSS");
    let baseline_gpu = gpu_index.and_then(gpu_used_mib);

    tch::manual_seed(0);
    let (n, h, v) = (args.tokens, args.hidden, args.vocab);
    let opts = (Kind::Float, dev);
    let mut hidden = Tensor::randn([n, h], opts).set_requires_grad(true);
    let mut weight = (Tensor::randn([v, h], opts) * (1.0 / (h as f64).sqrt()))
        .detach()
        .set_requires_grad(true);
    let mut bias = Tensor::zeros([v], opts).set_requires_grad(true);
    let targets = Tensor::randint(v, [n], (Kind::Int64, dev));
    sync(dev);
    let inputs_rss = status_mib("VmRSS");

    let loss: Box<dyn Loss> = match args.method.as_str() {
        "naive" => Box::new(SoftmaxCrossEntropy::default()),
        _ => {
            let mut l = LinearCrossEntropy::default();
            if let Some(c) = args.chunk_size {
                l.chunk_size = c;
            }
            Box::new(l)
        }
    };
    let mut times_ms = Vec::new();
    let mut value = f64::NAN;
    for rep in 0..args.warmup + args.reps {
        hidden.zero_grad();
        weight.zero_grad();
        bias.zero_grad();
        sync(dev);
        let t0 = Instant::now();
        let out = {
            let input = LossInput::from_hidden(&hidden, &weight, Some(&bias), &targets);
            match loss.forward(&input) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("loss_bench: {e}");
                    std::process::exit(4);
                }
            }
        };
        out.loss.backward();
        sync(dev);
        let dt = t0.elapsed().as_secs_f64() * 1e3;
        value = out.loss.double_value(&[]);
        drop(out);
        if rep >= args.warmup {
            times_ms.push(dt);
        }
    }
    let end_gpu = gpu_index.and_then(gpu_used_mib);
    let peak_rss = status_mib("VmHWM");
    let norm = |t: &Tensor| t.grad().norm().double_value(&[]);
    let mut sorted = times_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median_ms = sorted[sorted.len() / 2];
    // Three matmuls of N x H x V multiply-adds: logits, d hidden, d weight.
    let flop = 6.0 * (n * h) as f64 * v as f64;
    let chunk_size = match args.method.as_str() {
        "naive" => serde_json::Value::Null,
        _ => args
            .chunk_size
            .unwrap_or(LinearCrossEntropy::default().chunk_size)
            .into(),
    };
    let report = serde_json::json!({
        "method": args.method,
        "vocab": v,
        "tokens": n,
        "hidden": h,
        "chunk_size": chunk_size,
        "device": format!("{dev:?}"),
        "threads": tch::get_num_threads(),
        "warmup": args.warmup,
        "times_ms": times_ms,
        "median_ms": median_ms,
        "gflop_per_s": flop / (median_ms * 1e6),
        "loss": value,
        "grad_norm_hidden": norm(&hidden),
        "grad_norm_weight": norm(&weight),
        "grad_norm_bias": norm(&bias),
        "baseline_rss_mib": baseline_rss,
        "inputs_rss_mib": inputs_rss,
        "peak_rss_mib": peak_rss,
        "extra_peak_mib": peak_rss - baseline_rss,
        "cuda_reserved_extra_mib": match (baseline_gpu, end_gpu) {
            (Some(b), Some(e)) => serde_json::json!(e - b),
            _ => serde_json::Value::Null,
        },
    });
    println!("{report}");
}
