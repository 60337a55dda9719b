//! `perplex`: train and inspect language models.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use perplex_trainer::{RunConfig, Trainer};

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
        /// Print the resolved config and exit without training.
        #[arg(long)]
        dry_run: bool,
    },
    /// List every registered loss (built-in and plugins) with a one-line description.
    Losses,
    /// Fetch a named corpus into the data directory (from $PERPLEX_DATA_MIRROR when set, else
    /// its public source), verifying its SHA-256.
    Data {
        /// Corpus name, e.g. `tinyshakespeare`.
        name: String,
        /// Directory to put it in.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
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
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train {
            config,
            overrides,
            dry_run,
        } => {
            let cfg = RunConfig::load(config.as_deref(), &overrides)?;
            if dry_run {
                print!("{}", cfg.to_toml()?);
                return Ok(());
            }
            let mut trainer = Trainer::from_config(cfg)?;
            let summary = trainer.fit()?;
            if let Some(last) = summary.epochs.last() {
                println!(
                    "final: epoch {} step {} train_loss {:.4} valid_loss {:.4} valid_ppl {:.2} tokens/s {:.0}",
                    last.epoch,
                    last.step,
                    last.train_loss,
                    last.valid.loss,
                    last.valid.perplexity,
                    last.tokens_per_sec
                );
            }
            if let Some(t) = summary.test {
                println!("test: loss {:.4} ppl {:.2}", t.loss, t.perplexity);
            }
            if let Some(dir) = summary.run_dir {
                println!("run directory: {}", dir.display());
            }
            Ok(())
        }
        Command::Losses => {
            for info in perplex_losses::registered_losses() {
                println!("{:<24} {}", info.name, info.description);
            }
            Ok(())
        }
        Command::Data { name, data_dir } => {
            let path = perplex_data::fetch_corpus(&name, &data_dir)
                .with_context(|| format!("fetching corpus `{name}`"))?;
            println!("{}", path.display());
            Ok(())
        }
    }
}
