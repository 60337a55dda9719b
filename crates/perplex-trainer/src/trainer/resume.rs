//! Continuing a run from its last checkpoint, and what a resume may not change.
use std::path::Path;

use serde::Serialize;

use super::Trainer;
use crate::checkpoint;
use crate::config::RunConfig;
use crate::run_dir::files;
use crate::TrainerError;

impl Trainer {
    /// Continues a run from a checkpoint: `spec` is a checkpoint directory, a run directory (its
    /// latest checkpoint) or `latest` (the latest checkpoint of the most recently modified run
    /// under `run_root`). The run's own `config.toml` is used, with `overrides` applied on top
    /// (e.g. more epochs), and its own `vocab.json` (the vocabulary is part of the model). On the
    /// CPU the resumed loss curve equals, bit for bit, that of a run never interrupted.
    ///
    /// Nothing in the run directory changes until the checkpoint, the model and the optimiser
    /// state have loaded: a resume that cannot continue leaves every file as it was. Then the
    /// resolved config is written back and `metrics.jsonl`/`.csv` lose the rows after the
    /// checkpoint's step (they were written after it and are written again).
    ///
    /// # Errors
    /// [`TrainerError::Io`] when no checkpoint is found; [`TrainerError::Config`] naming each key
    /// that a resume cannot change (`model.*`, `data.tokenizer`, `trainer.precision` to or from
    /// `f64`; `data.batch_size` and
    /// `data.seq_len` in mid-epoch) with both values, and each checkpoint tensor whose shape the
    /// model does not have; [`TrainerError::Finished`] for a run that has finished (nothing is
    /// changed); and the errors of [`Trainer::from_config`].
    pub fn resume(spec: &str, run_root: &Path, overrides: &[String]) -> Result<Self, TrainerError> {
        Self::resume_inner(spec, run_root, overrides, true, 1, 0)
    }

    /// [`Trainer::resume`] as one process of `strategy`: every process loads the checkpoint,
    /// only the primary one writes (the config, the truncated metrics).
    ///
    /// A checkpoint does not depend on the world size of the run that wrote it (its hidden
    /// state holds the whole global batch), so a run may continue with another world size: each
    /// process then takes its rows of the global batch and of the saved state (a reshard). This
    /// needs the new world size to divide `data.batch_size`; the continuation equals the
    /// original's up to the order of floating-point sums, except that dropout masks, drawn per
    /// rank, differ.
    ///
    /// # Errors
    /// Those of [`Trainer::resume`], and [`TrainerError::Config`] naming both world sizes when
    /// the new one does not divide `data.batch_size` (or leaves a per-process batch that
    /// `trainer.accumulate` does not divide).
    pub fn resume_with_strategy(
        spec: &str,
        run_root: &Path,
        overrides: &[String],
        strategy: Box<dyn crate::strategy::Strategy>,
    ) -> Result<Self, TrainerError> {
        let primary = strategy.is_primary();
        let (world_size, local_rank) = (strategy.world_size(), strategy.local_rank());
        Ok(
            Self::resume_inner(spec, run_root, overrides, primary, world_size, local_rank)?
                .with_strategy(strategy),
        )
    }

    /// Every check [`Trainer::resume`] makes (the checkpoint, model and optimiser state load;
    /// the config may change what it changes; the run is not finished), writing nothing.
    /// Returns the resolved config the resume would write.
    ///
    /// # Errors
    /// Those of [`Trainer::resume`].
    pub fn check_resume(
        spec: &str,
        run_root: &Path,
        overrides: &[String],
    ) -> Result<String, TrainerError> {
        Ok(Self::resume_inner(spec, run_root, overrides, false, 1, 0)?.config_toml)
    }

    fn resume_inner(
        spec: &str,
        run_root: &Path,
        overrides: &[String],
        write: bool,
        world_size: usize,
        local_rank: usize,
    ) -> Result<Self, TrainerError> {
        let ckpt = checkpoint::resolve(spec, run_root)?;
        let run = checkpoint::run_of(&ckpt);
        let config_path = run.join(files::CONFIG);
        // What the run saved, from its file alone: the environment's `PERPLEX__*` layer is
        // part of the new config, so a fixed key it changes is refused like a `--set`.
        let saved = RunConfig::load_file_only(&config_path)?;
        let mut config = RunConfig::load(Some(&config_path), overrides)?;
        if let Ok(cwd) = std::env::current_dir() {
            config.absolutize_paths(&cwd);
        }
        let manifest = checkpoint::read_manifest(&ckpt)?;
        check_resumable(&saved, &config, manifest.window > 0, &run)?;
        check_world_size(&config, manifest.world_size, world_size, &ckpt)?;
        let vocab = perplex_data::Vocabulary::load(&run.join(files::VOCAB))?;
        let batch_size = config.data.batch_size as i64;
        let mut trainer = Self::build(config, run.clone(), Some(vocab), local_rank)?;
        let (manifest, hidden) =
            checkpoint::load(&ckpt, &mut trainer.vs, trainer.optimizer.as_mut())?;
        if let Some(h) = &hidden {
            check_state_rows(h, batch_size, &ckpt)?;
        }
        if let Some(s) = trainer.schedule.as_mut() {
            s.load_state(&manifest.schedule_state)?;
        }
        trainer.pos = manifest;
        trainer.resume_state = hidden;
        if trainer.finished() {
            let (step, c) = (trainer.pos.step, &trainer.config);
            let (reason, hint) = if trainer.max_steps_reached() {
                (
                    format!("trainer.max_steps = {} reached at step {step}", c.max_steps),
                    // Above the step the run is at (a --set below it must not loop).
                    format!(
                        "raise trainer.max_steps above {step}: --resume {} --set \
                         trainer.max_steps={}",
                        run.display(),
                        step.max(c.max_steps) * 2
                    ),
                )
            } else {
                (
                    format!("all {} epochs done at step {step}", c.epochs),
                    format!(
                        "raise trainer.epochs: --resume {} --set trainer.epochs={}",
                        run.display(),
                        c.epochs + 1
                    ),
                )
            };
            return Err(TrainerError::Finished {
                run,
                step,
                reason,
                hint,
            });
        }
        if !write {
            return Ok(trainer);
        }
        // Everything loaded: only now does the run directory change.
        trainer.write_run_files(false)?;
        let partial_epoch = (trainer.pos.window > 0).then_some(trainer.pos.epoch);
        crate::callbacks::truncate_metrics(&run, trainer.pos.step, partial_epoch)?;
        tracing::info!(
            checkpoint = %ckpt.display(),
            step = trainer.pos.step,
            epoch = trainer.pos.epoch,
            window = trainer.pos.window,
            "resuming"
        );
        Ok(trainer)
    }
}

/// The saved state must hold every row of the global batch (dimension 1 of each tensor). A
/// mid-epoch checkpoint of a multi-process run written before the state was gathered holds rank
/// 0's rows only.
fn check_state_rows(
    state: &perplex_model::HiddenState,
    batch_size: i64,
    ckpt: &Path,
) -> Result<(), TrainerError> {
    for (i, t) in state.0.iter().enumerate() {
        if t.dim() < 2 || t.size()[1] != batch_size {
            return Err(TrainerError::Config {
                source_name: ckpt.join("state.safetensors").display().to_string(),
                message: format!(
                    "tensor hidden.{i} has shape {:?}, which does not hold the global batch of \
                     data.batch_size = {batch_size} rows in dimension 1 (a mid-epoch checkpoint \
                     of a multi-process run from before perplex gathered the state holds rank \
                     0's rows only): resume from a checkpoint at an epoch's start, or start a new \
                     run; nothing was changed",
                    t.size()
                ),
            });
        }
    }
    Ok(())
}

/// Accepts a resume with another world size when it divides the global batch (each process
/// takes its rows: a reshard); otherwise an error naming both world sizes.
fn check_world_size(
    config: &RunConfig,
    saved: usize,
    world_size: usize,
    ckpt: &Path,
) -> Result<(), TrainerError> {
    if saved == world_size {
        return Ok(());
    }
    let batch_size = config.data.batch_size as u64;
    let accumulate = config.trainer.accumulate.max(1);
    // The rule a new run checks (`RunConfig::check_world_size`), said in a resume's terms.
    if config.check_world_size(world_size).is_err() {
        return Err(TrainerError::Config {
            source_name: format!("--resume {}", ckpt.display()),
            message: format!(
                "the checkpoint was written by a run of world size {saved}, and this job has \
                 world size {world_size}, which cannot take its rows of data.batch_size = \
                 {batch_size} (each process needs batch_size / world size rows, a multiple of \
                 trainer.accumulate = {accumulate}): resume with world size {saved}, or another \
                 that divides the batch; nothing was changed"
            ),
        });
    }
    tracing::info!(
        checkpoint_world_size = saved,
        world_size,
        batch_size,
        "resuming with another world size: each process takes its rows of the global batch and \
         of the saved state"
    );
    Ok(())
}

/// Refuses a resume whose config changes what a checkpoint fixes: the model (every `model` key),
/// the optimiser's type (its saved state is that type's), the parameters' dtype
/// (`trainer.precision` to or from `f64`), the tokenizer, and in mid-epoch the batch shape (the
/// saved hidden state and window position depend on it). The error names each key with both
/// values.
fn check_resumable(
    saved: &RunConfig,
    config: &RunConfig,
    mid_epoch: bool,
    run: &Path,
) -> Result<(), TrainerError> {
    fn table<T: Serialize + ?Sized>(v: &T, run: &Path) -> Result<toml::Table, TrainerError> {
        toml::Table::try_from(v).map_err(|e| TrainerError::Config {
            source_name: run.join(files::CONFIG).display().to_string(),
            message: e.to_string(),
        })
    }
    let mut differences = Vec::new();
    let mut compare =
        |section: &str, old: &toml::Table, new: &toml::Table, keys: Option<&[&str]>| {
            let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
            names.sort();
            names.dedup();
            for k in names {
                if keys.is_some_and(|keys| !keys.contains(&k.as_str())) {
                    continue;
                }
                let (a, b) = (old.get(k), new.get(k));
                if a != b {
                    let show =
                        |v: Option<&toml::Value>| v.map_or("(unset)".into(), |v| v.to_string());
                    differences.push(format!(
                        "{section}.{k}: the run has {}, the resume asks for {}",
                        show(a),
                        show(b)
                    ));
                }
            }
        };
    compare(
        "model",
        &table(&saved.model, run)?,
        &table(&config.model, run)?,
        None,
    );
    let data_keys: &[&str] = if mid_epoch {
        &["tokenizer", "batch_size", "seq_len", "loader"]
    } else {
        &["tokenizer"]
    };
    compare(
        "data",
        &table(&saved.data, run)?,
        &table(&config.data, run)?,
        Some(data_keys),
    );
    // The optimiser's state (moments, momentum buffers) is its type's own: another type cannot
    // read it. Its options (lr, weight decay, ...) may change.
    compare(
        "optim",
        &table(&saved.optim, run)?,
        &table(&config.optim, run)?,
        Some(&["type"]),
    );
    // bf16 autocast keeps float32 parameters, so only a switch to or from f64 changes the
    // dtype of what the checkpoint holds.
    let (was, asks) = (saved.trainer.precision, config.trainer.precision);
    if was.parameter_kind() != asks.parameter_kind() {
        differences.push(format!(
            "trainer.precision: the run has \"{was}\", the resume asks for \"{asks}\" (the \
             checkpoint holds {:?} tensors, \"{asks}\" trains in {:?})",
            was.parameter_kind(),
            asks.parameter_kind()
        ));
    }
    if differences.is_empty() {
        return Ok(());
    }
    Err(TrainerError::Config {
        source_name: format!("--resume {}", run.display()),
        message: format!(
            "cannot continue this run with a different {}: {} (a checkpoint fixes the model, \
             its dtype, the optimiser's type and the tokenizer{}; nothing was changed: start a new run to change them)",
            if differences.len() == 1 {
                "setting"
            } else {
                "settings"
            },
            differences.join("; "),
            if mid_epoch {
                ", and mid-epoch the batch shape"
            } else {
                ""
            }
        ),
    })
}
