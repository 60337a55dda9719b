//! `perplex train`.
use std::path::Path;

use perplex_trainer::{RunConfig, Trainer};

/// Trains from a config (or resumes a run) and prints the final metrics. The resolved config is
/// logged section by section first; `dry_run` checks it as training would and prints it.
pub fn run(
    config: Option<&Path>,
    overrides: &[String],
    dry_run: bool,
    resume: Option<&str>,
) -> anyhow::Result<()> {
    let mut trainer = match resume {
        Some(spec) => {
            // `latest` looks under the configured run directory.
            let root = RunConfig::load(config, overrides)?.trainer.run_dir;
            Trainer::resume(spec, &root, overrides)?
        }
        None => {
            let cfg = RunConfig::load(config, overrides)?;
            cfg.log_sections();
            if dry_run {
                // Every check training runs before its first step, without a run directory or
                // the corpus.
                cfg.validate()?;
                print!("{}", cfg.to_toml()?);
                return Ok(());
            }
            Trainer::from_config(cfg)?
        }
    };
    let summary = trainer.fit()?;
    if let Some(last) = summary.epochs.last() {
        let valid = last
            .valid
            .map(|v| format!(" valid_loss {:.4} valid_ppl {:.2}", v.loss, v.perplexity))
            .unwrap_or_default();
        println!(
            "final: epoch {} step {} train_loss {:.4}{valid} tokens/s {:.0}",
            last.epoch, last.step, last.train_loss, last.tokens_per_sec
        );
    }
    if let Some(best) = summary.best_valid_loss {
        println!("best: valid_loss {best:.4} valid_ppl {:.2}", best.exp());
    }
    if let Some(t) = summary.test {
        println!("test: loss {:.4} ppl {:.2}", t.loss, t.perplexity);
    }
    if let Some(reason) = summary.stopped_early {
        println!("stopped early: {reason}");
    }
    if let Some(dir) = summary.run_dir {
        println!("run directory: {}", dir.display());
    }
    Ok(())
}
