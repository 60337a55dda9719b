//! Hooks into the training loop.
//!
//! A [`Callback`] observes events and answers with decisions as data ([`Action`]s) instead of
//! steering the loop itself (the shape of burn's checkpointing strategies). Metrics logging,
//! early stopping and the progress bar are callbacks; users composing their own trainer add theirs
//! with [`crate::Trainer::add_callback`].
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use tch::Tensor;

use crate::run_dir::{append_metrics, files};
use crate::{EpochStats, EvalStats, TrainerError};

/// What a callback asks the loop to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Stop training after this event (a final checkpoint is written).
    Stop {
        /// Why, for the log.
        reason: String,
    },
}

/// The end of one optimiser step.
#[derive(Debug)]
pub struct StepEvent<'a> {
    /// Epoch (1-based).
    pub epoch: u64,
    /// Optimiser steps taken, this one included.
    pub step: u64,
    /// Window index of this step within the epoch.
    pub window: usize,
    /// Windows per epoch.
    pub windows: usize,
    /// The step's training loss (detached scalar on the device; reading it waits for the step).
    pub loss: &'a Tensor,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Global L2 norm of the gradients before clipping (NaN when the step was skipped for a
    /// non-finite loss, before the gradient was looked at).
    pub grad_norm: f64,
    /// The loss's own metrics for this step (e.g. each `weighted_sum` term, before its weight),
    /// detached float64 scalars on the device.
    pub metrics: &'a [(String, Tensor)],
    /// Target tokens in this step.
    pub tokens: u64,
    /// Seconds since the previous step ended (host time: on CUDA it is only meaningful when the
    /// loss is read).
    pub step_seconds: f64,
    /// Seconds since training started (this process).
    pub elapsed_seconds: f64,
}

/// The end of one validation.
#[derive(Debug, Clone)]
pub struct EvalEvent {
    /// Epoch (1-based) during or after which it ran.
    pub epoch: u64,
    /// Optimiser steps taken.
    pub step: u64,
    /// Validation metrics.
    pub stats: EvalStats,
    /// Whether this is the best validation loss so far.
    pub improved: bool,
    /// Validations since the best one (0 when `improved`).
    pub evals_without_improvement: u64,
    /// Seconds the validation took.
    pub seconds: f64,
}

/// A checkpoint was written.
#[derive(Debug, Clone)]
pub struct CheckpointEvent {
    /// Its directory.
    pub path: PathBuf,
    /// Optimiser steps taken.
    pub step: u64,
}

/// Observes the loop. Every method has a default that does nothing.
pub trait Callback: Send {
    /// After each optimiser step.
    ///
    /// # Errors
    /// A callback error stops the run.
    fn on_step_end(&mut self, _event: &StepEvent) -> Result<Vec<Action>, TrainerError> {
        Ok(Vec::new())
    }

    /// After each validation.
    ///
    /// # Errors
    /// A callback error stops the run.
    fn on_eval_end(&mut self, _event: &EvalEvent) -> Result<Vec<Action>, TrainerError> {
        Ok(Vec::new())
    }

    /// After each epoch.
    ///
    /// # Errors
    /// A callback error stops the run.
    fn on_epoch_end(&mut self, _stats: &EpochStats) -> Result<Vec<Action>, TrainerError> {
        Ok(Vec::new())
    }

    /// After each checkpoint is written.
    ///
    /// # Errors
    /// A callback error stops the run.
    fn on_checkpoint(&mut self, _event: &CheckpointEvent) -> Result<Vec<Action>, TrainerError> {
        Ok(Vec::new())
    }
}

impl<C: Callback + ?Sized> Callback for Box<C> {
    fn on_step_end(&mut self, e: &StepEvent) -> Result<Vec<Action>, TrainerError> {
        (**self).on_step_end(e)
    }
    fn on_eval_end(&mut self, e: &EvalEvent) -> Result<Vec<Action>, TrainerError> {
        (**self).on_eval_end(e)
    }
    fn on_epoch_end(&mut self, s: &EpochStats) -> Result<Vec<Action>, TrainerError> {
        (**self).on_epoch_end(s)
    }
    fn on_checkpoint(&mut self, e: &CheckpointEvent) -> Result<Vec<Action>, TrainerError> {
        (**self).on_checkpoint(e)
    }
}

/// Stops when the validation loss has not improved for `patience` validations.
#[derive(Debug, Clone)]
pub struct EarlyStopping {
    /// Validations without improvement tolerated.
    pub patience: u64,
}

impl Callback for EarlyStopping {
    fn on_eval_end(&mut self, e: &EvalEvent) -> Result<Vec<Action>, TrainerError> {
        if self.patience > 0 && e.evals_without_improvement >= self.patience {
            return Ok(vec![Action::Stop {
                reason: format!(
                    "early stopping: no improvement of the validation loss in {} validations",
                    e.evals_without_improvement
                ),
            }]);
        }
        Ok(Vec::new())
    }
}

/// Logs through `tracing` and writes `metrics.jsonl` and `metrics.csv` in the run directory.
///
/// Training lines (`"kind": "train"`) average the loss and step time over the last `every` steps
/// and are the only place the loss is read on the host.
#[derive(Debug)]
pub struct MetricsLogger {
    every: u64,
    dir: Option<PathBuf>,
    window_loss: Option<Tensor>,
    /// Sums of the loss's metrics over the window, by name.
    window_metrics: Vec<(String, Tensor)>,
    /// Columns of `metrics.csv` after [`CSV_COLUMNS`]: the loss's metrics, fixed by the file's
    /// header (or the first training record of a new file).
    metric_columns: Option<Vec<String>>,
    window_steps: u64,
    window_tokens: u64,
    window_seconds: f64,
}

/// Columns of `metrics.csv`, in order (each a key of the JSON records).
pub const CSV_COLUMNS: [&str; 9] = [
    "kind",
    "epoch",
    "step",
    "loss",
    "perplexity",
    "lr",
    "tokens_per_sec",
    "step_ms",
    "elapsed_s",
];

impl MetricsLogger {
    /// Logs every `every` steps (0: only validations and epochs); writes files under `dir`.
    pub fn new(every: u64, dir: Option<PathBuf>) -> Self {
        Self {
            every,
            dir,
            window_loss: None,
            window_metrics: Vec::new(),
            metric_columns: None,
            window_steps: 0,
            window_tokens: 0,
            window_seconds: 0.0,
        }
    }

    fn write(&mut self, record: serde_json::Value) -> Result<(), TrainerError> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        append_metrics(&dir.join(files::METRICS), &record)?;
        let csv_path = dir.join(files::METRICS_CSV);
        let extra = self
            .metric_columns
            .get_or_insert_with(|| existing_metric_columns(&csv_path, &record))
            .clone();
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        let mut row: Vec<String> = CSV_COLUMNS
            .iter()
            .map(|k| record.get(*k).map(text).unwrap_or_default())
            .collect();
        row.extend(extra.iter().map(|k| {
            record
                .get("metrics")
                .and_then(|m| m.get(k))
                .map(text)
                .unwrap_or_default()
        }));
        let mut header: Vec<String> = CSV_COLUMNS.iter().map(|c| c.to_string()).collect();
        header.extend(extra.iter().map(|m| format!("metrics.{m}")));
        append_line(&csv_path, &header.join(","), &row.join(","))
    }
}

/// The loss-metric columns of `metrics.csv`: those of its header when the file exists (a resumed
/// run), else the metrics of `record`, sorted.
fn existing_metric_columns(csv: &Path, record: &serde_json::Value) -> Vec<String> {
    if let Ok(text) = std::fs::read_to_string(csv) {
        if let Some(header) = text.lines().next() {
            return header
                .split(',')
                .filter_map(|c| c.strip_prefix("metrics."))
                .map(str::to_string)
                .collect();
        }
    }
    let mut names: Vec<String> = record
        .get("metrics")
        .and_then(serde_json::Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Drops the records of `metrics.jsonl` and the rows of `metrics.csv` in `run` whose step is
/// after `step` (a resume from the checkpoint at `step` writes them again), each file rewritten
/// atomically. Records without a step are kept. With `partial_epoch` (a checkpoint written
/// mid-epoch, by an interrupt), that epoch's `epoch` record is dropped too: it averaged only the
/// steps before the interruption, and the resumed run writes the epoch's whole record.
///
/// # Errors
/// [`TrainerError::Io`] naming the file.
pub fn truncate_metrics(
    run: &Path,
    step: u64,
    partial_epoch: Option<u64>,
) -> Result<(), TrainerError> {
    let keep_step = |s: Option<u64>| s.is_none_or(|s| s <= step);
    let keep = |kind: Option<&str>, epoch: Option<u64>, s: Option<u64>| {
        keep_step(s) && !(kind == Some("epoch") && partial_epoch.is_some_and(|p| epoch == Some(p)))
    };
    let jsonl = run.join(files::METRICS);
    if let Ok(text) = std::fs::read_to_string(&jsonl) {
        let kept: String = text
            .lines()
            .filter(|l| {
                let Ok(r) = serde_json::from_str::<serde_json::Value>(l) else {
                    return true;
                };
                keep(
                    r.get("kind").and_then(serde_json::Value::as_str),
                    r.get("epoch").and_then(serde_json::Value::as_u64),
                    r.get("step").and_then(serde_json::Value::as_u64),
                )
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if kept.len() != text.len() {
            crate::run_dir::write_atomically(&jsonl, kept.as_bytes())?;
        }
    }
    let csv = run.join(files::METRICS_CSV);
    if let Ok(text) = std::fs::read_to_string(&csv) {
        let column = |name: &str| {
            CSV_COLUMNS
                .iter()
                .position(|c| *c == name)
                .expect("a fixed column")
        };
        let (kind, epoch, step) = (column("kind"), column("epoch"), column("step"));
        let kept: String = text
            .lines()
            .enumerate()
            .filter(|(i, l)| {
                let cells: Vec<&str> = l.split(',').collect();
                *i == 0
                    || keep(
                        cells.get(kind).copied(),
                        cells.get(epoch).and_then(|v| v.parse().ok()),
                        cells.get(step).and_then(|v| v.parse().ok()),
                    )
            })
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        if kept.len() != text.len() {
            crate::run_dir::write_atomically(&csv, kept.as_bytes())?;
        }
    }
    Ok(())
}

fn append_line(path: &Path, header: &str, row: &str) -> Result<(), TrainerError> {
    use std::io::Write;
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainerError::io(path, e))?;
    if new {
        writeln!(f, "{header}").map_err(|e| TrainerError::io(path, e))?;
    }
    writeln!(f, "{row}").map_err(|e| TrainerError::io(path, e))
}

impl Callback for MetricsLogger {
    fn on_step_end(&mut self, e: &StepEvent) -> Result<Vec<Action>, TrainerError> {
        if self.every == 0 {
            return Ok(Vec::new());
        }
        self.window_steps += 1;
        self.window_tokens += e.tokens;
        self.window_seconds += e.step_seconds;
        // Sum on the device and read once per line, so steps never wait for the host.
        let l = e.loss.to_kind(tch::Kind::Double);
        self.window_loss = Some(match self.window_loss.take() {
            Some(sum) => sum + l,
            None => l,
        });
        for (name, value) in e.metrics {
            match self.window_metrics.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => *sum = &*sum + value,
                None => self
                    .window_metrics
                    .push((name.clone(), value.shallow_clone())),
            }
        }
        if e.step.is_multiple_of(self.every) {
            let n = self.window_steps as f64;
            let sum = self
                .window_loss
                .take()
                .map(|t| t.double_value(&[]))
                .unwrap_or(0.0);
            let loss = sum / n;
            let tps = self.window_tokens as f64 / self.window_seconds.max(1e-9);
            let step_ms = 1000.0 * self.window_seconds / n;
            let metrics: serde_json::Map<String, serde_json::Value> = self
                .window_metrics
                .drain(..)
                .map(|(name, sum)| (name, serde_json::json!(sum.double_value(&[]) / n)))
                .collect();
            let terms = metrics
                .iter()
                .map(|(k, v)| format!("{k}={:.4}", v.as_f64().unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
                .join(" ");
            // The loss's metrics (each weighted_sum term) follow the message, when there are any.
            let message = if terms.is_empty() {
                "train".to_string()
            } else {
                format!("train {terms}")
            };
            tracing::info!(
                epoch = e.epoch,
                step = e.step,
                loss = format!("{loss:.4}"),
                tokens_per_sec = format!("{tps:.0}"),
                step_ms = format!("{step_ms:.1}"),
                lr = e.lr,
                grad_norm = format!("{:.4}", e.grad_norm),
                "{message}"
            );
            self.write(serde_json::json!({
                "kind": "train", "epoch": e.epoch, "step": e.step, "loss": loss, "lr": e.lr,
                "grad_norm": e.grad_norm.is_finite().then_some(e.grad_norm),
                "tokens_per_sec": tps, "step_ms": step_ms, "elapsed_s": e.elapsed_seconds,
                "metrics": metrics,
            }))?;
            self.window_steps = 0;
            self.window_tokens = 0;
            self.window_seconds = 0.0;
        }
        Ok(Vec::new())
    }

    fn on_eval_end(&mut self, e: &EvalEvent) -> Result<Vec<Action>, TrainerError> {
        tracing::info!(
            epoch = e.epoch,
            step = e.step,
            valid_loss = format!("{:.4}", e.stats.loss),
            valid_ppl = format!("{:.2}", e.stats.perplexity),
            best = e.improved,
            eval_s = format!("{:.1}", e.seconds),
            "validation"
        );
        self.write(serde_json::json!({
            "kind": "valid", "epoch": e.epoch, "step": e.step, "loss": e.stats.loss,
            "perplexity": e.stats.perplexity, "bits": e.stats.bits, "tokens": e.stats.tokens,
            "improved": e.improved,
        }))?;
        Ok(Vec::new())
    }

    fn on_epoch_end(&mut self, s: &EpochStats) -> Result<Vec<Action>, TrainerError> {
        tracing::info!(
            epoch = s.epoch,
            step = s.step,
            train_loss = format!("{:.4}", s.train_loss),
            valid_loss = s.valid.map(|v| format!("{:.4}", v.loss)),
            valid_ppl = s.valid.map(|v| format!("{:.2}", v.perplexity)),
            tokens_per_sec = format!("{:.0}", s.tokens_per_sec),
            lr = s.lr,
            train_s = format!("{:.1}", s.train_seconds),
            "epoch done"
        );
        let mut v =
            serde_json::to_value(s).map_err(|e| TrainerError::io(Path::new("metrics"), e))?;
        v["kind"] = "epoch".into();
        v["loss"] = s.train_loss.into();
        self.write(v)?;
        Ok(Vec::new())
    }
}

/// An indicatif progress bar per epoch (loss, perplexity, tokens/s, ETA), drawn only when stderr
/// is a terminal; log lines are printed above it (see [`progress_bars`]).
#[derive(Debug)]
pub struct ProgressBar {
    bar: Option<indicatif::ProgressBar>,
    epoch: u64,
    /// Whether stderr is a terminal, asked once (not a system call per step).
    enabled: bool,
}

/// The process-wide bar container. A binary's log writer should print through
/// `progress_bars().suspend(..)` so that log lines and the bar do not overwrite each other.
pub fn progress_bars() -> &'static indicatif::MultiProgress {
    static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(indicatif::MultiProgress::new)
}

impl ProgressBar {
    /// A bar if stderr is a terminal, else nothing.
    pub fn new() -> Self {
        Self {
            bar: None,
            epoch: 0,
            enabled: std::io::stderr().is_terminal(),
        }
    }
}

impl Default for ProgressBar {
    fn default() -> Self {
        Self::new()
    }
}

impl Callback for ProgressBar {
    fn on_step_end(&mut self, e: &StepEvent) -> Result<Vec<Action>, TrainerError> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        if self.bar.is_none() || self.epoch != e.epoch {
            if let Some(b) = self.bar.take() {
                b.finish_and_clear();
            }
            let b = progress_bars().add(indicatif::ProgressBar::new(e.windows as u64));
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(e.epoch.to_string());
            b.set_position(e.window as u64);
            self.bar = Some(b);
            self.epoch = e.epoch;
        }
        if let Some(b) = &self.bar {
            b.set_position(e.window as u64 + 1);
            if e.step.is_multiple_of(5) || e.window == 0 {
                let loss = e.loss.double_value(&[]);
                b.set_message(format!(
                    "loss {loss:.3} ppl {:.1} {:.0} tok/s",
                    loss.exp(),
                    e.tokens as f64 / e.step_seconds.max(1e-9)
                ));
            }
        }
        Ok(Vec::new())
    }

    fn on_epoch_end(&mut self, _s: &EpochStats) -> Result<Vec<Action>, TrainerError> {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        Ok(Vec::new())
    }
}
