//! `perplex train --dry-run` checks the config as `train` does, and an override that switches a
//! section's `type` starts that section from the new type's defaults.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn perplex(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_perplex"));
    c.current_dir(dir).env("RUST_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("PERPLEX__") {
            c.env_remove(k);
        }
    }
    c
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/configs/gru-tinyshakespeare.toml")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn dry_run_rejects_what_train_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let o = perplex(dir.path())
        .args(["train", "--dry-run", "--set", "optim.lr=-1"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(!o.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("lr") && stderr.contains("-1"), "{stderr}");
    for bad in [
        "trainer.accumulate=3",
        "data.splits=[0.5, 0.9]",
        // Short of 1: the last split would silently take the rest (0.5 for valid, not 0.2).
        "data.splits=[0.5, 0.2]",
        "data.splits=[0.5, 0.2, 0.1]",
        "loss.label_smoothing=1.5",
        "loss.reduction=none",
    ] {
        let o = perplex(dir.path())
            .args(["train", "--dry-run", "--set", bad])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{bad}: {:?}", text(&o));
    }
    // A class weight per token of the seed vocabulary is checked by training, not refused here.
    let weights = format!("loss.weight=[{}]", vec!["1.0"; 10_001].join(","));
    let o = perplex(dir.path())
        .args(["train", "--dry-run", "--set", &weights])
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    // Nothing was created, nothing fetched.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn dry_run_prints_a_good_config_without_creating_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let o = perplex(dir.path())
        .args(["train", "--dry-run", "-c"])
        .arg(example())
        .args([
            "--set",
            "trainer.run_name=0042",
            "--set",
            "trainer.epochs=3",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("run_name = \"0042\""), "{stdout}");
    assert!(stdout.contains("epochs = 3\n"), "{stdout}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn switching_the_optimiser_type_drops_the_files_keys_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let o = perplex(dir.path())
        .args(["train", "--dry-run", "-c"])
        .arg(example())
        .args(["--set", "optim.type=sgd", "--set", "optim.momentum=0.9"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.contains("[optim]\ntype = \"sgd\"\nlr = 0.1\nmomentum = 0.9\n"),
        "{stdout}"
    );
    assert!(
        stderr.contains(
            "`--set optim.type=sgd` replaced [optim]: dropped betas, eps, lr, weight_decay from"
        ) && stderr.contains("gru-tinyshakespeare.toml"),
        "{stderr}"
    );
}

#[test]
fn unknown_names_list_the_registered_ones() {
    let dir = tempfile::tempdir().unwrap();
    for (set, listed) in [
        ("model.type=grux", "registered models: `gru`"),
        ("optim.type=adamx", "`adam`, `adamw`"),
        ("schedule.type=cosin", "`warmup_cosine`"),
        ("loss.type=xent", "`softmax_cross_entropy`"),
        (
            "data.tokenizer=sentencepiece",
            "accepted tokenizers: `word`, `char`, `whitespace`, `bpe`",
        ),
    ] {
        let o = perplex(dir.path())
            .args(["train", "--dry-run", "--set", set])
            .output()
            .unwrap();
        let (_, stderr) = text(&o);
        assert!(!o.status.success(), "{set}");
        assert!(stderr.contains(listed), "{set}: {stderr}");
        assert!(stderr.contains(&format!("--set {set}")), "{set}: {stderr}");
    }
}

/// A loss option that only the loss can check (here a class `weight` whose length is not the
/// vocabulary's) stops `train` after the corpus is read and before any file of the run is
/// written: no run directory is left behind.
#[test]
fn a_bad_loss_option_stops_train_before_the_run_directory_exists() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "abcab cabba\n".repeat(400)).unwrap();
    for (set, expect) in [
        ("loss.weight=[1.0, 2.0]", "weight"),
        ("loss.label_smoothing=1.5", "label_smoothing"),
    ] {
        let o = perplex(dir.path())
            .args(["train", "--set"])
            .arg(format!("data.path={}", corpus.display()))
            .args([
                "--set",
                "data.tokenizer=char",
                "--set",
                "data.batch_size=4",
                "--set",
                "data.seq_len=8",
                "--set",
                "trainer.run_dir=runs",
                "--set",
                set,
            ])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&o);
        assert!(!o.status.success(), "{set}: {stdout}{stderr}");
        assert!(stderr.contains(expect), "{set}: {stderr}");
        assert!(
            !dir.path().join("runs").exists(),
            "{set}: a run directory was made"
        );
    }
}
