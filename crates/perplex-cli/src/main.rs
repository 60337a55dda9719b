//! `perplex`: train and inspect language models.
mod chart;
mod data;
mod eval;
mod export;
mod generate;
mod lr_find;
mod metrics_log;
mod plot;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Train language models on libtorch, from Rust.
#[derive(Debug, Parser)]
#[command(name = "perplex", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model as a run config describes.
    Train {
        /// Run config (TOML). Without it the built-in defaults (the seed GRU model on Tiny
        /// Shakespeare) are used.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override a config value: `--set trainer.epochs=3` (repeatable; applied after the file
        /// and `PERPLEX__SECTION__KEY` environment variables).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Check the resolved config as training would (optimiser, schedule, model and data
        /// options, device), print it and exit without training or creating a run directory.
        #[arg(long)]
        dry_run: bool,
        /// Continue a run from a checkpoint: a checkpoint directory, a run directory (its latest
        /// checkpoint) or `latest` (the most recent run under `trainer.run_dir`). The run's own
        /// config is used; `--set` overrides apply on top (e.g. `--set trainer.epochs=20`).
        #[arg(long, value_name = "DIR|latest")]
        resume: Option<String>,
    },
    /// Score a trained model: loss, perplexity and bits per token on a split or a text file, and
    /// the tokens it found most surprising.
    Eval(eval::EvalArgs),
    /// Write a run (or checkpoint) as a Hugging Face transformers directory.
    Export(export::ExportArgs),
    /// Continue a prompt with a trained model (temperature, top-k, top-p, seed, banned tokens).
    Generate(generate::GenerateArgs),
    /// Plot a run's loss, validation perplexity and learning rate against the step (PNG and SVG).
    Plot(plot::PlotArgs),
    /// Learning-rate range test: train briefly with an exponentially growing learning rate and
    /// suggest one (Smith 2017; fastai's lr_find).
    LrFind(lr_find::LrFindArgs),
    /// List every registered loss (built-in and plugins) with a one-line description.
    Losses,
    /// Fetch a named corpus into the data directory (verifying its SHA-256), or tokenize a
    /// corpus once into memory-mapped token files (`perplex data prepare`).
    Data(data::DataArgs),
}

fn main() -> ExitCode {
    // Plugins register their losses when linked; referencing them keeps the linker from
    // dropping them.
    perplex_poly1::link();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(|| LogWriter)
        .with_ansi(colour_logs())
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A libtorch message anywhere in the chain keeps its first lines, not the C++
            // backtrace libtorch appends.
            let message = error_chain(&e);
            eprintln!("error: {}", perplex_data::error::torch_message(&message));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `outer: inner`, as anyhow's `{:#}` but leaving out a cause whose
/// text the message already holds (an error that names its source in its own words); I/O
/// errors are told without the OS error number.
fn error_chain(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        // An I/O error in words, as the errors that wrap it tell it.
        let text = match cause.downcast_ref::<std::io::Error>() {
            Some(io) => perplex_data::error::io_reason(io),
            None => cause.to_string(),
        };
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train {
            config,
            overrides,
            dry_run,
            resume,
        } => train::run(config.as_deref(), &overrides, dry_run, resume.as_deref()),
        Command::Eval(args) => eval::run(args),
        Command::Export(args) => export::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Plot(args) => plot::run(args),
        Command::LrFind(args) => lr_find::run(args),
        Command::Losses => {
            for info in perplex_losses::registered_losses() {
                println!("{:<24} {}", info.name, info.description);
            }
            Ok(())
        }
        Command::Data(args) => data::run(args),
    }
}

/// Logs are coloured only when stderr is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>): a log redirected to a file holds no escape codes.
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Writes log lines to stderr above the progress bar (if one is drawn) instead of through it.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        perplex_trainer::callbacks::progress_bars().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
