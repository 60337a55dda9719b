//! A run survives Ctrl-C, preemption and a user's mistakes: SIGINT/SIGTERM checkpoint and exit
//! 130/143 and the resume continues exactly; a resume that cannot continue changes no file; a
//! finished run says so; the last validation counts for `best`; a run works from any directory.
mod common;

use common::corpus;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn perplex() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_perplex"));
    c.env("RUST_LOG", "warn").env_remove("NO_COLOR");
    c
}

/// `--set` overrides for a small char-level GRU run named `name` under `runs`.
fn args(runs: &Path, name: &str, steps: u64, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        format!("data.path={}", corpus().display()),
        "data.tokenizer=char".into(),
        "data.batch_size=16".into(),
        "data.seq_len=32".into(),
        "data.eval_batch_size=512".into(),
        "model.embedding_dim=32".into(),
        "model.hidden_size=96".into(),
        format!("trainer.max_steps={steps}"),
        "trainer.log_every=1".into(),
        "trainer.threads=1".into(),
        "trainer.device=cpu".into(),
        format!("trainer.run_dir={}", runs.display()),
        format!("trainer.run_name={name}"),
    ]
    .into();
    a.extend(extra.iter().map(|s| s.to_string()));
    a.into_iter()
        .flat_map(|s| ["--set".to_string(), s])
        .collect()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file of a run directory and its bytes.
fn snapshot(run: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut m = BTreeMap::new();
    walk(run, &mut m);
    m
}

/// `(step, loss)` of the `train` records of a run's `metrics.jsonl`.
fn train_losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "train")
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

/// `(epoch, step, loss bits)` of each `epoch` record in `metrics.jsonl`.
fn epoch_records(run: &Path) -> Vec<(u64, u64, u64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "epoch")
        .map(|r| {
            (
                r["epoch"].as_u64().unwrap(),
                r["step"].as_u64().unwrap(),
                r["loss"].as_f64().unwrap().to_bits(),
            )
        })
        .collect()
}

#[test]
fn sigint_and_sigterm_checkpoint_exit_130_143_and_the_resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path();
    let steps = 200;
    ok(&perplex()
        .arg("train")
        .args(args(runs, "straight", steps, &[]))
        .output()
        .unwrap());
    let straight = train_losses(&runs.join("straight"));
    assert_eq!(straight.len(), steps as usize);
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let name = format!("sig{signal}");
        let run = runs.join(&name);
        let child = perplex()
            .arg("train")
            .args(args(runs, &name, steps, &[]))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Signal once training is well under way (metrics show 20 steps).
        let start = Instant::now();
        while std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
            < 20
        {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "training did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let st = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "SIG{signal}: {stderr}");
        assert!(
            stderr.contains(&format!("interrupted by SIG{signal}")),
            "{stderr}"
        );
        // Said at once, before the step and the checkpoint finish.
        assert!(
            stderr.contains(&format!("SIG{signal}: stopping after the current step")),
            "{stderr}"
        );
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
        let stopped = summary["steps"].as_u64().unwrap();
        assert_eq!(summary["interrupted"], format!("SIG{signal}"));
        assert!(
            stopped < steps,
            "SIG{signal} came too late to test anything"
        );
        assert!(run.join("model.safetensors").exists());
        assert!(run
            .join(format!("checkpoints/step-{stopped:08}/manifest.json"))
            .exists());
        // Resume: the same loss curve, bit for bit, each step once in both metrics files.
        ok(&perplex()
            .args(["train", "--resume"])
            .arg(&run)
            .output()
            .unwrap());
        let resumed = train_losses(&run);
        assert_eq!(resumed.len(), straight.len(), "SIG{signal}: {resumed:?}");
        // The interrupted epoch's partial record is replaced by the resumed run's: the same
        // epoch records as the uninterrupted run (the epoch's loss sum is in the checkpoint).
        assert_eq!(
            epoch_records(&run),
            epoch_records(&runs.join("straight")),
            "SIG{signal}: epoch records"
        );
        for ((sa, la), (sb, lb)) in straight.iter().zip(&resumed) {
            assert_eq!(
                (sa, la.to_bits()),
                (sb, lb.to_bits()),
                "SIG{signal}: step {sa}"
            );
        }
        let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
        let train_rows = csv.lines().filter(|l| l.starts_with("train,")).count();
        assert_eq!(train_rows, steps as usize, "SIG{signal}: metrics.csv rows");
        assert_eq!(
            std::fs::read(run.join("model.safetensors")).unwrap(),
            std::fs::read(runs.join("straight/model.safetensors")).unwrap(),
            "SIG{signal}: final weights differ from the uninterrupted run's"
        );
    }
}

#[test]
fn a_resume_that_cannot_continue_changes_no_file_and_a_finished_run_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path();
    ok(&perplex()
        .arg("train")
        .args(args(runs, "r", 12, &[]))
        .output()
        .unwrap());
    let run = runs.join("r");
    let before = snapshot(&run);
    for (set, key, old, new) in [
        ("model.hidden_size=256", "model.hidden_size", "96", "256"),
        ("data.seq_len=64", "data.seq_len", "32", "64"),
        (
            "data.tokenizer=word",
            "data.tokenizer",
            "\"char\"",
            "\"word\"",
        ),
        // Adam's moments cannot become SGD's momentum buffers.
        ("optim.type=sgd", "optim.type", "\"adam\"", "\"sgd\""),
    ] {
        let out = perplex()
            .args(["train", "--resume"])
            .arg(&run)
            .args(["--set", set, "--set", "trainer.max_steps=20"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set}: resumed");
        assert!(
            stderr.contains(key) && stderr.contains(old) && stderr.contains(new),
            "{set}: {stderr}"
        );
        assert!(!stderr.contains("frame #"), "{set}: {stderr}");
        assert!(snapshot(&run) == before, "{set}: the run directory changed");
        // The same change through the environment (`PERPLEX__DATA__TOKENIZER=word`): the
        // run's saved config is read from its file alone, so the environment cannot make the
        // two sides equal (issue 24, fault 1: it trained on and rewrote config.toml).
        let (path, value) = set.split_once('=').unwrap();
        let var = format!("PERPLEX__{}", path.to_uppercase().replace('.', "__"));
        let out = perplex()
            .args(["train", "--resume"])
            .arg(&run)
            .args(["--set", "trainer.max_steps=20"])
            .env(&var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value}: resumed");
        assert!(
            stderr.contains(key) && stderr.contains(old) && stderr.contains(new),
            "{var}={value}: {stderr}"
        );
        assert!(snapshot(&run) == before, "{var}: the run directory changed");
    }
    // Finished (max_steps reached): said, exit 0, nothing changed.
    let out = perplex()
        .args(["train", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let stdout = ok(&out);
    assert!(
        stdout.contains("has finished") && stdout.contains("trainer.max_steps"),
        "{stdout}"
    );
    assert!(
        snapshot(&run) == before,
        "a finished run's directory changed"
    );
    // A max_steps set below the run's step: the hint names a value above that step (following
    // a hint of twice the set value would loop), and following it trains on.
    let out = perplex()
        .args(["train", "--resume"])
        .arg(&run)
        .args(["--set", "trainer.max_steps=1"])
        .output()
        .unwrap();
    let stdout = ok(&out);
    let hint: u64 = stdout
        .rsplit("trainer.max_steps=")
        .next()
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no max_steps hint: {stdout}"));
    let reached: u64 = stdout
        .split("reached at step ")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step: {stdout}"));
    assert!(
        hint > reached,
        "hint {hint} not above step {reached}: {stdout}"
    );
    assert!(
        snapshot(&run) == before,
        "a finished run's directory changed"
    );
    // Another corpus on resume: the run's vocabulary is used, not one rebuilt from the new text.
    let other = dir.path().join("other.txt");
    std::fs::write(&other, "ZZZZ qqqq ".repeat(4000)).unwrap();
    ok(&perplex()
        .args(["train", "--resume"])
        .arg(&run)
        .args(["--set", &format!("data.path={}", other.display())])
        .args([
            "--set",
            "trainer.max_steps=14",
            "--set",
            "data.splits=[0.5, 0.5]",
        ])
        .output()
        .unwrap());
    assert_eq!(
        std::fs::read(run.join("vocab.json")).unwrap(),
        before[&run.join("vocab.json")]
    );
}

#[test]
fn the_last_validation_counts_for_best_and_reaches_every_metrics_file() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path();
    ok(&perplex()
        .arg("train")
        .args(args(runs, "v", 15, &[]))
        .output()
        .unwrap());
    let run = runs.join("v");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    let last = summary["final_epoch"]["valid"]["loss"].as_f64().unwrap();
    // Throughput and model FLOP utilisation against a matmul ceiling measured at the end.
    let u = &summary["utilisation"];
    let (achieved, ceiling) = (
        u["achieved_gflop_per_s"].as_f64().unwrap(),
        u["matmul_ceiling_gflop_per_s"].as_f64().unwrap(),
    );
    assert!(achieved > 0.0 && ceiling > 0.0, "{u}");
    assert!((u["mfu"].as_f64().unwrap() - achieved / ceiling).abs() < 1e-12);
    assert_eq!(summary["best_valid_loss"].as_f64(), Some(last));
    let best: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("checkpoints/best/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(best["step"], 15);
    assert_eq!(best["best_valid_loss"].as_f64(), Some(last));
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(
        csv.lines()
            .any(|l| l.starts_with("valid,") && l.contains(",15,")),
        "{csv}"
    );
}

#[test]
fn a_run_trained_with_relative_paths_is_evaluated_from_any_directory() {
    let work = tempfile::tempdir().unwrap();
    std::fs::copy(corpus(), work.path().join("corpus.txt")).unwrap();
    let mut a = args(Path::new("runs"), "rel", 8, &[]);
    // A relative corpus path and run directory, as a user in their project directory writes.
    a.extend(["--set".into(), "data.path=corpus.txt".into()]);
    ok(&perplex()
        .arg("train")
        .args(&a)
        .current_dir(work.path())
        .output()
        .unwrap());
    let run = work.path().join("runs/rel");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains(&format!("{}", work.path().join("corpus.txt").display())),
        "{config}"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let out = perplex()
        .args(["eval", "--checkpoint"])
        .arg(&run)
        .args(["--split", "valid"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let stdout = ok(&out);
    assert!(
        stdout.contains("perplexity") || stdout.contains("ppl"),
        "{stdout}"
    );
}

#[test]
fn resume_dry_run_writes_nothing_and_run_specific_overrides_apply_to_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path();
    let focal = ["loss.type=focal", "loss.gamma=2.0"];
    ok(&perplex()
        .arg("train")
        .args(args(runs, "f", 6, &focal))
        .output()
        .unwrap());
    let run = runs.join("f");
    let before = snapshot(&run);
    // A key only the run's loss has (`gamma`), with --dry-run: checked, printed, nothing written.
    let out = perplex()
        .args(["train", "--dry-run", "--resume"])
        .arg(&run)
        .args(["--set", "loss.gamma=3.0", "--set", "trainer.max_steps=8"])
        .output()
        .unwrap();
    let stdout = ok(&out);
    assert!(stdout.contains("gamma = 3.0"), "{stdout}");
    assert!(snapshot(&run) == before, "a dry-run resume changed the run");
    // --config is not the run's config: refused rather than ignored.
    let other = runs.join("other.toml");
    std::fs::write(&other, "[loss]\ntype = \"focal\"\ngamma = 5.0\n").unwrap();
    let out = perplex()
        .args(["train", "--resume"])
        .arg(&run)
        .arg("--config")
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config is not used with --resume"));
    assert!(snapshot(&run) == before);
    // The same run name again: refused, the old run untouched.
    let out = perplex()
        .arg("train")
        .args(args(runs, "f", 3, &[]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("already holds a run"),
        "{stderr}"
    );
    assert!(
        snapshot(&run) == before,
        "a new run was written into an old one"
    );
}

#[test]
fn per_token_output_goes_through_links_and_never_over_run_files_or_devices() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path();
    ok(&perplex()
        .arg("train")
        .args(args(runs, "e", 4, &[]))
        .output()
        .unwrap());
    let run = runs.join("e");
    let eval = |out: &Path| {
        perplex()
            .args(["eval", "--checkpoint"])
            .arg(&run)
            .args(["--split", "valid", "--per-token"])
            .arg(out)
            .output()
            .unwrap()
    };
    // Through a symbolic link: the target is written, the link stays a link.
    let target = runs.join("target.tsv");
    let link = runs.join("link.tsv");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    ok(&eval(&link));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::read_to_string(&target)
        .unwrap()
        .starts_with("position\t"));
    // A run's own files and devices are refused before any work, and stay as they were.
    let before = snapshot(&run);
    for bad in [run.join("model.safetensors"), PathBuf::from("/dev/null")] {
        let out = eval(&bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: {stderr}", bad.display());
        assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
    }
    assert!(snapshot(&run) == before);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
}

#[test]
fn a_run_stopped_before_its_first_checkpoint_says_how_to_train_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path();
    // A NaN loss at step 2 stops the run (trainer.on_non_finite = "stop") before any checkpoint.
    let out = perplex()
        .arg("train")
        .args(args(runs, "r", 12, &[]))
        .env("PERPLEX_TEST_NAN_AT_STEP", "2:0")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the NaN did not stop the run");
    let run = runs.join("r");
    assert!(run.join("config.toml").is_file());
    // No checkpoint at all (checkpoints are `checkpoints/step-NNNNNNNN/manifest.json`).
    let checkpoints: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        checkpoints
            .iter()
            .all(|c| !c.join("manifest.json").exists()),
        "a checkpoint was written: {checkpoints:?}"
    );
    let before = snapshot(&run);
    // Neither a new run under the name nor a resume: each says why and what to do.
    for command in [
        vec!["train".to_string()],
        vec!["train".into(), "--resume".into(), run.display().to_string()],
    ] {
        let mut cmd = perplex();
        cmd.args(&command);
        if command.len() == 1 {
            cmd.args(args(runs, "r", 12, &[]));
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command:?}");
        assert!(
            stderr.contains("stopped before its first checkpoint")
                && stderr.contains(&format!("rm -r {}", run.display())),
            "{command:?}: {stderr}"
        );
        assert!(
            snapshot(&run) == before,
            "{command:?}: the run directory changed"
        );
    }
    // Following the advice trains it again.
    std::fs::remove_dir_all(&run).unwrap();
    ok(&perplex()
        .arg("train")
        .args(args(runs, "r", 3, &[]))
        .output()
        .unwrap());
}
