//! `perplex train` launched as two ranks on Gloo (CPU), as torchrun launches it: the same
//! per-step losses and final weights as one process with the whole batch (pitfall BB2-18), a
//! rank killed mid-run ends the other with an error naming it instead of a hang (BB2-21), and
//! launch mistakes end in one line (BB2-24). These tests fail, saying what to install, in a
//! build without c10d (Gloo's headers, `libgloo-dev`, were missing).
mod common;

use common::corpus;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `perplex` with no launcher variable of the test's own environment.
fn perplex() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_perplex"));
    c.env("RUST_LOG", "warn").env("NO_COLOR", "1");
    for (k, _) in std::env::vars() {
        let launcher = [
            "RANK",
            "LOCAL_RANK",
            "WORLD_SIZE",
            "LOCAL_WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
        ]
        .contains(&k.as_str());
        if launcher
            || k.starts_with("PERPLEX__")
            || k.starts_with("SLURM_")
            || k.starts_with("TORCHELASTIC_")
        {
            c.env_remove(k);
        }
    }
    c
}

/// Rank `rank` of `world_size` as torchrun would start it (rank 0 serving the store), with a
/// short store and collective timeout.
fn rank(rank: usize, world_size: usize, port: u16, timeout_s: u64) -> Command {
    let mut c = perplex();
    c.env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", world_size.to_string())
        .env("LOCAL_WORLD_SIZE", world_size.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("PERPLEX_DIST_TIMEOUT_S", timeout_s.to_string());
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config for the tiny character GRU: global batch 8, `steps` steps, `optim` the body of
/// `[optim]`.
fn config(dir: &Path, optim: &str, steps: u64) -> PathBuf {
    let body = format!(
        r#"
[data]
path = "{}"
tokenizer = "char"
max_vocab_size = 0
batch_size = 8
seq_len = 16
[model]
type = "gru"
embedding_dim = 16
hidden_size = 32
[loss]
type = "softmax_cross_entropy"
[optim]
{optim}
[trainer]
epochs = 1
max_steps = {steps}
device = "cpu"
threads = 1
eval = false
log_every = 1
progress = false
"#,
        corpus().display()
    );
    let path = dir.join(format!("run-{}.toml", body.len() ^ steps as usize));
    std::fs::write(&path, body).unwrap();
    path
}

/// Starts `cmd` training `config` into `run_dir/name`, its stdout and stderr in files there.
fn start(mut cmd: Command, config: &Path, run_dir: &Path, name: &str) -> Child {
    std::fs::create_dir_all(run_dir).unwrap();
    let log = |stream: &str| File::create(run_dir.join(format!("{name}.{stream}"))).unwrap();
    cmd.arg("train")
        .arg("--config")
        .arg(config)
        .args(["--set", &format!("trainer.run_dir={}", run_dir.display())])
        .args(["--set", &format!("trainer.run_name={name}")])
        .stdout(Stdio::from(log("stdout")))
        .stderr(Stdio::from(log("stderr")))
        .spawn()
        .expect("start perplex")
}

/// Waits for `child` at most `limit` (killing it then, and failing); returns its exit status
/// and stderr.
fn finish(mut child: Child, limit: Duration, run_dir: &Path, name: &str) -> (bool, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} still running after {limit:?} (hung): {}",
                std::fs::read_to_string(run_dir.join(format!("{name}.stderr"))).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(run_dir.join(format!("{name}.stderr"))).unwrap();
    (status.success(), stderr)
}

fn train_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "train")
        .map(|r| r["loss"].as_f64().unwrap())
        .collect()
}

fn weights(run: &Path) -> Vec<(String, tch::Tensor)> {
    let mut w = tch::Tensor::read_safetensors(run.join("model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// The error line of a failed run: `error: ...`, with no C++ backtrace anywhere in stderr.
fn error_line(stderr: &str) -> String {
    assert!(
        !stderr.contains("Exception raised from") && !stderr.contains("frame #"),
        "a C++ backtrace reached the user:\n{stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    errors[0].to_string()
}

#[test]
fn two_ranks_train_as_one_process_with_the_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    for (name, optim) in [
        ("sgd", "type = \"sgd\"\nlr = 0.5"),
        ("adam", "type = \"adam\"\nlr = 3e-3"),
    ] {
        let config = config(dir.path(), optim, 6);
        let one = dir.path().join("one");
        let (ok, stderr) = finish(
            start(perplex(), &config, &one, name),
            Duration::from_secs(120),
            &one,
            name,
        );
        assert!(ok, "one process, {name}: {stderr}");
        let (runs0, runs1) = (dir.path().join("rank0"), dir.path().join("rank1"));
        let port = free_port();
        let r0 = start(rank(0, 2, port, 30), &config, &runs0, name);
        let r1 = start(rank(1, 2, port, 30), &config, &runs1, name);
        for (child, runs) in [(r0, &runs0), (r1, &runs1)] {
            let (ok, stderr) = finish(child, Duration::from_secs(120), runs, name);
            assert!(ok, "two ranks, {name}: {stderr}");
        }
        assert!(
            !runs1.join(name).exists(),
            "rank 1 wrote {}",
            runs1.join(name).display()
        );
        let (l1, l2) = (
            train_losses(&one.join(name)),
            train_losses(&runs0.join(name)),
        );
        assert_eq!(l1.len(), 6, "{name}: {l1:?}");
        assert_eq!(l1.len(), l2.len(), "{name}: {l1:?} vs {l2:?}");
        let loss_diff = l1
            .iter()
            .zip(&l2)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let (w1, w2) = (weights(&one.join(name)), weights(&runs0.join(name)));
        assert_eq!(w1.len(), w2.len());
        let mut weight_diff = 0.0f64;
        for ((n1, t1), (n2, t2)) in w1.iter().zip(&w2) {
            assert_eq!(n1, n2);
            weight_diff = weight_diff.max((t1 - t2).abs().max().double_value(&[]));
        }
        eprintln!("{name}: max |loss diff| {loss_diff:.3e}, max |weight diff| {weight_diff:.3e}");
        assert!(loss_diff < 1e-5, "{name}: losses {l1:?} vs {l2:?}");
        assert!(
            weight_diff < 1e-5,
            "{name}: weights differ by {weight_diff}"
        );
        // The parameters moved: a run that never reduced gradients would also match a no-op.
        assert!(l1[5] < l1[0], "{name}: the loss did not fall: {l1:?}");
    }
}

#[test]
fn a_killed_rank_ends_the_other_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "type = \"adam\"\nlr = 3e-3", 1_000_000);
    let (runs0, runs1) = (dir.path().join("rank0"), dir.path().join("rank1"));
    let port = free_port();
    let timeout_s = 20;
    let r0 = start(rank(0, 2, port, timeout_s), &config, &runs0, "run");
    let mut r1 = start(rank(1, 2, port, timeout_s), &config, &runs1, "run");
    let started = Instant::now();
    while train_losses(&runs0.join("run")).len() < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no steps logged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    r1.kill().unwrap(); // SIGKILL
    r1.wait().unwrap();
    let killed = Instant::now();
    let (ok, stderr) = finish(r0, Duration::from_secs(timeout_s + 30), &runs0, "run");
    let line = error_line(&stderr);
    eprintln!(
        "rank 0 exited {:.1} s after rank 1 was killed: {line}",
        killed.elapsed().as_secs_f64()
    );
    assert!(!ok, "rank 0 succeeded");
    assert!(line.contains("lost rank 1"), "{line}");
}

#[test]
fn launch_mistakes_end_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "type = \"sgd\"\nlr = 0.1", 2);
    let runs = dir.path().join("runs");
    let run = |cmd: Command, name: &str| start(cmd, &config, &runs, name);
    let limit = Duration::from_secs(40);

    // Ranks that disagree on WORLD_SIZE: both say so, before Gloo waits for a rank 2.
    let port = free_port();
    let r0 = run(rank(0, 2, port, 20), "ws0");
    let r1 = run(rank(1, 3, port, 20), "ws1");
    for (child, name) in [(r0, "ws0"), (r1, "ws1")] {
        let (ok, stderr) = finish(child, limit, &runs, name);
        let line = error_line(&stderr);
        assert!(!ok);
        assert!(
            line.contains("WORLD_SIZE=2") && line.contains("WORLD_SIZE=3"),
            "{line}"
        );
    }

    // Nobody serves the store: rank 1 gives up after about the timeout.
    let port = free_port();
    let t = Instant::now();
    let (ok, stderr) = finish(run(rank(1, 2, port, 3), "alone"), limit, &runs, "alone");
    let line = error_line(&stderr);
    assert!(!ok);
    assert!(
        line.contains(&format!("127.0.0.1:{port} could not be reached")),
        "{line}"
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());

    // The port is taken by another program.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let (ok, stderr) = finish(run(rank(0, 2, port, 5), "taken"), limit, &runs, "taken");
    let line = error_line(&stderr);
    assert!(!ok);
    assert!(
        line.contains(&format!("127.0.0.1:{port}")) && line.contains("in use"),
        "{line}"
    );

    // A variable that is not a number.
    let mut cmd = rank(0, 2, free_port(), 5);
    cmd.env("WORLD_SIZE", "two");
    let (ok, stderr) = finish(run(cmd, "nan"), limit, &runs, "nan");
    let line = error_line(&stderr);
    assert!(!ok);
    assert!(line.contains("WORLD_SIZE=\"two\""), "{line}");
}
