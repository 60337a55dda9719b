//! `cargo xtask bench ddp`: data-parallel training on this machine against one process using the
//! same cores. Side `ddp`: N ranks with T libtorch threads each, launched as torchrun launches
//! them (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`;
//! rank 0 serves the store), gradients summed over Gloo. Side `single`: one process with N × T
//! threads. Both train the same config on the same global batch (`data.batch_size`; each rank
//! reads its 1/N of the rows), so their step-1 losses agree. Runs go in pairs whose order
//! alternates (ddp single, single ddp, ...), so that drifts in machine load fall on both sides.
//!
//! Per run: `warmup` untimed steps, then `steps` timed steps, whose times are rank 0's per-step
//! `step_ms` in `metrics.jsonl`; tokens/s = global tokens per step / the median step time. For
//! the ddp side every rank logs each gradient reduction (perplex-dist's `debug` line `gradient
//! all-reduce rank= reduction= ms= bytes= buckets=`, enabled through `RUST_LOG`), and the bench
//! reads, per timed step: rank 0's all-reduce time and its share of rank 0's step; the fastest
//! rank's time (the last rank to arrive waits least, so this is close to the transfer itself,
//! the rest of rank 0's time being its wait for the slower rank); the bytes reduced and the
//! ring algorithm's bytes on the wire per rank, 2(N−1)/N × bytes, with the bus bandwidth that
//! implies (nccl-tests' `busbw`: wire bytes per rank / the fastest rank's time).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use super::child::{self, Finished};
use super::{field, finite, median, min_max, parse_f64, thousands};
use crate::Torch;

/// Arguments of `cargo xtask bench ddp`.
#[derive(Debug, Args)]
pub struct DdpArgs {
    /// Timed steps per run. Default 20 (2 with --quick).
    #[arg(long)]
    steps: Option<u64>,
    /// Untimed warm-up steps before them. Default 5 (1 with --quick).
    #[arg(long)]
    warmup: Option<u64>,
    /// ddp/single pairs, at least 3 (1 with --quick). Default 3.
    #[arg(long)]
    pairs: Option<usize>,
    /// The model and its config: the seed word-level GRU (`gru`, 8.9 M parameters, a 35 MB
    /// gradient), its character-level twin (`gru-char`, 1.2 M) or the GPT-style Transformer at
    /// character level (`transformer`, 0.8 M).
    #[arg(long, value_enum, default_value = "gru")]
    model: Model,
    /// A config of your own instead of `--model`'s.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Ranks of the ddp side (torchrun's `--nproc-per-node`).
    #[arg(long, default_value_t = 2)]
    nproc_per_node: usize,
    /// libtorch intra-op threads per rank; the single process gets `nproc-per-node` times as
    /// many.
    #[arg(long, default_value_t = 1)]
    threads_per_rank: usize,
    /// Config overrides for both sides, e.g. `--set data.batch_size=128`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// CI smoke run: 1 pair, 1 warm-up + 2 timed steps; fails if a side fails.
    #[arg(long)]
    quick: bool,
    /// Use a prebuilt `perplex` from this folder instead of building it.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Also write the JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Kill a run after this many seconds. Default 900 (180 with --quick).
    #[arg(long)]
    run_timeout_s: Option<u64>,
    /// Keep the run directories (under `<target>/bench/runs`).
    #[arg(long)]
    keep_runs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Model {
    Gru,
    GruChar,
    Transformer,
}

impl Model {
    fn config(self) -> &'static str {
        match self {
            Self::Gru => "examples/configs/gru-tinyshakespeare.toml",
            Self::GruChar => "examples/configs/gru-char-tinyshakespeare.toml",
            Self::Transformer => "examples/configs/gpt-tinyshakespeare-char.toml",
        }
    }
}

/// The two sides of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// `nproc` ranks, `threads_per_rank` threads each.
    Ddp,
    /// One process with all the threads.
    Single,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Self::Ddp => "ddp",
            Self::Single => "single",
        }
    }
}

/// Settings after defaults.
#[derive(Debug)]
struct Plan {
    steps: u64,
    warmup: u64,
    pairs: usize,
    nproc: usize,
    threads_per_rank: usize,
    config: PathBuf,
    timeout: Duration,
}

impl Plan {
    /// Processes and threads per process of `side`.
    fn layout(&self, side: Side) -> (usize, usize) {
        match side {
            Side::Ddp => (self.nproc, self.threads_per_rank),
            Side::Single => (1, self.nproc * self.threads_per_rank),
        }
    }

    /// `2 ranks x 1 thread` / `1 process x 2 threads`.
    fn describe(&self, side: Side) -> String {
        let (procs, threads) = self.layout(side);
        let s = |n: usize| if n == 1 { "" } else { "s" };
        match side {
            Side::Ddp => format!("{procs} rank{} x {threads} thread{}", s(procs), s(threads)),
            Side::Single => format!("1 process x {threads} thread{}", s(threads)),
        }
    }
}

fn plan(a: &DdpArgs) -> Result<Plan> {
    let q = a.quick;
    let pairs = a.pairs.unwrap_or(if q { 1 } else { 3 });
    if !q && pairs < 3 {
        bail!("--pairs {pairs}: at least 3 pairs are needed for a median and a range (or use --quick)");
    }
    let steps = a.steps.unwrap_or(if q { 2 } else { 20 });
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    if a.nproc_per_node < 2 {
        bail!(
            "--nproc-per-node {}: data-parallel needs at least 2 ranks",
            a.nproc_per_node
        );
    }
    if a.threads_per_rank == 0 {
        bail!("--threads-per-rank must be at least 1");
    }
    let config = match &a.config {
        Some(c) => c.clone(),
        None => crate::workspace_root().join(a.model.config()),
    };
    if !config.is_file() {
        bail!("--config {}: no such file", config.display());
    }
    Ok(Plan {
        steps,
        warmup: a.warmup.unwrap_or(if q { 1 } else { 5 }),
        pairs,
        nproc: a.nproc_per_node,
        threads_per_rank: a.threads_per_rank,
        config,
        timeout: Duration::from_secs(a.run_timeout_s.unwrap_or(if q { 180 } else { 900 })),
    })
}

/// The launcher variables a child must not inherit from the bench's own environment (a bench
/// started inside a torchrun or Slurm job would otherwise make the single side a rank).
fn clear_launcher_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let launcher = [
            "RANK",
            "LOCAL_RANK",
            "WORLD_SIZE",
            "LOCAL_WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
            "GROUP_RANK",
            "ROLE_RANK",
        ]
        .contains(&k);
        if launcher || k.starts_with("SLURM_") || k.starts_with("TORCHELASTIC_") {
            cmd.env_remove(k);
        }
    }
}

/// The config both sides train, resolved and checked once (`perplex train --dry-run`).
struct Resolved {
    /// Overrides for both sides (threads come per side).
    overrides: Vec<String>,
    /// Global batch rows and tokens per row.
    batch: u64,
    seq_len: u64,
}

impl Resolved {
    fn tokens_per_step(&self) -> f64 {
        (self.batch * self.seq_len) as f64
    }
}

fn resolve(bin: &Path, p: &Plan, user: &[String], torch: &Option<Torch>) -> Result<Resolved> {
    let mut overrides: Vec<String> = vec![
        "trainer.log_every=1".into(),
        "trainer.eval=false".into(),
        "trainer.checkpoint=false".into(),
        "trainer.progress=false".into(),
        format!("trainer.max_steps={}", p.warmup + p.steps),
        "trainer.epochs=1000".into(),
        "trainer.accumulate=1".into(),
        "trainer.device=\"cpu\"".into(),
    ];
    overrides.extend(user.iter().cloned());
    let mut cmd = super::command(bin, torch);
    clear_launcher_env(&mut cmd);
    cmd.arg("train")
        .arg("--config")
        .arg(&p.config)
        .arg("--dry-run");
    for o in &overrides {
        cmd.arg("--set").arg(o);
    }
    let out = child::run(&mut cmd, Duration::from_secs(60), None)?;
    let cfg = super::resolved_config(&out)?;
    let int = |key: &str| -> Result<u64> {
        cfg.get("data")
            .and_then(|s| s.get(key))
            .and_then(|v| v.as_integer())
            .and_then(|i| u64::try_from(i).ok())
            .with_context(|| format!("the resolved config has no integer data.{key}"))
    };
    let batch = int("batch_size")?;
    if batch % p.nproc as u64 != 0 {
        bail!(
            "data.batch_size = {batch} (the global batch) is not divisible by \
             --nproc-per-node {}: each rank reads batch_size / ranks rows",
            p.nproc
        );
    }
    Ok(Resolved {
        overrides,
        batch,
        seq_len: int("seq_len")?,
    })
}

/// The gradient reductions of one ddp run, per timed step.
#[derive(Debug, Default)]
struct AllReduce {
    /// Rank 0's all-reduce time per timed step (ms).
    rank0_ms: Vec<f64>,
    /// The fastest rank's time per timed step (ms).
    fastest_ms: Vec<f64>,
    /// Rank 0's all-reduce time / rank 0's step time, per timed step.
    share: Vec<f64>,
    /// Bytes reduced per step (each rank's gradient).
    bytes: u64,
    /// All-reduce calls per step.
    buckets: u64,
}

/// One run of one side.
#[derive(Debug, Default)]
struct RunOutcome {
    error: Option<String>,
    tokens_per_s: f64,
    median_step_ms: f64,
    step_ms: Vec<f64>,
    /// Training loss of step 1 (the same global batch and weights on both sides).
    first_loss: f64,
    /// Each process's peak resident set (MiB).
    peak_rss_mib: Vec<f64>,
    /// libtorch threads each process reported (`device chosen threads=`).
    threads: Vec<usize>,
    wall_s: f64,
    all_reduce: Option<AllReduce>,
}

impl RunOutcome {
    fn failed(error: String) -> Self {
        Self {
            error: Some(error),
            tokens_per_s: f64::NAN,
            median_step_ms: f64::NAN,
            first_loss: f64::NAN,
            ..Self::default()
        }
    }

    fn to_json(&self, pair: usize, side: Side, load: [f64; 3], logs: &[PathBuf]) -> Value {
        let ar = self.all_reduce.as_ref().map(|a| {
            json!({
                "rank0_ms": a.rank0_ms,
                "fastest_rank_ms": a.fastest_ms,
                "share_of_step": a.share,
                "bytes_per_step": a.bytes,
                "buckets": a.buckets,
            })
        });
        json!({
            "pair": pair,
            "side": side.name(),
            "ok": self.error.is_none(),
            "error": self.error,
            "tokens_per_s": finite(self.tokens_per_s),
            "median_step_ms": finite(self.median_step_ms),
            "step_ms": self.step_ms,
            "first_loss": finite(self.first_loss),
            "peak_rss_mib": self.peak_rss_mib,
            "threads": self.threads,
            "wall_s": self.wall_s,
            "all_reduce": ar,
            "loadavg_before": load,
            "logs": logs,
        })
    }
}

/// A free TCP port on 127.0.0.1 for rank 0's store (pitfall BB2-24: never a fixed 29500 that
/// another job on the machine may hold).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("finding a free port for the store")?
        .local_addr()?
        .port())
}

/// Starts every process of `side` together and waits for all of them.
#[allow(clippy::too_many_arguments)]
fn launch(
    bin: &Path,
    side: Side,
    p: &Plan,
    r: &Resolved,
    run_root: &Path,
    name: &str,
    logs: &[PathBuf],
    torch: &Option<Torch>,
) -> Result<Vec<Finished>> {
    let (procs, threads) = p.layout(side);
    let port = free_port()?;
    let commands: Vec<Command> = (0..procs)
        .map(|rank| {
            let mut cmd = super::command(bin, torch);
            clear_launcher_env(&mut cmd);
            // Both sides say their thread count twice: to libtorch through the config and to
            // OpenMP's first team through the environment.
            cmd.env("OMP_NUM_THREADS", threads.to_string())
                .env("RUST_LOG", "info,perplex_dist::data_parallel=debug")
                .env("NO_COLOR", "1");
            if side == Side::Ddp {
                cmd.env("RANK", rank.to_string())
                    .env("LOCAL_RANK", rank.to_string())
                    .env("WORLD_SIZE", procs.to_string())
                    .env("LOCAL_WORLD_SIZE", procs.to_string())
                    .env("MASTER_ADDR", "127.0.0.1")
                    .env("MASTER_PORT", port.to_string())
                    .env("PERPLEX_DIST_TIMEOUT_S", "120");
            }
            cmd.arg("train").arg("--config").arg(&p.config);
            for o in &r.overrides {
                cmd.arg("--set").arg(o);
            }
            cmd.arg("--set")
                .arg(format!("trainer.threads={threads}"))
                .arg("--set")
                .arg(format!("trainer.run_dir=\"{}\"", run_root.display()))
                .arg("--set")
                .arg(format!("trainer.run_name=\"{name}\""));
            cmd
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = commands
            .into_iter()
            .zip(logs)
            .map(|(mut cmd, log)| s.spawn(move || child::run(&mut cmd, p.timeout, Some(log))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a benchmark thread panicked"))
            .collect()
    })
}

/// Rank 0's `train` records of metrics.jsonl: (step, step_ms, loss).
fn train_records(run_dir: &Path) -> Vec<(u64, f64, f64)> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r.get("kind").and_then(Value::as_str) == Some("train"))
        .filter_map(|r| {
            Some((
                r.get("step")?.as_u64()?,
                r.get("step_ms")?.as_f64()?,
                r.get("loss").and_then(Value::as_f64).unwrap_or(f64::NAN),
            ))
        })
        .collect()
}

/// One rank's per-reduction lines: reduction number -> (ms, bytes, buckets).
fn reductions(out: &Finished) -> Vec<(u64, f64, u64, u64)> {
    out.lines
        .iter()
        .filter(|l| l.text.contains("gradient all-reduce"))
        .filter_map(|l| {
            Some((
                field(&l.text, "reduction")?.parse().ok()?,
                parse_f64(field(&l.text, "ms"))?,
                field(&l.text, "bytes")?.parse().ok()?,
                field(&l.text, "buckets")?.parse().ok()?,
            ))
        })
        .collect()
}

/// Rank 0's all-reduce per timed step against its step times, and every rank's for the
/// fastest; an error when a rank logged no reduction for a timed step.
fn all_reduce(outs: &[Finished], steps: &[(u64, f64)]) -> Result<AllReduce, String> {
    let per_rank: Vec<_> = outs.iter().map(reductions).collect();
    let mut a = AllReduce::default();
    for &(step, step_ms) in steps {
        let mut times = Vec::new();
        for (rank, lines) in per_rank.iter().enumerate() {
            let Some(&(_, ms, bytes, buckets)) = lines.iter().find(|l| l.0 == step) else {
                return Err(format!(
                    "rank {rank} logged no `gradient all-reduce ... reduction={step}` line \
                     (perplex-dist's debug line, enabled by RUST_LOG)"
                ));
            };
            if rank == 0 {
                a.rank0_ms.push(ms);
                a.share.push(ms / step_ms);
                (a.bytes, a.buckets) = (bytes, buckets);
            }
            times.push(ms);
        }
        a.fastest_ms
            .push(times.iter().copied().fold(f64::INFINITY, f64::min));
    }
    Ok(a)
}

#[allow(clippy::too_many_arguments)]
fn run_side(
    bin: &Path,
    side: Side,
    p: &Plan,
    r: &Resolved,
    run_root: &Path,
    name: &str,
    logs: &[PathBuf],
    torch: &Option<Torch>,
) -> Result<RunOutcome> {
    let outs = launch(bin, side, p, r, run_root, name, logs, torch)?;
    if let Some((rank, out)) = outs.iter().enumerate().find(|(_, o)| !o.success()) {
        return Ok(RunOutcome::failed(format!(
            "{} process {rank}: {} (log {}):\n{}",
            side.name(),
            out.describe(),
            logs[rank].display(),
            out.tail(15)
        )));
    }
    let (_, want_threads) = p.layout(side);
    let threads: Vec<usize> = outs
        .iter()
        .map(|o| {
            o.first_line_with(&["device chosen"])
                .and_then(|l| field(&l.text, "threads")?.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    if let Some(t) = threads.iter().find(|&&t| t != want_threads) {
        return Ok(RunOutcome::failed(format!(
            "{}: a process ran {t} libtorch thread(s), {want_threads} set (its `device chosen` \
             line; logs {})",
            side.name(),
            logs[0].display()
        )));
    }
    let run_dir = run_root.join(name);
    let records = train_records(&run_dir);
    let (lo, hi) = (p.warmup, p.warmup + p.steps);
    let timed: Vec<(u64, f64)> = records
        .iter()
        .filter(|(s, _, _)| *s > lo && *s <= hi)
        .map(|&(s, ms, _)| (s, ms))
        .collect();
    if timed.len() < p.steps as usize {
        return Ok(RunOutcome::failed(format!(
            "{}: {} timed step times found, {} expected (per-step `train` records in {})",
            side.name(),
            timed.len(),
            p.steps,
            run_dir.join("metrics.jsonl").display(),
        )));
    }
    let all_reduce = match side {
        Side::Single => None,
        Side::Ddp => match all_reduce(&outs, &timed) {
            Ok(a) => Some(a),
            Err(e) => {
                return Ok(RunOutcome::failed(format!(
                    "ddp: {e} (log {})",
                    logs[0].display()
                )))
            }
        },
    };
    let step_ms: Vec<f64> = timed.iter().map(|t| t.1).collect();
    let med = median(&step_ms);
    Ok(RunOutcome {
        error: None,
        tokens_per_s: r.tokens_per_step() / med * 1e3,
        median_step_ms: med,
        step_ms,
        first_loss: records.iter().find(|x| x.0 == 1).map_or(f64::NAN, |x| x.2),
        peak_rss_mib: outs.iter().map(|o| o.peak_rss_mib).collect(),
        threads,
        wall_s: outs.iter().map(|o| o.wall_s).fold(0.0, f64::max),
        all_reduce,
    })
}

/// `median [min-max]` of a side's per-run values, as JSON.
fn spread(xs: &[f64]) -> Value {
    let (lo, hi) = min_max(xs);
    json!({ "median": finite(median(xs)), "min": finite(lo), "max": finite(hi) })
}

/// Statistics of one side over its successful runs.
fn side_summary(runs: &[&RunOutcome]) -> Value {
    let ok: Vec<&&RunOutcome> = runs.iter().filter(|r| r.error.is_none()).collect();
    let per_run = |f: &dyn Fn(&RunOutcome) -> f64| ok.iter().map(|r| f(r)).collect::<Vec<f64>>();
    let mut v = json!({
        "runs_ok": ok.len(),
        "runs": runs.len(),
        "tokens_per_s": spread(&per_run(&|r| r.tokens_per_s)),
        "step_ms": spread(&per_run(&|r| r.median_step_ms)),
        "peak_rss_mib_all_processes": spread(&per_run(&|r| r.peak_rss_mib.iter().sum())),
        "first_loss": spread(&per_run(&|r| r.first_loss)),
    });
    let ar: Vec<&AllReduce> = ok.iter().filter_map(|r| r.all_reduce.as_ref()).collect();
    if !ar.is_empty() {
        let m = |f: &dyn Fn(&AllReduce) -> &Vec<f64>| {
            spread(&ar.iter().map(|a| median(f(a))).collect::<Vec<f64>>())
        };
        v["all_reduce"] = json!({
            "rank0_ms": m(&|a| &a.rank0_ms),
            "fastest_rank_ms": m(&|a| &a.fastest_ms),
            "share_of_step": m(&|a| &a.share),
            "bytes_per_step": ar[0].bytes,
            "buckets": ar[0].buckets,
        });
    }
    v
}

/// The ring all-reduce's bytes sent (and received) per rank for `bytes` over `n` ranks:
/// reduce-scatter then all-gather, each N − 1 chunks of bytes / N.
fn ring_bytes(bytes: f64, n: usize) -> f64 {
    2.0 * (n as f64 - 1.0) / n as f64 * bytes
}

/// Runs the benchmark.
pub fn run(a: DdpArgs, torch: &Option<Torch>) -> Result<()> {
    let p = plan(&a)?;
    let unix = super::unix_time();
    let perplex = super::binary(
        torch,
        a.bin_dir.as_deref(),
        "perplex",
        &["-p", "perplex-cli"],
    )?;
    let bench = super::bench_dir();
    let run_root = bench.join("runs");
    let log_dir = bench.join("logs").join(format!("ddp-{unix}"));
    let resolved = resolve(&perplex, &p, &a.overrides, torch)?;
    let mut notes: Vec<String> = Vec::new();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let total_threads = p.nproc * p.threads_per_rank;
    if total_threads > cores {
        notes.push(format!(
            "{total_threads} threads on {cores} CPUs: both sides are oversubscribed"
        ));
    }
    let load_start = super::loadavg();
    if load_start[0] > 0.5 * cores as f64 {
        notes.push(format!(
            "machine busy at the start: load average {:.2} on {cores} CPUs (timings are noisy)",
            load_start[0]
        ));
    }
    for n in &notes {
        eprintln!("xtask: {n}");
    }
    eprintln!(
        "xtask: bench ddp: {} vs {}, {} pair(s), {} warm-up + {} timed steps, {}; logs in {}",
        p.describe(Side::Ddp),
        p.describe(Side::Single),
        p.pairs,
        p.warmup,
        p.steps,
        p.config.display(),
        log_dir.display()
    );

    let mut pairs: Vec<(RunOutcome, RunOutcome)> = Vec::new();
    let mut runs_json = Vec::new();
    let mut failures = Vec::new();
    for i in 0..p.pairs {
        // ddp first in even pairs, single first in odd ones.
        let order = if i % 2 == 0 {
            [Side::Ddp, Side::Single]
        } else {
            [Side::Single, Side::Ddp]
        };
        let mut ddp = None;
        let mut single = None;
        for side in order {
            let name = format!("bench-ddp-{unix}-{i}-{}", side.name());
            let procs = p.layout(side).0;
            let logs: Vec<PathBuf> = (0..procs)
                .map(|r| log_dir.join(format!("{i}-{}-{r}.log", side.name())))
                .collect();
            let load = super::loadavg();
            eprintln!(
                "xtask: pair {}/{}: {} ({}) ...",
                i + 1,
                p.pairs,
                side.name(),
                p.describe(side)
            );
            let out = run_side(
                &perplex, side, &p, &resolved, &run_root, &name, &logs, torch,
            )?;
            if !a.keep_runs {
                let _ = std::fs::remove_dir_all(run_root.join(&name));
            }
            if let Some(e) = &out.error {
                eprintln!("xtask: pair {}: {e}", i + 1);
                failures.push(format!("pair {} {}: {e}", i + 1, side.name()));
            }
            runs_json.push(out.to_json(i, side, load, &logs));
            match side {
                Side::Ddp => ddp = Some(out),
                Side::Single => single = Some(out),
            }
        }
        pairs.push((ddp.expect("ran"), single.expect("ran")));
    }
    let load_end = super::loadavg();

    let ddp_runs: Vec<&RunOutcome> = pairs.iter().map(|(d, _)| d).collect();
    let single_runs: Vec<&RunOutcome> = pairs.iter().map(|(_, s)| s).collect();
    let ratios: Vec<Value> = pairs
        .iter()
        .map(|(d, s)| finite(d.tokens_per_s / s.tokens_per_s))
        .collect();
    let ratio_vals: Vec<f64> = ratios.iter().filter_map(Value::as_f64).collect();
    let ddp = side_summary(&ddp_runs);
    let bytes = ddp
        .pointer("/all_reduce/bytes_per_step")
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN);
    let wire = ring_bytes(bytes, p.nproc);
    let fastest = ddp
        .pointer("/all_reduce/fastest_rank_ms/median")
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN);
    let result = json!({
        "kind": "ddp",
        "unix_time": unix,
        "host": super::host(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "settings": {
            "pairs": p.pairs, "warmup": p.warmup, "steps": p.steps, "quick": a.quick,
            "nproc_per_node": p.nproc, "threads_per_rank": p.threads_per_rank,
            "config": p.config, "overrides": resolved.overrides,
            "launch": "RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT as torchrun sets them; rank 0 serves the store",
            "order": "pair i: ddp then single for even i, single then ddp for odd i",
        },
        "perplex": perplex,
        "global_batch": resolved.batch,
        "seq_len": resolved.seq_len,
        "tokens_per_step": resolved.tokens_per_step(),
        "sides": {
            "ddp": { "layout": p.describe(Side::Ddp), "summary": ddp },
            "single": { "layout": p.describe(Side::Single), "summary": side_summary(&single_runs) },
        },
        "ratios_ddp_over_single": ratios,
        "median_ratio": finite(median(&ratio_vals)),
        "ring_all_reduce": {
            "formula": "2 (N - 1) / N x bytes_per_step, sent and received per rank",
            "wire_bytes_per_rank": finite(wire),
            "bus_bandwidth_gb_per_s_at_fastest_rank": finite(wire / (fastest * 1e-3) / 1e9),
        },
        "runs": runs_json,
        "notes": notes,
        "failures": failures,
    });
    let path = super::write_results("ddp", unix, &result, a.json.as_deref())?;
    println!("{}", table(&result, &p));
    for n in &notes {
        println!("note: {n}");
    }
    println!("results: {}", path.display());
    if !failures.is_empty() {
        bail!(
            "{} run(s) failed to produce a result:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

fn num(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "-".into(),
    }
}

/// The printed report.
fn table(e: &Value, p: &Plan) -> String {
    let get = |path: &str| e.pointer(path).and_then(Value::as_f64);
    let load = |k: &str| e[k][0].as_f64().unwrap_or(f64::NAN);
    let mut s = format!(
        "\nbench ddp: {} vs {} | cpu, Gloo over loopback | load {:.2} -> {:.2} (1-min avg)\n",
        p.describe(Side::Ddp),
        p.describe(Side::Single),
        load("loadavg_start"),
        load("loadavg_end"),
    );
    s.push_str(&format!(
        "config {}; global batch {} x {} = {} tokens/step; {} pair(s) x ({} warm-up + {} timed \
         steps), order alternating\n",
        p.config
            .strip_prefix(crate::workspace_root())
            .unwrap_or(&p.config)
            .display(),
        e["global_batch"],
        e["seq_len"],
        thousands(get("/tokens_per_step").unwrap_or(f64::NAN)),
        p.pairs,
        p.warmup,
        p.steps
    ));
    s.push_str(&format!(
        "  {:<24} {:>10} {:>19} {:>9} {:>20} {:>12}\n",
        "side", "tokens/s", "[min-max]", "step ms", "RSS MiB (all procs)", "step-1 loss"
    ));
    for side in [Side::Ddp, Side::Single] {
        let base = format!("/sides/{}/summary", side.name());
        let g = |k: &str| get(&format!("{base}/{k}"));
        s.push_str(&format!(
            "  {:<24} {:>10} {:>19} {:>9} {:>20} {:>12}\n",
            p.describe(side),
            thousands(g("tokens_per_s/median").unwrap_or(f64::NAN)),
            format!(
                "[{}-{}]",
                thousands(g("tokens_per_s/min").unwrap_or(f64::NAN)),
                thousands(g("tokens_per_s/max").unwrap_or(f64::NAN))
            ),
            num(g("step_ms/median"), 1),
            num(g("peak_rss_mib_all_processes/median"), 0),
            num(g("first_loss/median"), 4),
        ));
    }
    let ratios: Vec<String> = e["ratios_ddp_over_single"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_f64().map_or("-".into(), |x| format!("{x:.3}")))
                .collect()
        })
        .unwrap_or_default();
    s.push_str(&format!(
        "  ddp/single tokens/s per pair: {} -> median {}\n",
        ratios.join(" "),
        num(get("/median_ratio"), 3)
    ));
    let ar = "/sides/ddp/summary/all_reduce";
    let bytes = get(&format!("{ar}/bytes_per_step")).unwrap_or(f64::NAN);
    let ms = |k: &str| {
        format!(
            "{} ms [{}-{}]",
            num(get(&format!("{ar}/{k}/median")), 1),
            num(get(&format!("{ar}/{k}/min")), 1),
            num(get(&format!("{ar}/{k}/max")), 1)
        )
    };
    s.push_str(&format!(
        "  gradient all-reduce per step ({} ranks; median [min-max] over runs of each run's \
         median):\n",
        p.nproc
    ));
    s.push_str(&format!(
        "    bytes: {} per rank ({:.1} MB, {} f32 values) in {} bucket(s); ring on the wire: \
         2(N-1)/N x bytes = {} per rank\n",
        thousands(bytes),
        bytes / 1e6,
        thousands(bytes / 4.0),
        num(get(&format!("{ar}/buckets")), 0),
        thousands(get("/ring_all_reduce/wire_bytes_per_rank").unwrap_or(f64::NAN)),
    ));
    s.push_str(&format!(
        "    rank 0: {} = {}% of its step (share [{}-{}]%)\n",
        ms("rank0_ms"),
        num(
            get(&format!("{ar}/share_of_step/median")).map(|x| 100.0 * x),
            1
        ),
        num(
            get(&format!("{ar}/share_of_step/min")).map(|x| 100.0 * x),
            1
        ),
        num(
            get(&format!("{ar}/share_of_step/max")).map(|x| 100.0 * x),
            1
        ),
    ));
    s.push_str(&format!(
        "    fastest rank: {} (about the transfer itself; the rest of rank 0's time is waiting \
         for the slower rank) -> bus bandwidth {} GB/s\n",
        ms("fastest_rank_ms"),
        num(
            get("/ring_all_reduce/bus_bandwidth_gb_per_s_at_fastest_rank"),
            2
        ),
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::child::Stream;

    #[test]
    fn ring_all_reduce_moves_two_n_minus_one_over_n_of_the_bytes() {
        assert_eq!(ring_bytes(100.0, 2), 100.0);
        assert_eq!(ring_bytes(100.0, 4), 150.0);
        assert_eq!(ring_bytes(80.0, 8), 140.0);
    }

    fn finished(lines: &[&str]) -> Finished {
        Finished {
            code: Some(0),
            signal: None,
            timed_out: false,
            wall_s: 1.0,
            peak_rss_mib: 1.0,
            minor_faults: 0,
            lines: lines
                .iter()
                .map(|t| child::Line {
                    at_s: 0.0,
                    stream: Stream::Stderr,
                    text: t.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn all_reduce_lines_give_rank0_share_and_fastest_rank_per_timed_step() {
        let line = |rank: u32, reduction: u64, ms: f64| {
            format!(
                "2026-01-01T00:00:00Z DEBUG perplex_dist::data_parallel: gradient all-reduce \
                 rank={rank} reduction={reduction} ms={ms} bytes=35473172 buckets=2"
            )
        };
        let r0 = [line(0, 1, 90.0), line(0, 2, 40.0), line(0, 3, 30.0)];
        let r1 = [line(1, 1, 80.0), line(1, 2, 10.0), line(1, 3, 35.0)];
        // The drop line has no `reduction=` and must not count.
        let drop = "INFO perplex_dist::data_parallel: gradient all-reduce time per step rank=0 \
                    reductions=3 mean_ms=\"53.33\" bytes=35473172 buckets=2";
        let outs = [
            finished(&[r0[0].as_str(), r0[1].as_str(), r0[2].as_str(), drop]),
            finished(&[r1[0].as_str(), r1[1].as_str(), r1[2].as_str()]),
        ];
        // Step 1 is warm-up; steps 2 and 3 are timed, 200 and 100 ms.
        let a = all_reduce(&outs, &[(2, 200.0), (3, 100.0)]).unwrap();
        assert_eq!(a.rank0_ms, [40.0, 30.0]);
        assert_eq!(a.fastest_ms, [10.0, 30.0]);
        assert_eq!(a.share, [0.2, 0.3]);
        assert_eq!((a.bytes, a.buckets), (35_473_172, 2));
        // A timed step a rank did not log is an error naming the rank.
        let e = all_reduce(&outs[..1], &[(4, 100.0)]).unwrap_err();
        assert!(e.contains("rank 0") && e.contains("reduction=4"), "{e}");
    }
}
