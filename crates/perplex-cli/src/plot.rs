//! `perplex plot`: charts of a run's `metrics.jsonl` (loss, validation perplexity, learning
//! rate against the optimiser step) as PNG and SVG.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::chart::{Figure, Panel, Series, Style, BLUE, GREEN, ORANGE, PURPLE};
use crate::metrics_log::MetricsLog;

/// Arguments of `perplex plot`.
#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// The run directory (holding `metrics.jsonl`).
    pub run_dir: PathBuf,
    /// Where to write `metrics.png` and `metrics.svg`; default `RUN_DIR/plots`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// File stem of the figure inside the output directory.
const STEM: &str = "metrics";

/// Runs `perplex plot`.
///
/// # Errors
/// A missing run directory or metrics file, a metrics file with nothing to plot, or a chart that
/// cannot be written.
pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    if !args.run_dir.is_dir() {
        bail!(
            "run directory {} does not exist (give the directory a training run wrote)",
            args.run_dir.display()
        );
    }
    let metrics = args.run_dir.join(perplex_trainer::run_dir::files::METRICS);
    if !metrics.is_file() {
        bail!(
            "{} not found: the run has not logged any metrics yet (it is written as training \
             proceeds)",
            metrics.display()
        );
    }
    let text = std::fs::read_to_string(&metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let log = MetricsLog::parse(&text);
    if log.unreadable > 0 {
        eprintln!(
            "warning: {} of {} lines of {} are not JSON objects; skipped",
            log.unreadable,
            log.lines,
            metrics.display()
        );
    }
    if log.is_empty() {
        bail!(
            "{} has no training, validation or learning-rate records to plot ({} lines)",
            metrics.display(),
            log.lines
        );
    }
    let out = args.out.unwrap_or_else(|| args.run_dir.join("plots"));
    // A directory that can take files (created if missing), checked with the reason in words.
    perplex_trainer::run_dir::check_writable_dir(&out).context("--out")?;
    let name = run_name(&args.run_dir);
    // The unit of the loss is the run's tokenizer's; a config that cannot be read (an older or
    // newer format) only loses that detail.
    let unit = perplex_trainer::RunConfig::load(
        Some(&args.run_dir.join(perplex_trainer::run_dir::files::CONFIG)),
        &[],
    )
    .map(|c| c.data.tokenizer.unit())
    .unwrap_or("token");
    let files = figure(&log, &name, unit).save(&out.join(STEM))?;
    println!(
        "{} from {}",
        [
            (
                log.train_loss.len().max(log.epoch_train_loss.len()),
                "train point"
            ),
            (log.valid_loss.len(), "validation point"),
            (log.lr.len(), "learning-rate point"),
        ]
        .map(|(n, what)| format!("{n} {what}{}", if n == 1 { "" } else { "s" }))
        .join(", "),
        metrics.display()
    );
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

fn run_name(dir: &Path) -> String {
    std::path::absolute(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string())
}

/// The figure: loss (train and validation, test as dots), validation perplexity (log scale),
/// learning rate, each against the optimiser step.
/// `unit` is what the loss is counted per: `token` or `character`.
pub fn figure(log: &MetricsLog, run_name: &str, unit: &str) -> Figure {
    let mut loss = vec![];
    if !log.train_loss.is_empty() {
        loss.push(series("train", &log.train_loss, BLUE, Style::Line));
    }
    if !log.epoch_train_loss.is_empty() {
        // With per-step points the epoch means are a second, coarser view; alone they are the
        // only training curve.
        let label = if log.train_loss.is_empty() {
            "train (epoch mean)"
        } else {
            "train, epoch mean"
        };
        let style = if log.epoch_train_loss.len() > 1 && log.train_loss.is_empty() {
            Style::LineAndDots
        } else {
            Style::Dots
        };
        loss.push(series(label, &log.epoch_train_loss, PURPLE, style));
    }
    loss.push(series(
        "validation",
        &log.valid_loss,
        ORANGE,
        Style::LineAndDots,
    ));
    if !log.test_loss.is_empty() {
        loss.push(series("test", &log.test_loss, GREEN, Style::Dots));
    }
    // One step axis for all panels, so that they line up.
    let steps = [
        &log.train_loss,
        &log.epoch_train_loss,
        &log.valid_loss,
        &log.test_loss,
        &log.lr,
    ]
    .into_iter()
    .flatten()
    .map(|p| p.0)
    .filter(|s| s.is_finite());
    let x_range = steps.fold(None, |r: Option<(f64, f64)>, s| {
        Some(r.map_or((s, s), |(lo, hi)| (lo.min(s), hi.max(s))))
    });
    // A log axis helps only when perplexity spans more than a factor 10 (from the first
    // steps' vocabulary-sized values down); over less it would show a single tick.
    let (lo, hi) = log
        .valid_perplexity
        .iter()
        .map(|p| p.1)
        .filter(|p| p.is_finite() && *p > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), p| {
            (lo.min(p), hi.max(p))
        });
    let log_ppl = hi / lo > 10.0;
    Figure {
        title: format!("perplex run {run_name}"),
        panels: vec![
            Panel {
                title: "Loss".into(),
                x_label: "optimiser step".into(),
                y_label: format!("loss (nats per {unit})"),
                series: loss,
                x_range,
                ..Default::default()
            },
            Panel {
                title: "Validation perplexity".into(),
                x_label: "optimiser step".into(),
                y_label: if log_ppl {
                    "perplexity (log scale)".into()
                } else {
                    "perplexity".into()
                },
                log_y: log_ppl,
                x_range,
                series: vec![series(
                    "validation",
                    &log.valid_perplexity,
                    ORANGE,
                    Style::LineAndDots,
                )],
                ..Default::default()
            },
            Panel {
                title: "Learning rate".into(),
                x_label: "optimiser step".into(),
                y_label: "learning rate".into(),
                series: vec![series("lr", &log.lr, PURPLE, Style::Line)],
                x_range,
                ..Default::default()
            },
        ],
    }
}

fn series(
    label: &str,
    points: &[(f64, f64)],
    color: plotters::style::RGBColor,
    style: Style,
) -> Series {
    // A one-point line is invisible: draw it as a dot.
    let style = if points.len() == 1 && style == Style::Line {
        Style::Dots
    } else {
        style
    };
    Series {
        label: label.into(),
        points: points.to_vec(),
        color,
        style,
    }
}
