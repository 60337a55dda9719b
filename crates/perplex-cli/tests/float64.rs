//! `perplex train`, `eval` and `generate` on a `trainer.precision = "f64"` run: the run's files
//! hold float64 tensors, and `eval` and `generate` load them as such (no cast, no error):
//! `eval` scores the validation split with the loss the run validated with.
mod common;

use common::corpus;
use std::path::Path;
use std::process::{Command, Output};

fn perplex(args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_perplex"));
    c.env("RUST_LOG", "warn").env("NO_COLOR", "1");
    for (k, _) in std::env::vars() {
        if k.starts_with("PERPLEX__") {
            c.env_remove(k);
        }
    }
    let out = c.args(args).output().expect("run perplex");
    assert!(
        out.status.success(),
        "perplex {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The validation loss of a run's last `valid` record.
fn valid_loss(run: &Path) -> f64 {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|r| r["kind"] == "valid")
        .expect("a valid record")["loss"]
        .as_f64()
        .unwrap()
}

#[test]
fn eval_and_generate_load_a_float64_run() {
    let dir = tempfile::tempdir().unwrap();
    // 8,000 characters: a run of seconds whose validation split is a few windows.
    let text = std::fs::read_to_string(corpus()).unwrap();
    let data = dir.path().join("small.txt");
    std::fs::write(&data, &text[..8000]).unwrap();
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[data]
path = "{}"
tokenizer = "char"
max_vocab_size = 0
batch_size = 4
seq_len = 16
[model]
type = "transformer"
n_layer = 1
n_head = 2
n_embd = 16
block_size = 16
tie_weights = true
[optim]
type = "adamw"
lr = 3e-3
[trainer]
epochs = 1
max_steps = 5
device = "cpu"
threads = 1
precision = "f64"
progress = false
run_dir = "{}"
run_name = "run"
"#,
            data.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    perplex(&["train", "--config", config.to_str().unwrap()]);
    let run = dir.path().join("run");
    for (name, t) in tch::Tensor::read_safetensors(run.join("model.safetensors")).unwrap() {
        assert_eq!(t.kind(), tch::Kind::Double, "{name}");
    }

    let run_arg = run.to_str().unwrap();
    let out = perplex(&["eval", "--checkpoint", run_arg, "--device", "cpu"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let loss: f64 = stdout
        .lines()
        .find(|l| l.starts_with("loss (nats per character)"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no loss line:\n{stdout}"))
        .parse()
        .unwrap();
    let trained = valid_loss(&run);
    assert!(
        (loss - trained).abs() <= 5e-5,
        "eval {loss} vs validation in training {trained}:\n{stdout}"
    );

    let out = perplex(&[
        "generate",
        "--checkpoint",
        run_arg,
        "--device",
        "cpu",
        "--prompt",
        "ROMEO:",
        "--max-tokens",
        "20",
        "--seed",
        "1",
    ]);
    let generated = String::from_utf8_lossy(&out.stdout);
    assert!(
        generated.starts_with("ROMEO:") && generated.trim_end().chars().count() > 6,
        "{generated:?}"
    );
}
