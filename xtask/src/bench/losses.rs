//! `cargo xtask bench losses`: the naive `Linear -> softmax_cross_entropy` against the chunked
//! `linear_cross_entropy`, forward and backward, time and peak memory, one child process
//! (`perplex-losses/examples/loss_bench.rs`) per (method, configuration).
//!
//! The product owner's goal, checked at vocabulary 50k and 16k tokens: the chunked loss needs at
//! most 10% of the naive loss's extra peak memory and at most 1.3x its time.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::{json, Value};

use super::child::{self, Stream};
use super::thousands;
use crate::Torch;

/// Arguments of `cargo xtask bench losses`.
#[derive(Debug, Args)]
pub struct LossesArgs {
    /// Vocabulary sizes, comma-separated. Default 10000,50000,128000.
    #[arg(long, value_delimiter = ',')]
    vocab: Vec<i64>,
    /// Token counts, comma-separated. Default 4096,16384.
    #[arg(long, value_delimiter = ',')]
    tokens: Vec<i64>,
    /// Hidden size. Default 512.
    #[arg(long, default_value_t = 512)]
    hidden: i64,
    /// Timed repetitions per configuration (the median is reported). Default 3.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// `linear_cross_entropy`'s `chunk_size` (default: the loss's own default).
    #[arg(long)]
    chunk_size: Option<i64>,
    /// libtorch threads. Default: the number of CPUs.
    #[arg(long)]
    threads: Option<usize>,
    /// `cpu` or `cuda` (`cuda:N`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CI smoke run: one tiny configuration, one repetition.
    #[arg(long)]
    quick: bool,
    /// Use a prebuilt `loss_bench` from this folder instead of building it.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Also write the JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run configurations even when the memory estimate exceeds what is available.
    #[arg(long)]
    no_skip: bool,
}

/// Bytes of one float32 `[n, v]` matrix.
fn mat(n: i64, v: i64) -> f64 {
    4.0 * n as f64 * v as f64
}

/// A rough upper estimate of a child's peak (MiB): inputs and their gradients, plus, for the
/// naive loss, logits, log-softmax, and two gradients of that size alive in the backward pass;
/// for the chunked loss a few `[chunk, vocab]` blocks.
fn estimate_mib(method: &str, n: i64, v: i64, h: i64, chunk: i64) -> f64 {
    let inputs = 2.0 * (mat(n, h) + mat(v, h) + mat(1, v));
    let work = match method {
        "naive" => 4.0 * mat(n, v),
        _ => 3.0 * mat(chunk.min(n), v) + 2.0 * mat(v, h),
    };
    (inputs + work) / (1024.0 * 1024.0) + 600.0
}

/// Runs the benchmark.
pub fn run(a: LossesArgs, torch: &Option<Torch>) -> Result<()> {
    let unix = super::unix_time();
    let bin = super::binary(
        torch,
        a.bin_dir.as_deref(),
        "loss_bench",
        &["-p", "perplex-losses", "--example", "loss_bench"],
    )?;
    let (vocabs, tokens, hidden, reps) = if a.quick {
        (vec![2_000], vec![512], 64, 1)
    } else {
        (
            if a.vocab.is_empty() {
                vec![10_000, 50_000, 128_000]
            } else {
                a.vocab.clone()
            },
            if a.tokens.is_empty() {
                vec![4_096, 16_384]
            } else {
                a.tokens.clone()
            },
            a.hidden,
            a.reps.max(1),
        )
    };
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let on_cpu = a.device == "cpu";
    let chunk = a.chunk_size.unwrap_or(2048); // linear_cross_entropy's default
    let log_dir = super::bench_dir()
        .join("logs")
        .join(format!("losses-{unix}"));
    let load_start = super::loadavg();
    let mut notes = Vec::new();
    if !on_cpu {
        notes.push(
            "CUDA: tch 0.24 exposes no allocator statistics; memory is nvidia-smi's memory.used \
             after the last repetition minus before the inputs (the caching allocator keeps its \
             peak reservation), in cuda_reserved_extra_mib"
                .to_string(),
        );
    }
    let mut configs = Vec::new();
    let mut failures = Vec::new();
    for &v in &vocabs {
        for &n in &tokens {
            let mut results = serde_json::Map::new();
            for method in ["naive", "chunked"] {
                let est = estimate_mib(method, n, v, hidden, chunk);
                let avail = super::meminfo_mib("MemAvailable").unwrap_or(f64::INFINITY);
                if on_cpu && !a.no_skip && est > 0.85 * avail {
                    let why = format!(
                        "skipped: needs about {:.1} GiB, {:.1} GiB available",
                        est / 1024.0,
                        avail / 1024.0
                    );
                    eprintln!("xtask: V={v} N={n} {method}: {why}");
                    results.insert(method.into(), json!({ "skipped": why }));
                    continue;
                }
                // A warm-up repetition only where a repetition is cheap (< ~0.3 TFLOP).
                let flop = 6.0 * (n * hidden) as f64 * v as f64;
                let warmup = if a.quick || flop > 3e11 { 0 } else { 1 };
                let mut cmd = super::example_command(&bin, torch, &a.device);
                cmd.args(["--method", method])
                    .args(["--vocab", &v.to_string()])
                    .args(["--tokens", &n.to_string()])
                    .args(["--hidden", &hidden.to_string()])
                    .args(["--reps", &reps.to_string()])
                    .args(["--warmup", &warmup.to_string()])
                    .args(["--threads", &threads.to_string()])
                    .args(["--device", &a.device]);
                if let Some(c) = a.chunk_size {
                    cmd.args(["--chunk-size", &c.to_string()]);
                }
                eprintln!("xtask: V={v} N={n} H={hidden} {method} ...");
                let log = log_dir.join(format!("{method}-v{v}-n{n}.log"));
                let out = child::run(&mut cmd, Duration::from_secs(1800), Some(&log))?;
                let parsed = out
                    .lines
                    .iter()
                    .filter(|l| l.stream == Stream::Stdout)
                    .find_map(|l| serde_json::from_str::<Value>(&l.text).ok());
                match parsed {
                    Some(mut r) if out.success() => {
                        r["process_peak_rss_mib"] = json!(out.peak_rss_mib);
                        r["loadavg_after"] = json!(super::loadavg());
                        results.insert(method.into(), r);
                    }
                    _ => {
                        let e = format!("{} (log {})", out.describe(), log.display());
                        eprintln!("xtask: V={v} N={n} {method} failed: {e}\n{}", out.tail(8));
                        failures.push(format!("V={v} N={n} {method}: {e}"));
                        results.insert(method.into(), json!({ "failed": e }));
                    }
                }
            }
            configs.push(compare(v, n, hidden, results, on_cpu));
        }
    }
    let goal = configs
        .iter()
        .find(|c| c["vocab"] == 50_000 && c["tokens"] == 16_384)
        .map(|c| c["goal"].clone())
        .unwrap_or(Value::Null);
    let load_end = super::loadavg();
    let result = json!({
        "kind": "losses",
        "unix_time": unix,
        "host": super::host(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "settings": {
            "hidden": hidden, "reps": reps, "threads": threads, "device": a.device,
            "chunk_size": chunk, "quick": a.quick, "dtype": "float32",
        },
        "configs": configs,
        "goal_50k_16k": goal,
        "notes": notes,
        "failures": failures,
    });
    let path = super::write_results("losses", unix, &result, a.json.as_deref())?;
    print_table(&result, on_cpu);
    for n in &notes {
        println!("note: {n}");
    }
    println!("results: {}", path.display());
    if !failures.is_empty() {
        bail!(
            "{} configuration(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

/// One configuration's two results side by side, with the ratios and the goal check.
fn compare(v: i64, n: i64, h: i64, r: serde_json::Map<String, Value>, on_cpu: bool) -> Value {
    let naive = r.get("naive").cloned().unwrap_or(Value::Null);
    let chunked = r.get("chunked").cloned().unwrap_or(Value::Null);
    let mem_key = if on_cpu {
        "extra_peak_mib"
    } else {
        "cuda_reserved_extra_mib"
    };
    let g = |x: &Value, k: &str| x.get(k).and_then(Value::as_f64);
    let time_ratio = g(&chunked, "median_ms")
        .zip(g(&naive, "median_ms"))
        .map(|(c, n)| c / n);
    let mem_ratio = g(&chunked, mem_key)
        .zip(g(&naive, mem_key))
        .map(|(c, n)| c / n);
    // Same seed, same inputs: the two methods must agree.
    let agree = match (g(&naive, "loss"), g(&chunked, "loss")) {
        (Some(a), Some(b)) => {
            let rel = |x: f64, y: f64| (x - y).abs() / x.abs().max(y.abs()).max(1e-12);
            let grads_ok = ["grad_norm_hidden", "grad_norm_weight", "grad_norm_bias"]
                .iter()
                .all(|k| match (g(&naive, k), g(&chunked, k)) {
                    (Some(x), Some(y)) => rel(x, y) < 1e-3,
                    _ => false,
                });
            Some(rel(a, b) < 1e-4 && grads_ok)
        }
        _ => None,
    };
    let goal = match (time_ratio, mem_ratio) {
        (Some(t), Some(m)) => json!({
            "memory_ratio": m, "memory_ok": m <= 0.10,
            "time_ratio": t, "time_ok": t <= 1.3,
            "met": m <= 0.10 && t <= 1.3,
        }),
        _ => Value::Null,
    };
    json!({
        "vocab": v, "tokens": n, "hidden": h,
        "naive": naive, "chunked": chunked,
        "time_ratio_chunked_over_naive": time_ratio,
        "memory_ratio_chunked_over_naive": mem_ratio,
        "memory_measure": mem_key,
        "values_agree": agree,
        "goal": goal,
    })
}

fn print_table(result: &Value, on_cpu: bool) {
    let s = &result["settings"];
    let la = |k: &str| result[k][0].as_f64().unwrap_or(f64::NAN);
    println!();
    println!(
        "bench losses: {} | {} thread(s) | H = {} | float32 | chunk_size {} | load {:.2} -> {:.2} (1-min avg)",
        s["device"].as_str().unwrap_or("?"),
        s["threads"],
        s["hidden"],
        s["chunk_size"],
        la("loadavg_start"),
        la("loadavg_end"),
    );
    let mem = if on_cpu { "extra MiB" } else { "CUDA MiB" };
    println!(
        "  {:>7} {:>6} | {:>9} {:>7} {:>9} {:>9} | {:>9} {:>7} {:>9} {:>9} | {:>6} {:>6} {:>5}",
        "vocab",
        "tokens",
        "naive ms",
        "GFLOP/s",
        "peak MiB",
        mem,
        "chunk ms",
        "GFLOP/s",
        "peak MiB",
        mem,
        "time x",
        "mem %",
        "agree"
    );
    let mem_key = if on_cpu {
        "extra_peak_mib"
    } else {
        "cuda_reserved_extra_mib"
    };
    for c in result["configs"].as_array().into_iter().flatten() {
        let cell = |side: &Value| -> String {
            if let Some(w) = side.get("skipped").or(side.get("failed")) {
                let w = w.as_str().unwrap_or("");
                return format!(
                    "{:>38}",
                    if w.starts_with("skipped") {
                        "skipped (memory)"
                    } else {
                        "FAILED"
                    }
                );
            }
            let g = |k: &str| side.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
            format!(
                "{:>9} {:>7.1} {:>9} {:>9}",
                thousands(g("median_ms")),
                g("gflop_per_s"),
                thousands(g("peak_rss_mib")),
                thousands(g(mem_key))
            )
        };
        let t = c["time_ratio_chunked_over_naive"].as_f64();
        let m = c["memory_ratio_chunked_over_naive"].as_f64();
        println!(
            "  {:>7} {:>6} | {} | {} | {:>6} {:>6} {:>5}",
            c["vocab"].as_i64().unwrap_or(0),
            c["tokens"].as_i64().unwrap_or(0),
            cell(&c["naive"]),
            cell(&c["chunked"]),
            t.map_or("-".into(), |t| format!("{t:.2}")),
            m.map_or("-".into(), |m| format!("{:.1}", 100.0 * m)),
            match c["values_agree"].as_bool() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            }
        );
    }
    match result["goal_50k_16k"].as_object() {
        Some(g) => println!(
            "goal at V=50k, N=16k (chunked <= 10% of naive extra memory, <= 1.3x time): memory {:.1}% ({}), time {:.2}x ({}) -> {}",
            100.0 * g["memory_ratio"].as_f64().unwrap_or(f64::NAN),
            if g["memory_ok"].as_bool() == Some(true) { "ok" } else { "NOT met" },
            g["time_ratio"].as_f64().unwrap_or(f64::NAN),
            if g["time_ok"].as_bool() == Some(true) { "ok" } else { "NOT met" },
            if g["met"].as_bool() == Some(true) { "MET" } else { "NOT MET" },
        ),
        None => println!("goal at V=50k, N=16k: not measured in this run"),
    }
}
