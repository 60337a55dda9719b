//! `cargo xtask bench train`: perplex against the PyTorch eager reference, run alternately
//! (perplex, PyTorch, perplex, PyTorch, ...) so that drifts in machine load fall on both sides
//! alike. `--model gru` (the seed GRU, word and char level, against `pytorch_gru_lm.py`) or
//! `--model transformer` (the GPT-style decoder at char level, against `pytorch_gpt_lm.py`);
//! `--precision f32|bf16` on both sides.
//!
//! Per run: `warmup` untimed steps, then `steps` timed steps, no evaluation. Per side: the median
//! step time of each run gives its tokens/s; across runs the median and the min–max; achieved
//! GFLOP/s (FLOPs per token as the model itself reports them, `LanguageModel::flops_per_token`,
//! read from perplex's `summary.json`) against the matmul ceiling measured in the same
//! invocation (`perplex-losses/examples/matmul_ceiling.rs`); the peak resident set and minor
//! page faults of the process (`wait4`) and the seconds from spawn to the end of step 1.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use super::child::{self, Finished, Stream};
use super::{field, finite, median, min_max, parse_f64, thousands};
use crate::Torch;

/// Arguments of `cargo xtask bench train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Timed steps per run. Default 20 (2 with --quick).
    #[arg(long)]
    steps: Option<u64>,
    /// Untimed warm-up steps before them. Default 5 (1 with --quick).
    #[arg(long)]
    warmup: Option<u64>,
    /// perplex/PyTorch pairs per level, at least 3 (1 with --quick). Default 3.
    #[arg(long)]
    pairs: Option<usize>,
    /// Word level (V = 10001), char level (V = 65) or both. Default both (char with --quick);
    /// the Transformer runs at char level only.
    #[arg(long, value_enum)]
    level: Option<Level>,
    /// The model on both sides: the seed GRU, the GPT-style Transformer
    /// (`examples/configs/gpt-tinyshakespeare-char.toml` against `pytorch_gpt_lm.py`) or the
    /// Llama (`examples/configs/llama-tinyshakespeare-char.toml` against transformers'
    /// `LlamaForCausalLM`, `reference/hf_llama_lm.py`).
    #[arg(long, value_enum, default_value = "gru")]
    model: Model,
    /// Arithmetic on both sides: `f32`, or `bf16` autocast (perplex `trainer.precision = "bf16"`,
    /// the reference's `--precision bf16`).
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
    /// libtorch intra-op threads on both sides. Default: the number of CPUs.
    #[arg(long)]
    threads: Option<usize>,
    /// `cpu` or `cuda` (`cuda:N`), both sides.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Extra config overrides for the perplex side only, e.g. `--set trainer.precision=bf16`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// CI smoke run: 1 pair, 1 warm-up + 2 timed steps, char level; fails if a side fails.
    #[arg(long)]
    quick: bool,
    /// Use prebuilt `perplex` and `matmul_ceiling` from this folder instead of building them.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The PyTorch reference script. Default `$PERPLEX_REFERENCE`, else
    /// `../shared/reference/pytorch_gru_lm.py` (`pytorch_gpt_lm.py` for the Transformer,
    /// `reference/hf_llama_lm.py` for the Llama) from the workspace root.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Run perplex only.
    #[arg(long)]
    no_reference: bool,
    /// Also write the JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Kill a run after this many seconds. Default 900 (120 with --quick).
    #[arg(long)]
    run_timeout_s: Option<u64>,
    /// Keep the perplex run directories (under `<target>/bench/runs`).
    #[arg(long)]
    keep_runs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Model {
    Gru,
    Transformer,
    /// The Llama-family decoder against transformers' own `LlamaForCausalLM`
    /// (`reference/hf_llama_lm.py`).
    Llama,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PrecisionArg {
    F32,
    Bf16,
}

impl PrecisionArg {
    fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Level {
    Word,
    Char,
    Both,
}

/// Settings after defaults.
#[derive(Debug)]
struct Plan {
    steps: u64,
    warmup: u64,
    pairs: usize,
    levels: Vec<&'static str>,
    threads: usize,
    device: String,
    timeout: Duration,
    model: Model,
    precision: PrecisionArg,
}

fn plan(a: &TrainArgs) -> Result<Plan> {
    let q = a.quick;
    let pairs = a.pairs.unwrap_or(if q { 1 } else { 3 });
    if !q && pairs < 3 {
        bail!("--pairs {pairs}: at least 3 pairs are needed for a median and a range (or use --quick)");
    }
    let steps = a.steps.unwrap_or(if q { 2 } else { 20 });
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    let levels = match (a.model, a.level) {
        (Model::Transformer | Model::Llama, None | Some(Level::Char)) => vec!["char"],
        (Model::Transformer | Model::Llama, Some(l)) => {
            bail!(
                "--model {:?} runs at char level (its reference's setting), not {l:?}",
                a.model
            )
        }
        (Model::Gru, l) => match l.unwrap_or(if q { Level::Char } else { Level::Both }) {
            Level::Word => vec!["word"],
            Level::Char => vec!["char"],
            Level::Both => vec!["word", "char"],
        },
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Ok(Plan {
        steps,
        warmup: a.warmup.unwrap_or(if q { 1 } else { 5 }),
        pairs,
        levels,
        threads: a.threads.unwrap_or(cpus),
        device: a.device.clone(),
        timeout: Duration::from_secs(a.run_timeout_s.unwrap_or(if q { 120 } else { 900 })),
        model: a.model,
        precision: a.precision,
    })
}

/// The batch shape, read from the resolved perplex config.
#[derive(Debug, Clone, Copy)]
struct Shapes {
    batch: f64,
    seq: f64,
}

impl Shapes {
    fn tokens(&self) -> f64 {
        self.batch * self.seq
    }
}

/// One run of one side.
#[derive(Debug, Default)]
struct RunOutcome {
    error: Option<String>,
    tokens_per_s: f64,
    median_step_ms: f64,
    step_ms: Vec<f64>,
    peak_rss_mib: f64,
    minor_faults: f64,
    first_step_s: f64,
    vocab: Option<f64>,
    wall_s: f64,
    self_reported: Value,
    source: &'static str,
}

impl RunOutcome {
    fn failed(error: String) -> Self {
        Self {
            error: Some(error),
            tokens_per_s: f64::NAN,
            median_step_ms: f64::NAN,
            peak_rss_mib: f64::NAN,
            minor_faults: f64::NAN,
            first_step_s: f64::NAN,
            ..Self::default()
        }
    }

    fn to_json(&self, pair: usize, side: &str, load: [f64; 3], log: &Path) -> Value {
        json!({
            "pair": pair,
            "side": side,
            "ok": self.error.is_none(),
            "error": self.error,
            "tokens_per_s": finite(self.tokens_per_s),
            "median_step_ms": finite(self.median_step_ms),
            "timed_steps": self.step_ms.len(),
            "step_ms": self.step_ms,
            "step_times_from": self.source,
            "peak_rss_mib": finite(self.peak_rss_mib),
            "minor_faults": finite(self.minor_faults),
            "first_step_s": finite(self.first_step_s),
            "wall_s": self.wall_s,
            "self_reported": self.self_reported,
            "loadavg_before": load,
            "log": log,
        })
    }
}

/// Everything the perplex side needs for one level.
struct PerplexSide<'a> {
    bin: &'a Path,
    config: PathBuf,
    overrides: Vec<String>,
    shapes: Shapes,
}

/// Resolves the perplex config for `level` (`--dry-run`), checking that the trainer knows the
/// benchmark's keys; drops `trainer.eval=false` (with a note) where it does not yet.
fn prepare_perplex<'a>(
    bin: &'a Path,
    level: &str,
    p: &Plan,
    user: &[String],
    torch: &Option<Torch>,
) -> Result<PerplexSide<'a>> {
    let config = crate::workspace_root().join(match (p.model, level) {
        (Model::Transformer, _) => "examples/configs/gpt-tinyshakespeare-char.toml",
        (Model::Llama, _) => "examples/configs/llama-tinyshakespeare-char.toml",
        (Model::Gru, "word") => "examples/configs/gru-tinyshakespeare.toml",
        (Model::Gru, _) => "examples/configs/gru-char-tinyshakespeare.toml",
    });
    let mut overrides: Vec<String> = vec![
        "trainer.log_every=1".into(),
        "trainer.eval=false".into(),
        format!("trainer.max_steps={}", p.warmup + p.steps),
        "trainer.epochs=1000".into(),
        format!("trainer.threads={}", p.threads),
        format!("trainer.device={}", p.device),
    ];
    if p.precision == PrecisionArg::Bf16 {
        overrides.push("trainer.precision=bf16".into());
    }
    overrides.extend(user.iter().cloned());
    let dry = |ov: &[String]| -> Result<Finished> {
        let mut cmd = super::command(bin, torch);
        cmd.arg("train")
            .arg("--config")
            .arg(&config)
            .arg("--dry-run");
        for o in ov {
            cmd.arg("--set").arg(o);
        }
        child::run(&mut cmd, Duration::from_secs(60), None)
    };
    let out = dry(&overrides)?;
    let cfg = super::resolved_config(&out)?;
    let num = |section: &str, key: &str, default: f64| -> f64 {
        cfg.get(section)
            .and_then(|s| s.get(key))
            .and_then(|v| v.as_integer().map(|i| i as f64).or_else(|| v.as_float()))
            .unwrap_or(default)
    };
    let shapes = Shapes {
        batch: num("data", "batch_size", 64.0),
        seq: num("data", "seq_len", 35.0),
    };
    Ok(PerplexSide {
        bin,
        config,
        overrides,
        shapes,
    })
}

fn run_perplex(
    side: &PerplexSide,
    p: &Plan,
    run_root: &Path,
    name: &str,
    log: &Path,
    torch: &Option<Torch>,
) -> Result<RunOutcome> {
    let mut cmd = super::command(side.bin, torch);
    cmd.arg("train").arg("--config").arg(&side.config);
    for o in &side.overrides {
        cmd.arg("--set").arg(o);
    }
    cmd.arg("--set")
        .arg(format!("trainer.run_dir=\"{}\"", run_root.display()))
        .arg("--set")
        .arg(format!("trainer.run_name=\"{name}\""));
    let out = child::run(&mut cmd, p.timeout, Some(log))?;
    if !out.success() {
        return Ok(RunOutcome::failed(format!(
            "perplex: {} (log {}):\n{}",
            out.describe(),
            log.display(),
            out.tail(15)
        )));
    }
    let run_dir = run_root.join(name);
    let (lo, hi) = (p.warmup, p.warmup + p.steps);
    // Per-step records of metrics.jsonl (`kind = "train"`, `log_every = 1`).
    let mut step_ms = Vec::new();
    let source = "metrics.jsonl";
    if let Ok(text) = std::fs::read_to_string(run_dir.join("metrics.jsonl")) {
        for rec in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            if rec.get("kind").and_then(Value::as_str) != Some("train") {
                continue;
            }
            let Some(step) = rec.get("step").and_then(Value::as_u64) else {
                continue;
            };
            if step <= lo || step > hi {
                continue;
            }
            if let Some(ms) = rec.get("step_ms").and_then(Value::as_f64) {
                step_ms.push(ms);
            }
        }
    }
    let summary: Value = std::fs::read_to_string(run_dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let first_step_s = summary
        .get("first_step_s")
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN);
    let vocab = out
        .lines
        .iter()
        .find_map(|l| parse_f64(field(&l.text, "vocab")));
    if step_ms.len() < p.steps as usize {
        return Ok(RunOutcome::failed(format!(
            "perplex: {} timed step times found, {} expected (per-step `train` records in {}; \
             log {})",
            step_ms.len(),
            p.steps,
            run_dir.join("metrics.jsonl").display(),
            log.display()
        )));
    }
    let med = median(&step_ms);
    Ok(RunOutcome {
        error: None,
        tokens_per_s: side.shapes.tokens() / med * 1e3,
        median_step_ms: med,
        step_ms,
        peak_rss_mib: out.peak_rss_mib,
        minor_faults: out.minor_faults as f64,
        first_step_s,
        vocab,
        wall_s: out.wall_s,
        self_reported: json!({ "summary": summary }),
        source,
    })
}

/// The reference script's arguments for a run.
fn run_pytorch(
    python: &Path,
    script: &Path,
    corpus: Option<&Path>,
    level: &str,
    p: &Plan,
    log: &Path,
    torch: &Option<Torch>,
) -> Result<RunOutcome> {
    let mut cmd = super::command(python, torch);
    cmd.env("PYTHONUNBUFFERED", "1").arg(script);
    if p.model == Model::Gru {
        cmd.args(["--level", level, "--epochs", "1000"]);
    }
    cmd.args(["--bench_only", "--precision", p.precision.name()])
        .args(["--warmup", &p.warmup.to_string()])
        .args(["--timed", &p.steps.to_string()])
        .args(["--threads", &p.threads.to_string()])
        .args(["--device", &p.device]);
    if let Some(c) = corpus {
        cmd.arg("--data").arg(c);
    }
    let out = child::run(&mut cmd, p.timeout, Some(log))?;
    let result: Option<Value> = out
        .lines
        .iter()
        .filter(|l| l.stream == Stream::Stdout)
        .find_map(|l| serde_json::from_str(l.text.strip_prefix("RESULT ")?).ok());
    let Some(result) = result.filter(|_| out.success()) else {
        return Ok(RunOutcome::failed(format!(
            "PyTorch reference: {}, no RESULT line (log {}):\n{}",
            out.describe(),
            log.display(),
            out.tail(15)
        )));
    };
    let get = |k: &str| result.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    // Printed after `loss.item()` of step 1 (the GRU reference prints steps 1-3 and every 20th,
    // the GPT reference iterations 0, 100, ...).
    let first = out
        .first_line_with(&[match p.model {
            Model::Gru => "ep 1 step 1 ",
            Model::Transformer | Model::Llama => "iter 0 loss",
        }])
        .map(|l| l.at_s)
        .unwrap_or(f64::NAN);
    // The GRU reference reports `timed_steps`; the GPT reference its `iters` (warm-up + timed).
    let timed = result
        .get("timed_steps")
        .and_then(Value::as_u64)
        .or_else(|| {
            result
                .get("iters")
                .and_then(Value::as_u64)
                .map(|i| i.saturating_sub(p.warmup))
        })
        .unwrap_or(0);
    if timed < p.steps {
        return Ok(RunOutcome::failed(format!(
            "PyTorch reference timed {timed} steps, {} asked (log {})",
            p.steps,
            log.display()
        )));
    }
    Ok(RunOutcome {
        error: None,
        tokens_per_s: get("median_tok_per_s"),
        median_step_ms: get("median_step_ms"),
        step_ms: Vec::new(),
        peak_rss_mib: out.peak_rss_mib,
        minor_faults: out.minor_faults as f64,
        first_step_s: first,
        vocab: result.get("V").and_then(Value::as_f64),
        wall_s: out.wall_s,
        self_reported: result,
        source: "RESULT line",
    })
}

/// The matmul ceiling (GFLOP/s) at `[m, k] x [k, n]`, in the bench's precision (a bf16 run's
/// matmuls are bfloat16 under autocast, so its ceiling is bfloat16's).
fn ceiling(bin: &Path, shape: (f64, f64, f64), p: &Plan, torch: &Option<Torch>) -> Result<Value> {
    let mut cmd = super::example_command(bin, torch, &p.device);
    cmd.args(["--m", &shape.0.to_string()])
        .args(["--k", &shape.1.to_string()])
        .args(["--n", &shape.2.to_string()])
        .args(["--threads", &p.threads.to_string()])
        .args(["--device", &p.device])
        .args(["--dtype", p.precision.name()]);
    let out = child::run(&mut cmd, Duration::from_secs(120), None)?;
    let v = out
        .lines
        .iter()
        .filter(|l| l.stream == Stream::Stdout)
        .find_map(|l| serde_json::from_str::<Value>(&l.text).ok());
    match v {
        Some(v) if out.success() => Ok(v),
        _ => bail!(
            "matmul_ceiling failed ({}):\n{}",
            out.describe(),
            out.tail(10)
        ),
    }
}

/// Finds the corpus file the reference should read (the same bytes perplex reads).
fn corpus_file() -> Option<PathBuf> {
    let root = crate::workspace_root();
    let mut c = Vec::new();
    if let Some(m) = std::env::var_os("PERPLEX_DATA_MIRROR") {
        c.push(PathBuf::from(m).join("tinyshakespeare/input.txt"));
    }
    c.push(root.join("data/tinyshakespeare/input.txt"));
    c.push(root.join("../shared/data/tinyshakespeare/input.txt"));
    c.into_iter().find(|p| p.is_file())
}

fn reference_script(a: &TrainArgs) -> Option<PathBuf> {
    if a.no_reference {
        return None;
    }
    let p = a
        .reference
        .clone()
        .or_else(|| std::env::var_os("PERPLEX_REFERENCE").map(PathBuf::from))
        .unwrap_or_else(|| {
            crate::workspace_root().join(match a.model {
                Model::Gru => "../shared/reference/pytorch_gru_lm.py",
                Model::Transformer => "../shared/reference/pytorch_gpt_lm.py",
                Model::Llama => "reference/hf_llama_lm.py",
            })
        });
    Some(p)
}

/// One level's runs: (perplex, PyTorch) per pair, and their JSON records.
struct LevelRuns {
    level: String,
    pairs: Vec<(RunOutcome, RunOutcome)>,
    runs_json: Vec<Value>,
}

/// Statistics of one side over its runs.
fn side_summary(runs: &[&RunOutcome], flop: f64, ceiling: f64) -> Value {
    let ok: Vec<&&RunOutcome> = runs.iter().filter(|r| r.error.is_none()).collect();
    let tps: Vec<f64> = ok.iter().map(|r| r.tokens_per_s).collect();
    let step: Vec<f64> = ok.iter().map(|r| r.median_step_ms).collect();
    let (lo, hi) = min_max(&tps);
    let step_med = median(&step);
    let gflops = flop / (step_med * 1e-3) / 1e9;
    json!({
        "runs_ok": ok.len(),
        "runs": runs.len(),
        "tokens_per_s_median": finite(median(&tps)),
        "tokens_per_s_min": finite(lo),
        "tokens_per_s_max": finite(hi),
        "step_ms_median": finite(step_med),
        "gflop_per_s": finite(gflops),
        "fraction_of_ceiling": finite(gflops / ceiling),
        "peak_rss_mib_median": finite(median(&ok.iter().map(|r| r.peak_rss_mib).collect::<Vec<_>>())),
        "minor_faults_median": finite(median(&ok.iter().map(|r| r.minor_faults).collect::<Vec<_>>())),
        "first_step_s_median": finite(median(&ok.iter().map(|r| r.first_step_s).collect::<Vec<_>>())),
    })
}

fn f(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// Runs the benchmark.
pub fn run(a: TrainArgs, torch: &Option<Torch>) -> Result<()> {
    let p = plan(&a)?;
    let unix = super::unix_time();
    let bin_dir = a.bin_dir.as_deref();
    let perplex = super::binary(torch, bin_dir, "perplex", &["-p", "perplex-cli"])?;
    let ceiling_bin = super::binary(
        torch,
        bin_dir,
        "matmul_ceiling",
        &["-p", "perplex-losses", "--example", "matmul_ceiling"],
    )?;
    let mut notes: Vec<String> = Vec::new();
    let script = match reference_script(&a) {
        Some(s) if s.is_file() => Some(s),
        Some(s) => {
            let n = format!(
                "PyTorch reference not found at {} (set PERPLEX_REFERENCE): perplex only",
                s.display()
            );
            eprintln!("xtask: {n}");
            notes.push(n);
            None
        }
        None => {
            notes.push("--no-reference: perplex only".into());
            None
        }
    };
    let python = if p.model == Model::Llama && script.is_some() {
        // The peer is transformers' LlamaForCausalLM: the pinned transformers beside torch.
        crate::ensure_py_hf(torch)?
    } else {
        torch
            .as_ref()
            .map(|t| t.python.clone())
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("python3"))
    };
    let corpus = corpus_file();
    let bench = super::bench_dir();
    let run_root = bench.join("runs");
    let log_dir = bench.join("logs").join(format!("train-{unix}"));
    let load_start = super::loadavg();
    if load_start[0] > p.threads as f64 * 0.5 {
        let n = format!(
            "machine busy at the start: load average {:.2} on {} CPUs (timings are noisy)",
            load_start[0],
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
        eprintln!("xtask: {n}");
        notes.push(n);
    }
    eprintln!(
        "xtask: bench train: {} pair(s) x {:?}, {} warm-up + {} timed steps, {} thread(s), {}; \
         logs in {}",
        p.pairs,
        p.levels,
        p.warmup,
        p.steps,
        p.threads,
        p.device,
        log_dir.display()
    );

    let mut sides = Vec::new();
    for level in &p.levels {
        sides.push(prepare_perplex(&perplex, level, &p, &a.overrides, torch)?);
    }
    // The ceiling: the seed word model's output projection ([2240 x 512] x [512 x 10001]), a
    // product large enough to reach the kernel's peak; the same for every model.
    let ceiling_shape = (2240.0, 512.0, 10_001.0);
    let ceiling_before = ceiling(&ceiling_bin, ceiling_shape, &p, torch)?;

    let mut level_json = serde_json::Map::new();
    let mut failures = Vec::new();
    let mut all: Vec<LevelRuns> = Vec::new();
    for (level, side) in p.levels.iter().zip(&sides) {
        let mut pairs = Vec::new();
        let mut runs_json = Vec::new();
        for i in 0..p.pairs {
            let name = format!("bench-{unix}-{level}-{i}");
            let log = log_dir.join(format!("{level}-{i}-perplex.log"));
            let load = super::loadavg();
            eprintln!("xtask: {level} pair {}/{}: perplex ...", i + 1, p.pairs);
            let pp = run_perplex(side, &p, &run_root, &name, &log, torch)?;
            if !a.keep_runs {
                let _ = std::fs::remove_dir_all(run_root.join(&name));
            }
            runs_json.push(pp.to_json(i, "perplex", load, &log));
            let py = match &script {
                Some(s) => {
                    let log = log_dir.join(format!("{level}-{i}-pytorch.log"));
                    let load = super::loadavg();
                    eprintln!("xtask: {level} pair {}/{}: PyTorch ...", i + 1, p.pairs);
                    let r = run_pytorch(&python, s, corpus.as_deref(), level, &p, &log, torch)?;
                    runs_json.push(r.to_json(i, "pytorch", load, &log));
                    r
                }
                None => RunOutcome::failed("not run".into()),
            };
            for (who, r) in [("perplex", &pp), ("pytorch", &py)] {
                if let Some(e) = &r.error {
                    if !(who == "pytorch" && script.is_none()) {
                        eprintln!("xtask: {level} pair {}: {e}", i + 1);
                        failures.push(format!("{level} pair {} {who}: {e}", i + 1));
                    }
                }
            }
            pairs.push((pp, py));
        }
        all.push(LevelRuns {
            level: level.to_string(),
            pairs,
            runs_json,
        });
    }
    let ceiling_after = ceiling(&ceiling_bin, ceiling_shape, &p, torch)?;
    let ceil =
        f(&ceiling_before, "ceiling_gflop_per_s").max(f(&ceiling_after, "ceiling_gflop_per_s"));
    let load_end = super::loadavg();

    let mut tables = Vec::new();
    for (runs, side) in all.into_iter().zip(&sides) {
        let LevelRuns {
            level,
            pairs,
            runs_json,
        } = runs;
        // Each side's own output size: perplex's vocabulary always holds `<unk>`, so at char
        // level it has one class more (66) than the reference (65); FLOPs use the reference's.
        let vocab_perplex = pairs.iter().find_map(|(a, _)| a.vocab);
        let vocab_pytorch = pairs.iter().find_map(|(_, b)| b.vocab);
        let vocab = vocab_pytorch
            .or(vocab_perplex)
            .unwrap_or(if level == "word" { 10_001.0 } else { 65.0 });
        // FLOPs as the model reports them (`LanguageModel::flops_per_token`, in summary.json):
        // the same model on both sides.
        let flops_per_token = pairs
            .iter()
            .find_map(|(a, _)| {
                a.self_reported
                    .pointer("/summary/utilisation/model_flops_per_token")
                    .and_then(Value::as_f64)
            })
            .unwrap_or(f64::NAN);
        let flop = flops_per_token * side.shapes.tokens();
        let pp: Vec<&RunOutcome> = pairs.iter().map(|(a, _)| a).collect();
        let py: Vec<&RunOutcome> = pairs.iter().map(|(_, b)| b).collect();
        let ratios: Vec<Value> = pairs
            .iter()
            .map(|(a, b)| finite(a.tokens_per_s / b.tokens_per_s))
            .collect();
        let ratio_vals: Vec<f64> = ratios.iter().filter_map(Value::as_f64).collect();
        let sp = side_summary(&pp, flop, ceil);
        let sy = if script.is_some() {
            side_summary(&py, flop, ceil)
        } else {
            Value::Null
        };
        let entry = json!({
            "vocab": vocab,
            "vocab_perplex": vocab_perplex,
            "vocab_pytorch": vocab_pytorch,
            "tokens_per_step": side.shapes.tokens(),
            "gflop_per_step": flop / 1e9,
            "model_flops_per_token": finite(flops_per_token),
            "shapes": { "batch": side.shapes.batch, "seq_len": side.shapes.seq },
            "perplex_overrides": side.overrides,
            "perplex": sp,
            "pytorch": sy,
            "ratios_perplex_over_pytorch": ratios,
            "median_ratio": finite(median(&ratio_vals)),
            "runs": runs_json,
        });
        tables.push(table(&level, &entry, &p, ceil));
        level_json.insert(level, entry);
    }
    let result = json!({
        "kind": "train",
        "unix_time": unix,
        "host": super::host(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "settings": {
            "pairs": p.pairs, "warmup": p.warmup, "steps": p.steps, "threads": p.threads,
            "device": p.device, "quick": a.quick, "levels": p.levels, "overrides": a.overrides,
            "model": format!("{:?}", p.model).to_lowercase(), "precision": p.precision.name(),
        },
        "reference": script,
        "python": python,
        "perplex": perplex,
        "flop_source": "perplex summary.json utilisation.model_flops_per_token (LanguageModel::flops_per_token) x tokens per step",
        "ceiling": {
            "shape": [ceiling_shape.0, ceiling_shape.1, ceiling_shape.2],
            "dtype": p.precision.name(),
            "before": ceiling_before,
            "after": ceiling_after,
            "gflop_per_s": ceil,
        },
        "levels": level_json,
        "notes": notes,
        "failures": failures,
    });
    let path = super::write_results("train", unix, &result, a.json.as_deref())?;
    println!();
    println!(
        "bench train: {} | {} thread(s) | load {:.2} -> {:.2} (1-min avg) | matmul ceiling {:.1} GFLOP/s ([{}x{}]x[{}x{}] {})",
        p.device, p.threads, load_start[0], load_end[0], ceil,
        ceiling_shape.0, ceiling_shape.1, ceiling_shape.1, ceiling_shape.2, p.precision.name()
    );
    println!(
        "model {:?}, precision {} on both sides",
        p.model,
        p.precision.name()
    );
    if !a.overrides.is_empty() {
        println!(
            "perplex side with --set {} (the PyTorch reference runs unchanged)",
            a.overrides.join(" --set ")
        );
    }
    for t in tables {
        println!("{t}");
    }
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

fn table(level: &str, e: &Value, p: &Plan, ceil: f64) -> String {
    let (vp, vy) = (f(e, "vocab_perplex"), f(e, "vocab_pytorch"));
    let vocab = if vp.is_finite() && vy.is_finite() && vp != vy {
        format!("{vp} (perplex, with <unk>) / {vy} (PyTorch)")
    } else {
        f(e, "vocab").to_string()
    };
    let mut s = format!(
        "\n{level} level: V = {}, {} tokens/step, {:.1} GFLOP/step; {} pair(s) x ({} warm-up + {} timed steps)\n",
        vocab,
        f(e, "tokens_per_step"),
        f(e, "gflop_per_step"),
        p.pairs,
        p.warmup,
        p.steps
    );
    s.push_str(&format!(
        "  {:<8} {:>10} {:>19} {:>9} {:>8} {:>10} {:>8} {:>12} {:>11}\n",
        "side",
        "tokens/s",
        "[min-max]",
        "step ms",
        "GFLOP/s",
        "% ceiling",
        "RSS MiB",
        "1st step s",
        "faults k"
    ));
    for side in ["perplex", "pytorch"] {
        let v = &e[side];
        if v.is_null() {
            continue;
        }
        let num = |x: f64, digits: usize| {
            if x.is_finite() {
                format!("{x:.digits$}")
            } else {
                "-".into()
            }
        };
        s.push_str(&format!(
            "  {:<8} {:>10} {:>19} {:>9} {:>8} {:>10} {:>8} {:>12} {:>11}\n",
            side,
            thousands(f(v, "tokens_per_s_median")),
            format!(
                "[{}-{}]",
                thousands(f(v, "tokens_per_s_min")),
                thousands(f(v, "tokens_per_s_max"))
            ),
            num(f(v, "step_ms_median"), 1),
            num(f(v, "gflop_per_s"), 1),
            num(100.0 * f(v, "gflop_per_s") / ceil, 1) + "%",
            num(f(v, "peak_rss_mib_median"), 0),
            num(f(v, "first_step_s_median"), 2),
            num(f(v, "minor_faults_median") / 1e3, 0),
        ));
    }
    if !e["pytorch"].is_null() {
        let r: Vec<String> = e["ratios_perplex_over_pytorch"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x.as_f64().map_or("-".into(), |x| format!("{x:.3}")))
                    .collect()
            })
            .unwrap_or_default();
        s.push_str(&format!(
            "  perplex/PyTorch tokens/s per pair: {} -> median {:.3}\n",
            r.join(" "),
            f(e, "median_ratio")
        ));
    }
    s
}
