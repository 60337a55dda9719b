//! `perplex train`.
use std::path::Path;

use perplex_dist::{DataParallel, Launch, ProcessGroup};
use perplex_trainer::interrupt::Interrupt;
use perplex_trainer::strategy::{SingleProcess, Strategy};
use perplex_trainer::{RunConfig, Trainer, TrainerError};

/// Trains from a config (or resumes a run) and prints the final metrics. The resolved config is
/// logged section by section first; `dry_run` checks it as training would and prints it.
///
/// Launched by torchrun (or srun) with more than one process, it trains data-parallel
/// ([`DataParallel`]: `data.batch_size` is the global batch; only rank 0 writes files).
pub fn run(
    config: Option<&Path>,
    overrides: &[String],
    dry_run: bool,
    resume: Option<&str>,
) -> anyhow::Result<()> {
    let trainer = match resume {
        Some(spec) => {
            if config.is_some() && spec != "latest" {
                anyhow::bail!(
                    "--config is not used with --resume {spec}: a run continues with its own \
                     config.toml; change it with --set"
                );
            }
            let root = run_root(config, overrides)?;
            if dry_run {
                // Every check a resume makes, and nothing written.
                let resolved = match Trainer::check_resume(spec, &root, overrides) {
                    Err(e @ TrainerError::Finished { .. }) => {
                        println!("{e}");
                        return Ok(());
                    }
                    other => other?,
                };
                print!("{resolved}");
                return Ok(());
            }
            match Trainer::resume_with_strategy(spec, &root, overrides, strategy()?) {
                Ok(t) => t,
                // Resuming a finished run is not a failure (a requeued job resumes until done):
                // say so and change nothing.
                Err(e @ TrainerError::Finished { .. }) => {
                    println!("{e}");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => {
            let mut cfg = RunConfig::load(config, overrides)?;
            // `[model] init_from`: the directory's architecture and tokenizer, logged and
            // printed as the run will record them.
            cfg.resolve_pretrained(true)?;
            cfg.log_sections();
            if dry_run {
                // Every check training runs before its first step, without a run directory or
                // the corpus.
                cfg.validate()?;
                // Under a launcher, also whether its processes can share the batches (without
                // joining the job).
                if let Some(launch) = Launch::from_env()? {
                    cfg.check_world_size(launch.world_size)?;
                }
                print!("{}", cfg.to_toml()?);
                return Ok(());
            }
            Trainer::from_config_with_strategy(cfg, strategy()?)?
        }
    };
    // SIGINT/SIGTERM: finish the step, checkpoint, write the summary, exit 130/143; a second
    // signal ends the process at once.
    let mut trainer = trainer.with_interrupt(Interrupt::install()?);
    let primary = trainer.is_primary();
    let summary = trainer.fit()?;
    if !primary {
        // Rank 0 reports the run and how to continue it; the others only exit alike.
        if let Some(signal) = summary.interrupted {
            std::process::exit(i32::from(signal.exit_code()));
        }
        return Ok(());
    }
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
    if let Some(dir) = &summary.run_dir {
        println!("run directory: {}", dir.display());
    }
    if let Some(signal) = summary.interrupted {
        let run = summary
            .run_dir
            .as_ref()
            .map_or_else(|| "RUN".into(), |d| d.display().to_string());
        eprintln!(
            "interrupted by {signal} after step {}: checkpoint and summary written; continue with \
             `perplex train --resume {run}`",
            summary.steps
        );
        std::process::exit(i32::from(signal.exit_code()));
    }
    Ok(())
}

/// Data-parallel when a launcher (torchrun, Slurm) started more than one process: joins the
/// job's process group first, so a bad launch fails before the data is loaded.
fn strategy() -> anyhow::Result<Box<dyn Strategy>> {
    Ok(match Launch::from_env()? {
        Some(launch) if launch.world_size > 1 => {
            Box::new(DataParallel::new(ProcessGroup::connect(launch)?))
        }
        _ => Box::new(SingleProcess),
    })
}

/// Where `--resume latest` looks: `trainer.run_dir` of the config file (or the defaults and
/// environment), or of a `--set trainer.run_dir=...`. The other overrides are the run's: they
/// are applied to its own config.toml, not checked against the defaults here.
fn run_root(config: Option<&Path>, overrides: &[String]) -> anyhow::Result<std::path::PathBuf> {
    let run_dir: Vec<String> = overrides
        .iter()
        .filter(|o| o.trim_start().starts_with("trainer.run_dir"))
        .cloned()
        .collect();
    Ok(RunConfig::load(config, &run_dir)?.trainer.run_dir)
}
