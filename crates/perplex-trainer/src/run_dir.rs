//! What a run leaves on disk.
use std::io::Write;
use std::path::{Path, PathBuf};

use tch::{nn, Tensor};

use crate::error::IoReason;
use crate::TrainerError;

/// File names inside a run directory.
pub mod files {
    /// The resolved config (TOML), enough to rebuild the model.
    pub const CONFIG: &str = "config.toml";
    /// The vocabulary (JSON).
    pub const VOCAB: &str = "vocab.json";
    /// The Hugging Face tokenizer of a `tokenizer = "bpe"` run, beside `vocab.json`, written
    /// and read with it ([`perplex_data::Vocabulary::save`], [`perplex_data::Vocabulary::load`]).
    pub const TOKENIZER: &str = perplex_data::HfTokenizer::FILE;
    /// Final weights (safetensors, PyTorch-style names such as `gru.weight_ih_l0`).
    pub const WEIGHTS: &str = "model.safetensors";
    /// One JSON object per line with a `kind`: `train` (every `log_every` steps), `valid`,
    /// `epoch`, `test`.
    pub const METRICS: &str = "metrics.jsonl";
    /// The same records as CSV.
    pub const METRICS_CSV: &str = "metrics.csv";
    /// Totals of the run (peak RSS, time to first step, best validation loss).
    pub const SUMMARY: &str = "summary.json";
}

/// Peak resident set size of this process in MiB (`VmHWM` from `/proc/self/status`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Seconds since this process started (from `/proc`), if known.
pub fn process_age_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Field 22 (starttime, clock ticks since boot) counted after the `(comm)` field.
    let after = &stat[stat.rfind(')')? + 2..];
    let start_ticks: f64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks > 0.0).then(|| uptime - start_ticks / ticks)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
///
/// # Errors
/// [`TrainerError::Io`] naming the path.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TrainerError> {
    // Through a symbolic link: replace the file it points to, not the link.
    let resolved;
    let path = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            let link = std::fs::read_link(path).map_err(|e| TrainerError::io(path, e))?;
            resolved = path.parent().unwrap_or(Path::new(".")).join(link);
            resolved.as_path()
        }
        _ => path,
    };
    if let Ok(m) = std::fs::metadata(path) {
        if !m.is_file() {
            return Err(TrainerError::io(
                path,
                "it is not a regular file (a directory, device or pipe): give a file name",
            ));
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| TrainerError::io(path, e))?;
    tmp.write_all(bytes)
        .map_err(|e| TrainerError::io(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| TrainerError::io(path, e))?;
    // A temporary file is private (0600); the result is an ordinary file (0644).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path)
        .map_err(|e| TrainerError::io(path, e.error))?;
    Ok(())
}

/// Checks, before any long work, that the directory `dir` can take new files: creates it (and
/// its parents) when missing, then creates and removes a temporary file in it.
///
/// # Errors
/// [`TrainerError::Io`] naming `dir` and the reason: a parent that is a file, a read-only or
/// full file system, a permission denied.
pub fn check_writable_dir(dir: &Path) -> Result<(), TrainerError> {
    writable_dir(dir).map_err(|message| TrainerError::Io {
        path: dir.to_path_buf(),
        message,
    })
}

/// Checks, before any long work, that the file `path` can be written (as
/// [`write_atomically`] does): its directory can take new files ([`check_writable_dir`],
/// which creates it when missing) and `path` is not a directory.
///
/// # Errors
/// [`TrainerError::Io`] naming `path` and the reason.
pub fn check_writable_file(path: &Path) -> Result<(), TrainerError> {
    if path.is_dir() {
        return Err(TrainerError::io(
            path,
            "it is a directory: give a file name",
        ));
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() {
            return Err(TrainerError::io(
                path,
                "it is not a regular file (a device or a pipe): give a file name",
            ));
        }
    }
    // A file of a run directory (weights, config, vocabulary, metrics) is never an output.
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let (Some(dir), Some(name)) = (target.parent(), target.file_name()) {
        let run_file = [
            files::CONFIG,
            files::VOCAB,
            files::TOKENIZER,
            files::WEIGHTS,
            files::METRICS,
            files::METRICS_CSV,
            files::SUMMARY,
        ]
        .iter()
        .any(|f| name == *f)
            || name.to_string_lossy().ends_with(".safetensors");
        if target.exists() && run_file && dir.join(files::CONFIG).exists() {
            return Err(TrainerError::io(
                path,
                "it is a file of a run directory and would be overwritten: give another path",
            ));
        }
    }
    writable_dir(path.parent().unwrap_or(Path::new(""))).map_err(|message| TrainerError::Io {
        path: path.to_path_buf(),
        message,
    })
}

/// What stops `dir` from taking new files, in words naming the directory at fault.
fn writable_dir(dir: &Path) -> Result<(), String> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Some(existing) = dir.ancestors().find(|a| a.exists()) {
        if !existing.is_dir() {
            return Err(format!("{} is a file, not a directory", existing.display()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create the directory {}: {}",
            dir.display(),
            e.reason()
        )
    })?;
    let probe = tempfile::Builder::new()
        .prefix(".perplex-write-check-")
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create files in {}: {}", dir.display(), e.reason()))?;
    probe.close().map_err(|e| {
        format!(
            "cannot remove a file from {}: {}",
            dir.display(),
            e.reason()
        )
    })
}

/// Saves the variables of `vs` as safetensors, atomically.
///
/// # Errors
/// [`TrainerError::Io`] naming the path.
pub fn save_weights(vs: &nn::VarStore, path: &Path) -> Result<(), TrainerError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .suffix(".safetensors")
        .tempfile_in(dir)
        .map_err(|e| TrainerError::io(path, e))?;
    write_tensors(tmp.path(), &sorted_variables(vs)).map_err(|e| match e {
        TrainerError::Io { message, .. } => TrainerError::io(path, message),
        other => other,
    })?;
    // A temporary file is private (0600); the result is an ordinary file (0644).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path)
        .map_err(|e| TrainerError::io(path, e.error))?;
    Ok(())
}

/// The variables of `vs` sorted by name (the order they are written in).
pub(crate) fn sorted_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Writes `tensors` as safetensors (which needs contiguous CPU data; an empty list gives a
/// valid empty file).
pub(crate) fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), TrainerError> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.detach().to_device(tch::Device::Cpu).contiguous(),
            )
        })
        .collect();
    Tensor::write_safetensors(&cpu, path).map_err(|e| TrainerError::io(path, e))
}

/// The directory for a run: `run_dir/run_name`, or `run_dir/run-<unix seconds>`.
pub fn run_path(run_dir: &Path, run_name: Option<&str>) -> PathBuf {
    match run_name {
        Some(n) => run_dir.join(n),
        None => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            run_dir.join(format!("run-{secs}"))
        }
    }
}

/// Appends one JSON line to `metrics.jsonl`.
///
/// # Errors
/// [`TrainerError::Io`] naming the path.
pub fn append_metrics(path: &Path, record: &serde_json::Value) -> Result<(), TrainerError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainerError::io(path, e))?;
    writeln!(f, "{record}").map_err(|e| TrainerError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/dev/full` takes no byte: every write fails with ENOSPC, as on a full disk.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_full_disk_is_reported_in_words_with_the_file() {
        let full = Path::new("/dev/full");
        let e = append_metrics(full, &serde_json::json!({"kind": "train"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/full") && e.contains("no space left on device") && !e.contains("Os {"),
            "{e}"
        );
        let tensors = vec![("w".to_string(), Tensor::zeros([4], tch::kind::FLOAT_CPU))];
        let e = write_tensors(full, &tensors).unwrap_err().to_string();
        assert!(
            e.contains("/dev/full")
                && e.contains("no space left on device")
                && !e.contains("Os {")
                && !e.contains("IoError"),
            "{e}"
        );
    }

    #[test]
    fn writability_is_checked_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let e = check_writable_file(&file.join("out.tsv"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a-file/out.tsv") && e.contains("is a file, not a directory"),
            "{e}"
        );
        let e = check_writable_dir(&file.join("lr"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a-file/lr") && e.contains("not a directory"),
            "{e}"
        );
        let e = check_writable_file(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        // A missing parent is created, and nothing is left in it.
        let out = dir.path().join("new/sub/out.tsv");
        check_writable_file(&out).unwrap();
        assert!(out.parent().unwrap().is_dir());
        assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 0);
        // /proc takes no new file, even from root.
        #[cfg(target_os = "linux")]
        {
            let e = check_writable_file(Path::new("/proc/out.tsv"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("/proc/out.tsv") && !e.contains("Os {"), "{e}");
        }
    }

    /// A mounted 64 KiB tmpfs, when this process may mount one (root on Linux); else `None`.
    fn tiny_tmpfs() -> Option<tempfile::TempDir> {
        let dir = tempfile::tempdir().ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(dir)
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn weights_that_do_not_fit_on_the_disk_are_reported_in_words() {
        let Some(dir) = tiny_tmpfs() else {
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        };
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _w = vs.root().zeros("w", &[64 * 1024]);
        let path = dir.path().join("model.safetensors");
        let e = save_weights(&vs, &path);
        let _ = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string())
                && e.contains("no space left on device")
                && !e.contains("Os {"),
            "{e}"
        );
    }
}
