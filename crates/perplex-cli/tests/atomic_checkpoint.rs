//! Killing `perplex train` at any moment — also while a checkpoint is being written — leaves the
//! previous checkpoint loadable: a resume from the run directory succeeds.
mod common;

use common::corpus;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn perplex() -> Command {
    Command::new(env!("CARGO_BIN_EXE_perplex"))
}

fn checkpoints(run: &Path) -> usize {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn kill_during_checkpointing_leaves_a_loadable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let sets = [
        format!("data.path={}", corpus().display()),
        "data.tokenizer=char".into(),
        "data.max_vocab_size=0".into(),
        "data.batch_size=8".into(),
        "data.seq_len=16".into(),
        "model.embedding_dim=16".into(),
        "model.hidden_size=256".into(),
        "trainer.eval=false".into(),
        // A checkpoint at every step: most of the time is spent writing them.
        "trainer.eval_every=1".into(),
        "trainer.device=cpu".into(),
        format!("trainer.run_dir={}", dir.path().display()),
        "trainer.run_name=killed".into(),
    ];
    let run = dir.path().join("killed");
    // Kill at several moments; after each kill the newest complete checkpoint must resume.
    for (round, delay_ms) in [700u64, 1100, 1500].into_iter().enumerate() {
        let mut cmd = perplex();
        cmd.arg("train").stdout(Stdio::null()).stderr(Stdio::null());
        if round == 0 {
            cmd.args(sets.iter().flat_map(|s| ["--set", s.as_str()]));
        } else {
            cmd.args(["--resume", run.to_str().unwrap()]);
        }
        let mut child = cmd.spawn().unwrap();
        let start = Instant::now();
        // Wait for at least one checkpoint (or give up after a minute), then a little more.
        while checkpoints(&run) == 0 && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        child.wait().unwrap();
        assert!(
            checkpoints(&run) > 0,
            "round {round}: no checkpoint written"
        );
    }
    // The run resumes from its newest complete checkpoint and takes one more step.
    let manifest_steps: Vec<u64> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("step-")?
                .parse()
                .ok()
        })
        .collect();
    let latest = *manifest_steps.iter().max().unwrap();
    let out = perplex()
        .args(["train", "--resume", run.to_str().unwrap()])
        .args(["--set", &format!("trainer.max_steps={}", latest + 1)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "resume failed: {stderr}");
    assert!(stderr.contains("resuming"), "{stderr}");
}

#[test]
fn resume_without_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = perplex()
        .args(["train", "--resume", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error:") && stderr.contains("checkpoint"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
