//! `perplex data`: fetch a named corpus, or tokenize a corpus once into token files
//! (`perplex data prepare`).
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

/// Arguments of `perplex data`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DataArgs {
    #[command(subcommand)]
    action: Option<DataAction>,
    /// Corpus to fetch, e.g. `tinyshakespeare` (from $PERPLEX_DATA_MIRROR when set, else its
    /// public source), verifying its SHA-256.
    name: Option<String>,
    /// Directory to put a fetched corpus in.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum DataAction {
    /// Tokenize the `[data]` corpus of a run config once into token files (`train.bin`,
    /// `valid.bin`, `test.bin` of u16 or u32 ids with JSON headers, and `vocab.json`; for
    /// `tokenizer = "bpe"` also `tokenizer.json`, trained on the training split or copied from
    /// `tokenizer_file`), streaming with bounded memory; train from them with
    /// `--set data.prepared=DIR`.
    Prepare {
        /// Run config (TOML) whose `[data]` section names the corpus and tokenizer.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override a config value, as for `train`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Directory for the token files (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs `perplex data`.
pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match (args.action, args.name) {
        (
            Some(DataAction::Prepare {
                config,
                overrides,
                out,
            }),
            _,
        ) => {
            let cfg = perplex_trainer::RunConfig::load(config.as_deref(), &overrides)?;
            let mut data = cfg.data.clone();
            data.prepared = None;
            let report = perplex_data::prepare(&data, &out)
                .with_context(|| format!("preparing token files in {}", out.display()))?;
            println!(
                "{}: vocabulary {} tokens; train {} / valid {} / test {} tokens; {:.1} s",
                report.dir.display(),
                report.vocab_size,
                report.tokens[0],
                report.tokens[1],
                report.tokens[2],
                report.seconds
            );
            println!(
                "train from it with: --set data.prepared={}",
                report.dir.display()
            );
            Ok(())
        }
        (None, Some(name)) => {
            let path = perplex_data::fetch_corpus(&name, &args.data_dir)
                .with_context(|| format!("fetching corpus `{name}`"))?;
            println!("{}", path.display());
            Ok(())
        }
        (None, None) => anyhow::bail!(
            "give a corpus name to fetch (`perplex data tinyshakespeare`) or `perplex data \
             prepare --config FILE --out DIR`"
        ),
    }
}
