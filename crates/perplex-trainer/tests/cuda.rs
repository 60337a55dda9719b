//! CUDA-tagged tests (named `cuda_*`, `#[ignore]`d: a CPU-only run shows them as ignored, never
//! as passed; `scripts/gpu-check.sh` runs them with `--include-ignored`, and without a CUDA
//! device they fail): a short training run on the GPU whose loss falls, in float32 and in bf16
//! autocast.
mod common;

use perplex_trainer::{RunConfig, Trainer};

fn run(precision: &str) -> Option<(f64, f64)> {
    assert!(
        tch::Cuda::is_available(),
        "no CUDA device: these tests are run by scripts/gpu-check.sh on a GPU machine"
    );
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        r#"
[data]
path = "{}"
tokenizer = "word"
[trainer]
epochs = 1
max_steps = 60
device = "cuda"
precision = "{precision}"
log_every = 1
progress = false
eval = false
run_dir = "{}"
run_name = "cuda"
"#,
        common::tiny_shakespeare().display(),
        dir.path().display()
    );
    let p = common::write_config(&dir, &body);
    let mut t = Trainer::from_config(RunConfig::load(Some(&p), &[]).unwrap()).unwrap();
    assert!(t.device().is_cuda());
    t.fit().unwrap();
    let losses: Vec<f64> = std::fs::read_to_string(dir.path().join("cuda/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect();
    Some((
        losses[0],
        losses[losses.len() - 5..].iter().sum::<f64>() / 5.0,
    ))
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it (--include-ignored)"]
fn cuda_training_loss_falls_in_float32() {
    let _serial = common::serial();
    if let Some((first, last)) = run("f32") {
        assert!(last < first - 1.0, "loss {first} -> {last}");
    }
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it (--include-ignored)"]
fn cuda_training_loss_falls_in_bf16_autocast() {
    let _serial = common::serial();
    if let Some((first, last)) = run("bf16") {
        assert!(last < first - 1.0, "loss {first} -> {last}");
    }
}
