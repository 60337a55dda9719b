//! `cargo xtask bench`: benchmarks compared side by side with their references.
//!
//! - `bench train`: perplex against the PyTorch eager reference
//!   (`../shared/reference/pytorch_gru_lm.py`), alternating runs, tokens/s, GFLOP/s against a
//!   matmul ceiling, peak RSS and time to the first step ([`train`]).
//! - `bench losses`: `Linear -> softmax_cross_entropy` against `linear_cross_entropy`, time and
//!   peak memory per configuration, one child process each ([`losses`]).
//! - `bench ddp`: data-parallel training, N ranks × 1 thread against 1 process × N threads on
//!   the same global batch, alternating; tokens/s, and the gradient all-reduce's time, share of
//!   the step and bytes ([`ddp`]).
//!
//! Results are printed as tables and written as JSON to `<target>/bench/<what>-<unix time>.json`
//! and `<target>/bench/<what>-latest.json` (`<target>` is `$CARGO_TARGET_DIR` or `target/`).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use crate::Torch;

mod child;
mod ddp;
mod losses;
mod train;

/// Arguments of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// perplex vs the PyTorch eager reference: training tokens/s, GFLOP/s, peak RSS, first step.
    Train(train::TrainArgs),
    /// Naive `Linear -> softmax_cross_entropy` vs `linear_cross_entropy`: time and peak memory.
    Losses(losses::LossesArgs),
    /// Data-parallel (N ranks x 1 thread, Gloo) vs 1 process x N threads on the same global
    /// batch: tokens/s, and the gradient all-reduce's time, share of the step and bytes.
    Ddp(ddp::DdpArgs),
}

/// Runs a benchmark.
pub fn run(args: BenchArgs, torch: &Option<Torch>) -> Result<()> {
    match args.what {
        What::Train(a) => train::run(a, torch),
        What::Losses(a) => losses::run(a, torch),
        What::Ddp(a) => ddp::run(a, torch),
    }
}

/// Where benchmark results go: `$CARGO_TARGET_DIR/bench` or `<workspace>/target/bench`.
fn bench_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"))
        .join("bench")
}

/// The release binary or example to run: from `bin_dir` when given (prebuilt, e.g. carried to
/// another machine), else built here with cargo.
fn binary(
    torch: &Option<Torch>,
    bin_dir: Option<&Path>,
    name: &str,
    build: &[&str],
) -> Result<PathBuf> {
    if let Some(dir) = bin_dir {
        let p = dir.join(name);
        if !p.is_file() {
            bail!("--bin-dir {}: no `{name}` there", dir.display());
        }
        return Ok(p);
    }
    let mut args = vec!["build", "--release"];
    args.extend_from_slice(build);
    crate::cargo(torch, &args)?;
    let release = crate::perplex_bin()
        .parent()
        .expect("target/release")
        .to_path_buf();
    let p = if build.contains(&"--example") {
        release.join("examples").join(name)
    } else {
        release.join(name)
    };
    if !p.is_file() {
        bail!("cargo built no {}", p.display());
    }
    Ok(p)
}

/// A command with the environment `cargo xtask` gives every child (libtorch, data mirror).
fn command(program: &Path, torch: &Option<Torch>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(crate::workspace_root());
    crate::apply_env(&mut cmd, torch);
    cmd
}

/// A command for a perplex-losses example on `device`. On CUDA, `libtorch_cuda.so` is preloaded:
/// examples do not link it themselves (the linker drops it as unused, unlike `perplex`, whose
/// build script keeps it), and without it libtorch sees no CUDA device.
fn example_command(program: &Path, torch: &Option<Torch>, device: &str) -> Command {
    let mut cmd = command(program, torch);
    if device.starts_with("cuda") {
        let lib = torch
            .as_ref()
            .map(|t| t.libtorch.join("lib").join("libtorch_cuda.so"));
        if let Some(lib) = lib.filter(|l| l.is_file()) {
            cmd.env("LD_PRELOAD", lib);
        }
    }
    cmd
}

/// The resolved config that `perplex train --dry-run` printed (`out`), as a TOML table; an error
/// with the tail of its output when the dry run refused the benchmark's settings.
fn resolved_config(out: &child::Finished) -> Result<toml::Table> {
    if !out.success() {
        bail!(
            "`perplex train --dry-run` rejected the benchmark's settings ({}):\n{}",
            out.describe(),
            out.tail(10)
        );
    }
    let text: String = out
        .lines
        .iter()
        .filter(|l| l.stream == child::Stream::Stdout)
        .map(|l| format!("{}\n", l.text))
        .collect();
    toml::from_str(&text).context("parsing `perplex train --dry-run`")
}

/// The 1-, 5- and 15-minute load averages.
fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

/// A `/proc/meminfo` field in MiB.
fn meminfo_mib(field: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

/// What the machine was and how busy, for the JSON.
fn host() -> serde_json::Value {
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        }),
        "mem_total_mib": meminfo_mib("MemTotal"),
        "loadavg": loadavg(),
    })
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `<bench dir>/<what>-<unix>.json` and `<what>-latest.json`, and `extra` when given.
fn write_results(
    what: &str,
    unix: u64,
    json: &serde_json::Value,
    extra: Option<&Path>,
) -> Result<PathBuf> {
    let dir = bench_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(json)?;
    let path = dir.join(format!("{what}-{unix}.json"));
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    let latest = dir.join(format!("{what}-latest.json"));
    std::fs::write(&latest, &text).with_context(|| format!("writing {}", latest.display()))?;
    if let Some(p) = extra {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).ok();
        }
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(path)
}

/// Median of a non-empty slice (the mean of the middle two for an even length).
fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn min_max(xs: &[f64]) -> (f64, f64) {
    xs.iter()
        .filter(|x| !x.is_nan())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// JSON has no NaN: `null` instead.
fn finite(x: f64) -> serde_json::Value {
    if x.is_finite() {
        serde_json::json!(x)
    } else {
        serde_json::Value::Null
    }
}

/// `key=value` out of a tracing line (`key=3`, `key="3"`).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let i = line.find(&pat)? + pat.len();
    let rest = &line[i..];
    let v = rest.split_whitespace().next()?;
    Some(v.trim_matches('"'))
}

fn parse_f64(v: Option<&str>) -> Option<f64> {
    v?.trim_matches('"').parse().ok()
}

/// `12345.6` -> `12,346`.
fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_lengths() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn tracing_fields_are_read_with_or_without_quotes() {
        let l = r#"2025 INFO perplex_trainer::trainer: train epoch=1 step=12 loss="5.1" tokens_per_sec="3400" lr=0.001"#;
        assert_eq!(field(l, "step"), Some("12"));
        assert_eq!(field(l, "tokens_per_sec"), Some("3400"));
        assert_eq!(field(l, "missing"), None);
        assert_eq!(parse_f64(field(l, "loss")), Some(5.1));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(f64::NAN), "-");
    }
}
