//! `perplex lr-find`: the learning-rate range test, printed, saved as CSV and plotted.
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;

use perplex_trainer::{lr_find, LrFindOptions, LrFindResult, LrFindStop, RunConfig};

use crate::chart::{tick, Figure, Panel, Series, Style, BLUE, LIGHT_BLUE, RED};

/// Arguments of `perplex lr-find`.
#[derive(Debug, clap::Args)]
pub struct LrFindArgs {
    /// Run config (TOML); without it the built-in defaults.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override a config value: `--set optim.type=sgd` (repeatable), as for `perplex train`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Learning rate of the first step.
    #[arg(long, default_value_t = 1e-7)]
    pub min_lr: f64,
    /// Learning rate of the last step.
    #[arg(long, default_value_t = 10.0)]
    pub max_lr: f64,
    /// Optimiser steps (fewer if the loss diverges first).
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Directory for `lr_find.csv`, `lr_find.png` and `lr_find.svg`.
    #[arg(long, default_value = "runs/lr-find")]
    pub out: PathBuf,
}

/// Runs `perplex lr-find`.
///
/// # Errors
/// A bad config or option, a failure building or training the model, files that cannot be
/// written.
pub fn run(args: LrFindArgs) -> anyhow::Result<()> {
    let config = RunConfig::load(args.config.as_deref(), &args.overrides)?;
    // Before training: the output directory must take files.
    perplex_trainer::run_dir::check_writable_dir(&args.out).context("--out")?;
    let options = LrFindOptions {
        min_lr: args.min_lr,
        max_lr: args.max_lr,
        steps: args.steps,
        ..Default::default()
    };
    let result = lr_find(config, &options)?;
    print!("{}", table(&result));
    match result.stop {
        LrFindStop::Completed => println!("took all {} steps", result.points.len()),
        LrFindStop::Diverged => println!(
            "stopped at step {}: the smoothed loss passed {}x its best",
            result.points.len(),
            options.divergence_factor
        ),
        LrFindStop::NonFinite => println!(
            "stopped at step {}: the loss or a gradient became non-finite",
            result.points.len()
        ),
    }
    match result.suggestion {
        Some(lr) => println!(
            "suggested lr: {lr:.3e} (steepest descent of the smoothed loss; set optim.lr={lr:.1e})"
        ),
        None => println!("no suggestion: too few finite points (take more --steps)"),
    }

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let csv_path = args.out.join("lr_find.csv");
    let mut csv = String::from("step,lr,loss,smoothed_loss\n");
    for p in &result.points {
        writeln!(csv, "{},{:e},{},{}", p.step, p.lr, p.loss, p.smoothed)?;
    }
    perplex_trainer::run_dir::write_atomically(&csv_path, csv.as_bytes())?;
    println!("wrote {}", csv_path.display());
    for f in figure(&result).save(&args.out.join("lr_find"))? {
        println!("wrote {}", f.display());
    }
    Ok(())
}

/// At most this many rows are printed; the CSV has them all.
const MAX_ROWS: usize = 40;

fn table(result: &LrFindResult) -> String {
    let n = result.points.len();
    let every = n.div_ceil(MAX_ROWS).max(1);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>5} {:>10} {:>10} {:>10}",
        "step", "lr", "loss", "smoothed"
    );
    for (i, p) in result.points.iter().enumerate() {
        let suggested = result.suggestion == Some(p.lr);
        if i % every != 0 && i + 1 != n && !suggested {
            continue;
        }
        let _ = writeln!(
            s,
            "{:>5} {:>10.3e} {:>10.4} {:>10.4}{}",
            p.step,
            p.lr,
            p.loss,
            p.smoothed,
            if suggested { "  <- suggested" } else { "" }
        );
    }
    s
}

fn figure(result: &LrFindResult) -> Figure {
    let raw: Vec<(f64, f64)> = result.points.iter().map(|p| (p.lr, p.loss)).collect();
    let smoothed: Vec<(f64, f64)> = result.points.iter().map(|p| (p.lr, p.smoothed)).collect();
    // The last steps blow up: show everything up to twice the smoothed loss's start.
    let finite = |v: &[(f64, f64)]| -> Vec<f64> {
        v.iter().map(|p| p.1).filter(|v| v.is_finite()).collect()
    };
    let (all, smooth) = (
        [finite(&raw), finite(&smoothed)].concat(),
        finite(&smoothed),
    );
    let y_range = (!smooth.is_empty()).then(|| {
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = smooth.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let hi = hi.min(smooth[0] * 2.0).max(smooth[0]);
        let pad = (hi - lo).max(1e-3) * 0.05;
        (lo - pad, hi + pad)
    });
    let mut series = vec![
        Series {
            label: "loss".into(),
            points: raw,
            color: LIGHT_BLUE,
            style: Style::Dots,
        },
        Series {
            label: "smoothed loss".into(),
            points: smoothed,
            color: BLUE,
            style: Style::Line,
        },
    ];
    if let Some(lr) = result.suggestion {
        series.push(Series {
            label: format!("suggested lr {}", tick(lr)),
            points: vec![(lr, 0.0)],
            color: RED,
            style: Style::Vertical,
        });
    }
    Figure {
        title: "Learning-rate range test".into(),
        panels: vec![Panel {
            title: "Training loss while the learning rate grows".into(),
            x_label: "learning rate (log scale)".into(),
            y_label: "training loss".into(),
            log_x: true,
            y_range,
            series,
            legend_left: true,
            ..Default::default()
        }],
    }
}
