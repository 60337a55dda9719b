//! Checkpoints: everything needed to continue a run exactly.
//!
//! A checkpoint is a directory `RUN/checkpoints/step-NNNNNNNN/` (and `best/`) holding
//! `model.safetensors` (weights), `optimizer.safetensors` (moments, named `PARAM.exp_avg`, ...),
//! `state.safetensors` (the recurrent hidden state mid-epoch, every row of the global batch, also
//! in a data-parallel run) and `manifest.json` (step, data position, best metric, schedule state,
//! the world size of the run that wrote it). It is written into a temporary directory that is
//! renamed into place only when complete, so a kill at any moment leaves the previous checkpoint
//! loadable.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use perplex_model::HiddenState;
use perplex_optim::Optimizer;

use crate::run_dir::{files, sorted_variables, write_atomically, write_tensors};
use crate::TrainerError;

/// Directory of checkpoints inside a run directory.
pub const CHECKPOINTS: &str = "checkpoints";
/// Name of the best checkpoint (lowest validation loss).
pub const BEST: &str = "best";
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";

/// The small JSON part of a checkpoint. The position is that of the *next* step to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (1).
    pub format: u32,
    /// Optimiser steps taken.
    pub step: u64,
    /// Epoch of the next step (1-based).
    pub epoch: u64,
    /// Window index of the next step within its epoch.
    pub window: usize,
    /// Best validation loss so far (nats per token).
    pub best_valid_loss: Option<f64>,
    /// Validations since the best one.
    pub evals_without_improvement: u64,
    /// Steps skipped for a non-finite loss.
    pub skipped_steps: u64,
    /// Validation loss measured when this checkpoint was written, if any.
    pub valid_loss: Option<f64>,
    /// The optimiser's own step counter.
    pub optimizer_steps: i64,
    /// The learning-rate schedule's state (reduce-on-plateau's lr and counters).
    pub schedule_state: serde_json::Value,
    /// Sum of the training losses in the current epoch so far (for the epoch's mean).
    pub epoch_loss_sum: f64,
    /// Steps in the current epoch so far.
    pub epoch_steps: u64,
    /// Target tokens in the current epoch so far.
    pub epoch_tokens: u64,
    /// Training seconds in the current epoch so far.
    pub epoch_seconds: f64,
    /// The number of processes of the run that wrote the checkpoint (1 in checkpoints written
    /// before it was recorded). The checkpoint itself does not depend on it: its hidden state
    /// holds the global batch (`data.batch_size` rows), whatever the world size.
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

/// Writes a checkpoint named `name` under `run/checkpoints/`, atomically.
///
/// # Errors
/// [`TrainerError::Io`] naming the path.
pub fn save(
    run: &Path,
    name: &str,
    vs: &nn::VarStore,
    optimizer: &dyn Optimizer,
    hidden: Option<&HiddenState>,
    manifest: &Manifest,
) -> Result<PathBuf, TrainerError> {
    let root = run.join(CHECKPOINTS);
    std::fs::create_dir_all(&root).map_err(|e| TrainerError::io(&root, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".tmp-{name}-"))
        .tempdir_in(&root)
        .map_err(|e| TrainerError::io(&root, e))?;
    let t = tmp.path();
    let final_dir = root.join(name);
    // Errors name the checkpoint's own path (`checkpoints/step-00000400/model.safetensors`), not
    // the temporary directory it is written in.
    let named = |e: TrainerError| match e {
        TrainerError::Io { path, message } => TrainerError::Io {
            path: path
                .strip_prefix(t)
                .map_or(path.clone(), |rel| final_dir.join(rel)),
            message,
        },
        other => other,
    };
    (|| -> Result<(), TrainerError> {
        write_tensors(&t.join(files::WEIGHTS), &sorted_variables(vs))?;
        write_tensors(&t.join("optimizer.safetensors"), &optimizer.state())?;
        let hidden: Vec<(String, Tensor)> = hidden
            .map(|h| {
                h.0.iter()
                    .enumerate()
                    .map(|(i, t)| (format!("hidden.{i}"), t.detach()))
                    .collect()
            })
            .unwrap_or_default();
        write_tensors(&t.join("state.safetensors"), &hidden)?;
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| TrainerError::io(t, e))?;
        write_atomically(&t.join(MANIFEST), &json)?;
        Ok(())
    })()
    .map_err(named)?;
    let tmp_path = tmp.keep();
    if final_dir.exists() {
        let old = root.join(format!(".old-{name}-{}", std::process::id()));
        std::fs::rename(&final_dir, &old).map_err(|e| TrainerError::io(&final_dir, e))?;
        std::fs::rename(&tmp_path, &final_dir).map_err(|e| TrainerError::io(&final_dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp_path, &final_dir).map_err(|e| TrainerError::io(&final_dir, e))?;
    }
    Ok(final_dir)
}

fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, TrainerError> {
    Tensor::read_safetensors(path).map_err(|e| TrainerError::io(path, e))
}

/// Reads a checkpoint's manifest.
///
/// # Errors
/// [`TrainerError::Io`] naming the file.
pub fn read_manifest(dir: &Path) -> Result<Manifest, TrainerError> {
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| TrainerError::io(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| TrainerError::io(&path, e))
}

/// Loads a checkpoint into the model's variables and the optimiser; returns its manifest and
/// the saved hidden state (on `device`), if any.
///
/// # Errors
/// [`TrainerError::Io`] for missing or unreadable files, [`TrainerError::Optim`] when the
/// optimiser state does not fit.
pub fn load(
    dir: &Path,
    vs: &mut nn::VarStore,
    optimizer: &mut dyn Optimizer,
) -> Result<(Manifest, Option<HiddenState>), TrainerError> {
    let manifest = read_manifest(dir)?;
    crate::trainer::load_weights(vs, dir)?;
    let device = vs.device();
    let state: Vec<(String, Tensor)> = read_tensors(&dir.join("optimizer.safetensors"))?
        .into_iter()
        .map(|(n, t)| (n, t.to_device(device)))
        .collect();
    optimizer.load_state(&state, manifest.optimizer_steps)?;
    let mut hidden = read_tensors(&dir.join("state.safetensors"))?;
    hidden.sort_by(|a, b| a.0.cmp(&b.0));
    let hidden = (!hidden.is_empty()).then(|| {
        HiddenState(
            hidden
                .into_iter()
                .map(|(_, t)| t.to_device(device))
                .collect(),
        )
    });
    Ok((manifest, hidden))
}

/// The `step-*` checkpoints of a run, oldest first.
pub fn list(run: &Path) -> Vec<(u64, PathBuf)> {
    let root = run.join(CHECKPOINTS);
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path().join(MANIFEST).exists().then(|| (step, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// Deletes all but the `keep` most recent `step-*` checkpoints.
pub fn prune(run: &Path, keep: usize) {
    let all = list(run);
    let n = all.len().saturating_sub(keep);
    for (_, dir) in all.into_iter().take(n) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Finds the checkpoint to resume from: `spec` is a checkpoint directory, a run directory (its
/// latest checkpoint), or `latest` (the latest checkpoint of the most recently modified run under
/// `run_root`).
///
/// # Errors
/// [`TrainerError::Io`] when nothing resumable is found, naming where it looked.
pub fn resolve(spec: &str, run_root: &Path) -> Result<PathBuf, TrainerError> {
    let not_found = |p: &Path, what: &str| TrainerError::Io {
        path: p.to_path_buf(),
        message: what.to_string(),
    };
    if spec == "latest" {
        let mut runs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(run_root)
            .map_err(|e| TrainerError::io(run_root, e))?
            .flatten()
            .filter(|e| !list(&e.path()).is_empty())
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        runs.sort();
        let (_, run) = runs
            .pop()
            .ok_or_else(|| not_found(run_root, "no run with a checkpoint to resume"))?;
        return resolve(&run.display().to_string(), run_root);
    }
    let p = PathBuf::from(spec);
    if p.join(MANIFEST).exists() {
        return Ok(p);
    }
    list(&p).pop().map(|(_, d)| d).ok_or_else(|| {
        if p.join(files::CONFIG).is_file() {
            not_found(&p, &no_checkpoint_yet(&p))
        } else {
            not_found(
                &p,
                "neither a checkpoint (no manifest.json) nor a run directory with checkpoints",
            )
        }
    })
}

/// What to do with `run`, a run directory that stopped before its first checkpoint: nothing
/// can be resumed, and it is not removed for the user (its metrics may tell why it stopped).
/// Said by `--resume` on it and by a new run under its name alike.
pub(crate) fn no_checkpoint_yet(run: &Path) -> String {
    format!(
        "this run stopped before its first checkpoint, so there is nothing to resume: remove \
         it (`rm -r {}`) to train it again under this name, or choose another trainer.run_name",
        run.display()
    )
}

/// The run directory a checkpoint belongs to (`RUN/checkpoints/NAME` -> `RUN`).
pub fn run_of(checkpoint: &Path) -> PathBuf {
    checkpoint
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
