//! A user's mistakes end in a short error naming what is wrong, before any long work, and
//! without colour codes in redirected logs or libtorch's C++ backtrace (issue 13).
mod common;

use common::corpus;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn perplex() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_perplex"));
    c.env("RUST_LOG", "warn").env_remove("NO_COLOR");
    for (k, _) in std::env::vars() {
        if k.starts_with("PERPLEX__") {
            c.env_remove(k);
        }
    }
    c
}

/// `--set` overrides for a model small enough to train in seconds.
fn tiny(run_dir: &Path, name: &str) -> Vec<String> {
    [
        format!("data.path={}", corpus().display()),
        "data.tokenizer=char".into(),
        "data.batch_size=8".into(),
        "data.seq_len=16".into(),
        "model.embedding_dim=16".into(),
        "model.hidden_size=32".into(),
        "trainer.epochs=1".into(),
        "trainer.max_steps=4".into(),
        "trainer.device=cpu".into(),
        "trainer.threads=1".into(),
        format!("trainer.run_dir={}", run_dir.display()),
        format!("trainer.run_name={name}"),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_string(), s])
    .collect()
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Asserts a clean failure: exit code 1, an `error:` naming every needle, no panic, no
/// libtorch backtrace, no Rust debug form of an I/O error. Returns stderr.
fn check_error(out: &Output, needles: &[&str]) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{err}");
    assert!(err.contains("error:"), "stderr:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "no {needle:?} in stderr:\n{err}");
    }
    for leak in [
        "panicked",
        "frame #",
        "Exception raised from",
        "Os {",
        "IoError(",
    ] {
        assert!(!err.contains(leak), "{leak:?} in stderr:\n{err}");
    }
    err
}

/// A tiny run trained once per test binary.
fn trained_run() -> &'static Path {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &RUN.get_or_init(|| {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let out = perplex()
            .arg("train")
            .args(tiny(dir.path(), "tiny"))
            .output()
            .unwrap();
        check(&out, "perplex train");
        let run = dir.path().join("tiny");
        assert!(run.join("model.safetensors").is_file());
        (dir, run)
    })
    .1
}

#[test]
fn logs_redirected_to_a_file_hold_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = perplex()
        .env("RUST_LOG", "info")
        .args(["train", "--dry-run"])
        .args(tiny(dir.path(), "dry"))
        .output()
        .unwrap();
    check(&out, "perplex train --dry-run");
    let err = text(&out.stderr);
    assert!(err.contains("INFO"), "no info log in stderr:\n{err}");
    assert!(
        !err.contains("\x1b["),
        "colour codes in a piped stderr:\n{err}"
    );
}

#[test]
fn eval_per_token_into_an_unwritable_path_fails_before_loading_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out_path = file.join("out.tsv");
    // The checkpoint does not exist either: the output path is checked first.
    let started = Instant::now();
    let out = perplex()
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(dir.path().join("no-such-run"))
        .arg("--per-token")
        .arg(&out_path)
        .output()
        .unwrap();
    check_error(
        &out,
        &[
            &out_path.display().to_string(),
            "is a file, not a directory",
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    #[cfg(target_os = "linux")]
    {
        let out = perplex()
            .args(["eval", "--device", "cpu", "--per-token", "/proc/out.tsv"])
            .arg("--checkpoint")
            .arg(trained_run())
            .output()
            .unwrap();
        check_error(&out, &["/proc/out.tsv", "cannot create files in /proc"]);
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    }
    // A missing parent directory is created.
    let nested = dir.path().join("new/dir/out.tsv");
    let out = perplex()
        .args(["eval", "--device", "cpu", "--top", "0", "--checkpoint"])
        .arg(trained_run())
        .arg("--per-token")
        .arg(&nested)
        .output()
        .unwrap();
    check(&out, "perplex eval --per-token new/dir/out.tsv");
    assert!(nested.is_file());
}

#[test]
fn lr_find_into_an_unwritable_directory_fails_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out_dir = file.join("lr");
    let runs = dir.path().join("runs");
    let started = Instant::now();
    let out = perplex()
        .args(["lr-find", "--steps", "5"])
        .args(tiny(&runs, "lr"))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    check_error(
        &out,
        &[
            "--out",
            &out_dir.display().to_string(),
            "is a file, not a directory",
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing was trained: no table printed, no run directory.
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(!runs.exists());
}

#[test]
fn eval_of_a_missing_test_split_names_the_splits_there_are() {
    let out = perplex()
        .args(["eval", "--device", "cpu", "--split", "test", "--checkpoint"])
        .arg(trained_run())
        .output()
        .unwrap();
    check_error(
        &out,
        &[
            "has no test split",
            "[0.9, 0.1] (train, valid)",
            "--split valid",
            "data.splits = [0.8, 0.1, 0.1]",
        ],
    );
}

/// A copy of the tiny run whose weights have other shapes (every first dimension one larger)
/// under the same names.
fn run_with_weights_of_another_shape(dir: &Path) -> PathBuf {
    let run = dir.join("reshaped");
    std::fs::create_dir_all(&run).unwrap();
    for f in ["config.toml", "vocab.json"] {
        std::fs::copy(trained_run().join(f), run.join(f)).unwrap();
    }
    let tensors = tch::Tensor::read_safetensors(trained_run().join("model.safetensors")).unwrap();
    let reshaped: Vec<(String, tch::Tensor)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let mut shape = t.size();
            shape[0] += 1;
            (name, tch::Tensor::zeros(shape, tch::kind::FLOAT_CPU))
        })
        .collect();
    tch::Tensor::write_safetensors(&reshaped, run.join("model.safetensors")).unwrap();
    run
}

#[test]
fn weights_of_another_shape_are_a_short_error_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_with_weights_of_another_shape(dir.path());
    for command in ["eval", "generate"] {
        let out = perplex()
            .args([command, "--device", "cpu", "--checkpoint"])
            .arg(&run)
            .output()
            .unwrap();
        let err = check_error(
            &out,
            &[
                "model.safetensors",
                "tensor `",
                "in the file, the model expects",
            ],
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{command}:\n{err}");
    }
}

#[test]
fn odd_generate_inputs_never_show_a_backtrace() {
    let run = trained_run();
    for (args, ok) in [
        (&["--prompt", ""][..], true),
        (&["--prompt", "\u{1F600} never seen"][..], true),
        (&["--top-k", "100000"][..], true),
        (&["--temperature", "1e-300"][..], true),
        (&["--temperature", "1e300"][..], true),
        (&["--temperature", "nan"][..], false),
        (&["--top-p", "0"][..], false),
        (&["--ban=-1"][..], false),
        (&["--ban", "66000"][..], false),
    ] {
        let out = perplex()
            .args([
                "generate",
                "--device",
                "cpu",
                "--max-tokens",
                "8",
                "--checkpoint",
            ])
            .arg(run)
            .args(args)
            .output()
            .unwrap();
        if ok {
            check(&out, &format!("perplex generate {args:?}"));
            if args.get(1) == Some(&"1e-300") {
                // Greedy, not a NaN softmax drawing id 0 (`<unk>`) every time.
                assert!(
                    !text(&out.stdout).contains("<unk>"),
                    "{args:?}: {}",
                    text(&out.stdout)
                );
            }
        } else {
            check_error(&out, &[]);
        }
    }
}
