//! `perplex eval`, `generate`, `plot` and `lr-find` on a tiny char-level model trained here for a
//! few steps on Tiny Shakespeare (fetched by `perplex data`).
mod common;

use common::corpus;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn perplex() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_perplex"));
    c.env("RUST_LOG", "warn");
    c
}

/// `--set` overrides for a model small enough to train in seconds.
fn tiny(run_dir: &Path, name: &str) -> Vec<String> {
    [
        format!("data.path={}", corpus().display()),
        "data.tokenizer=char".into(),
        "data.batch_size=8".into(),
        "data.seq_len=16".into(),
        "data.eval_batch_size=256".into(),
        "model.embedding_dim=16".into(),
        "model.hidden_size=32".into(),
        "trainer.epochs=1".into(),
        "trainer.max_steps=6".into(),
        "trainer.log_every=2".into(),
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

/// Asserts a clean failure: exit code 1, an `error:` line mentioning `needle`, no panic.
fn check_error(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{err}");
    assert!(
        err.contains("error:") && err.contains(needle),
        "stderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "stderr:\n{err}");
}

/// The run directory of the tiny model, trained once per build of the binary: test processes
/// (one per test under nextest) share it through a directory named after the binary's mtime,
/// which each creates by training into a private directory and renaming it.
fn trained_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("perplex-inspect");
        let built = std::fs::metadata(env!("CARGO_BIN_EXE_perplex"))
            .and_then(|m| m.modified())
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let key = format!("bin-{built}");
        let shared = cache.join(&key);
        let done = |d: &Path| d.join("tiny/metrics.jsonl").is_file();
        if !done(&shared) {
            std::fs::create_dir_all(&cache).unwrap();
            // Fixtures of older binaries are stale.
            for e in std::fs::read_dir(&cache).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("bin-") && name != key {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            let private = cache.join(format!("tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&private);
            let out = perplex()
                .arg("train")
                .args(tiny(&private, "tiny"))
                .output()
                .unwrap();
            check(&out, "perplex train");
            assert!(done(&private), "{}", private.display());
            // Another process may have won the race: then its copy is used and ours dropped.
            if std::fs::rename(&private, &shared).is_err() {
                let _ = std::fs::remove_dir_all(&private);
            }
        }
        let run = shared.join("tiny");
        assert!(run.join("model.safetensors").is_file(), "{}", run.display());
        run
    })
}

#[test]
fn eval_reports_finite_perplexity_and_writes_per_token_losses() {
    let run = trained_run();
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("tokens.tsv");
    let out = perplex()
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(run)
        .arg("--per-token")
        .arg(&tsv)
        .output()
        .unwrap();
    check(&out, "perplex eval");
    let stdout = text(&out.stdout);
    let ppl: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("perplexity"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no perplexity row:\n{stdout}"));
    assert!(ppl.is_finite() && ppl > 1.0, "{stdout}");
    assert!(stdout.contains("bits per character"), "{stdout}");
    assert!(stdout.contains("most surprising characters"), "{stdout}");
    let rows = std::fs::read_to_string(&tsv).unwrap();
    let mut lines = rows.lines();
    assert_eq!(lines.next(), Some("position\ttoken\tnll_nats"));
    let mut n = 0;
    for line in lines {
        let cells: Vec<&str> = line.split('\t').collect();
        assert_eq!(cells.len(), 3, "{line:?}");
        cells[0].parse::<usize>().unwrap();
        assert!(cells[2].parse::<f64>().unwrap() >= 0.0);
        n += 1;
    }
    assert!(n > 1000, "{n} rows");
}

#[test]
fn eval_scores_a_text_file() {
    let run = trained_run();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sample.txt");
    std::fs::write(
        &file,
        "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    )
    .unwrap();
    let out = perplex()
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(run)
        .arg("--split")
        .arg(&file)
        .output()
        .unwrap();
    check(&out, "perplex eval --split FILE");
    assert!(
        text(&out.stdout).contains("sample.txt"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn generate_is_deterministic_per_seed_and_never_emits_banned_tokens() {
    let run = trained_run();
    let vocab: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("vocab.json")).unwrap()).unwrap();
    let tokens: Vec<&str> = vocab["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let id = |t: &str| tokens.iter().position(|x| *x == t).unwrap().to_string();
    let generate = |seed: &str| {
        let out = perplex()
            .args(["generate", "--device", "cpu", "--checkpoint"])
            .arg(run)
            .args([
                "--prompt",
                "ROMEO:",
                "--max-tokens",
                "300",
                "--temperature",
                "1.0",
            ])
            .args(["--top-k", "40", "--top-p", "0.95", "--seed", seed])
            .args(["--ban", &id("e"), "--ban", &id("a")])
            .output()
            .unwrap();
        check(&out, "perplex generate");
        text(&out.stdout)
    };
    let a = generate("7");
    assert_eq!(a, generate("7"));
    assert!(a.starts_with("ROMEO:"), "{a}");
    assert!(a.chars().count() >= 300, "{a}");
    assert!(!a.contains('e') && !a.contains('a'), "{a}");
}

#[test]
fn plot_writes_png_and_svg() {
    let run = trained_run();
    let dir = tempfile::tempdir().unwrap();
    let out = perplex()
        .arg("plot")
        .arg(run)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    check(&out, "perplex plot");
    let png = std::fs::read(dir.path().join("metrics.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let svg = std::fs::read_to_string(dir.path().join("metrics.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("Validation perplexity"));
}

#[test]
fn lr_find_writes_its_csv_plot_and_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let out = perplex()
        .arg("lr-find")
        .args(tiny(dir.path(), "unused"))
        .args(["--steps", "12", "--min-lr", "1e-4", "--max-lr", "1"])
        .arg("--out")
        .arg(dir.path().join("lr"))
        .output()
        .unwrap();
    check(&out, "perplex lr-find");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("suggested lr: "), "{stdout}");
    let csv = std::fs::read_to_string(dir.path().join("lr/lr_find.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("step,lr,loss,smoothed_loss"));
    assert!(lines.count() >= 2);
    assert!(dir.path().join("lr/lr_find.png").is_file());
    assert!(dir.path().join("lr/lr_find.svg").is_file());
    // Nothing is trained for keeps: no run directory appears.
    assert!(!dir.path().join("unused").exists());
}

#[test]
fn missing_checkpoint_directory_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-run");
    for cmd in ["eval", "generate"] {
        let out = perplex()
            .args([cmd, "--device", "cpu", "--checkpoint"])
            .arg(&missing)
            .output()
            .unwrap();
        check_error(&out, "no-such-run");
    }
}

#[test]
fn checkpoint_without_weights_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = perplex()
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(dir.path())
        .output()
        .unwrap();
    check_error(&out, "model.safetensors");
}

#[test]
fn plot_without_metrics_file_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = perplex().arg("plot").arg(dir.path()).output().unwrap();
    check_error(&out, "metrics.jsonl");
    let out = perplex()
        .arg("plot")
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    check_error(&out, "nope");
}

#[test]
fn banning_an_id_outside_the_vocabulary_is_a_clean_error() {
    let run = trained_run();
    let out = perplex()
        .args(["generate", "--device", "cpu", "--checkpoint"])
        .arg(run)
        .args(["--prompt", "A", "--ban", "100000"])
        .output()
        .unwrap();
    check_error(&out, "100000");
}
