//! Stopping and resuming: on the CPU a resumed run's loss curve equals, bit for bit, that of a
//! run never interrupted; gradient accumulation equals one large batch; non-finite losses stop
//! (or skip) with a clear message.
mod common;

use std::path::Path;

use perplex_trainer::{RunConfig, Trainer, TrainerError};

/// A small character-level corpus: the first 6,000 characters of Tiny Shakespeare.
fn small_corpus(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(common::tiny_shakespeare()).unwrap();
    let p = dir.join("small.txt");
    std::fs::write(&p, &text[..6000]).unwrap();
    p
}

fn config(dir: &Path, run: &str, extra: &str) -> RunConfig {
    config_with_loader(dir, run, extra, "bptt")
}

fn config_with_loader(dir: &Path, run: &str, extra: &str, loader: &str) -> RunConfig {
    let corpus = small_corpus(dir);
    let body = format!(
        r#"
[data]
path = "{}"
tokenizer = "char"
max_vocab_size = 0
batch_size = 8
seq_len = 16
loader = "{loader}"
[model]
type = "gru"
embedding_dim = 16
hidden_size = 32
dropout = 0.1
[optim]
type = "adam"
lr = 3e-3
[schedule]
type = "warmup_cosine"
warmup_steps = 10
total_steps = 84
[trainer]
epochs = 2
device = "cpu"
threads = 1
log_every = 1
progress = false
run_dir = "{}"
run_name = "{run}"
{extra}
"#,
        corpus.display(),
        dir.display()
    );
    let p = dir.join(format!("{run}.toml"));
    std::fs::write(&p, body).unwrap();
    RunConfig::load(Some(&p), &[]).unwrap()
}

/// (step, loss) of every "train" line of a run's metrics.jsonl.
fn train_losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn resumed_run_equals_uninterrupted_run_bit_for_bit() {
    resume_is_bit_identical("bptt");
}

/// Random windows are read by cursor (epoch, index): a resumed run reads the same windows.
#[test]
fn resumed_run_with_random_windows_equals_uninterrupted_run_bit_for_bit() {
    resume_is_bit_identical("random_windows");
}

fn resume_is_bit_identical(loader: &str) {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let config = |dir: &Path, run: &str, extra: &str| config_with_loader(dir, run, extra, loader);
    let straight = Trainer::from_config(config(dir.path(), "straight", ""))
        .unwrap()
        .fit()
        .unwrap();
    let steps = straight.steps;
    assert!(steps > 60, "two epochs expected, got {steps} steps");

    // Interrupted mid-epoch at step 30, then resumed to the end.
    let first = Trainer::from_config(config(dir.path(), "interrupted", "max_steps = 30"))
        .unwrap()
        .fit()
        .unwrap();
    assert_eq!(first.steps, 30);
    let run = dir.path().join("interrupted");
    let mut resumed = Trainer::resume(
        &run.display().to_string(),
        dir.path(),
        &["trainer.max_steps=0".into()],
    )
    .unwrap();
    let second = resumed.fit().unwrap();
    assert_eq!(second.steps, steps);

    let a = train_losses(&dir.path().join("straight"));
    let b = train_losses(&run);
    assert_eq!(a.len(), b.len());
    for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert_eq!(la.to_bits(), lb.to_bits(), "step {sa}: {la} vs {lb}");
    }
    let va = straight.epochs.last().unwrap().valid.unwrap().loss;
    let vb = second.epochs.last().unwrap().valid.unwrap().loss;
    assert_eq!(va.to_bits(), vb.to_bits());
}

#[test]
fn resume_latest_finds_the_newest_run() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    // Two runs: "z" first (3 steps), then "a" (5 steps). The newest is "a", which neither the
    // first-made nor the last by name is, so a wrong order shows as step 3 below.
    for (name, steps) in [("z", 3), ("a", 5)] {
        Trainer::from_config(config(
            dir.path(),
            name,
            &format!("max_steps = {steps}\neval = false"),
        ))
        .unwrap()
        .fit()
        .unwrap();
    }
    // Without more steps the run is finished: said so, nothing to do.
    let finished = Trainer::resume("latest", dir.path(), &[]).unwrap_err();
    assert!(
        matches!(
            finished,
            perplex_trainer::TrainerError::Finished { step: 5, .. }
        ),
        "{finished}"
    );
    assert!(
        finished.to_string().contains("trainer.max_steps"),
        "{finished}"
    );
    let t = Trainer::resume("latest", dir.path(), &["trainer.max_steps=6".into()]).unwrap();
    assert_eq!(t.step(), 5);
    let missing = Trainer::resume("/no/such/run", dir.path(), &[]).unwrap_err();
    assert!(missing.to_string().contains("/no/such/run"), "{missing}");
}

fn grads_after_one_step(
    dir: &Path,
    name: &str,
    batch: usize,
    accumulate: u64,
) -> Vec<(String, tch::Tensor)> {
    let mut c = config(
        dir,
        name,
        &format!("max_steps = 1\neval = false\ncheckpoint = false\naccumulate = {accumulate}"),
    );
    c.data.batch_size = batch;
    c.schedule = None;
    c.model = Box::new(perplex_model::GruLmConfig {
        embedding_dim: 16,
        hidden_size: 32,
        ..Default::default()
    });
    let mut t = Trainer::from_config(c).unwrap();
    t.fit().unwrap();
    let mut v: Vec<(String, tch::Tensor)> = t
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, p)| (n, p.grad().copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn accumulating_four_micro_batches_gives_the_full_batch_gradient() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let full = grads_after_one_step(dir.path(), "full", 16, 1);
    let accumulated = grads_after_one_step(dir.path(), "acc", 16, 4);
    for ((n, a), (_, b)) in full.iter().zip(&accumulated) {
        let diff = (a - b).abs().max().double_value(&[]);
        let scale = a.abs().max().double_value(&[]).max(1e-12);
        assert!(diff <= 1e-6 * scale.max(1.0), "{n}: max difference {diff}");
    }
}

#[test]
fn accumulate_must_divide_the_batch() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let err = Trainer::from_config(config(dir.path(), "bad", "accumulate = 3")).unwrap_err();
    assert!(err.to_string().contains("accumulate = 3"), "{err}");
}

#[test]
fn non_finite_loss_stops_naming_the_step_or_is_skipped() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "nan", "max_steps = 4\neval = false");
    c.schedule = None;
    c.optim = Box::new(perplex_optim::SgdConfig {
        lr: 1e38,
        ..Default::default()
    });
    let err = Trainer::from_config(c).unwrap().fit().unwrap_err();
    assert!(
        matches!(err, TrainerError::NonFinite { step: 2..=3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("at step"), "{err}");

    let mut c = config(
        dir.path(),
        "skip",
        "max_steps = 4\neval = false\non_non_finite = \"skip\"",
    );
    c.schedule = None;
    c.optim = Box::new(perplex_optim::SgdConfig {
        lr: 1e38,
        ..Default::default()
    });
    let s = Trainer::from_config(c).unwrap().fit().unwrap();
    assert!(s.skipped_steps >= 2, "skipped {}", s.skipped_steps);
}

#[test]
fn early_stopping_ends_the_run_and_best_checkpoint_is_kept() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(
        dir.path(),
        "early",
        "eval_every = 5\npatience = 2\nkeep_last = 2",
    );
    c.trainer.epochs = 50;
    c.schedule = None;
    c.optim = Box::new(perplex_optim::AdamConfig {
        lr: 0.2,
        ..Default::default()
    });
    let s = Trainer::from_config(c).unwrap().fit().unwrap();
    assert!(
        s.stopped_early.is_some(),
        "a learning rate of 0.2 should stop improving"
    );
    let ckpts = dir.path().join("early/checkpoints");
    assert!(ckpts.join("best/manifest.json").exists());
    let steps = std::fs::read_dir(&ckpts)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .count();
    assert_eq!(steps, 2, "keep_last = 2");
}

/// A mid-epoch checkpoint whose state lacks rows of the global batch (as one written by a
/// multi-process run before perplex gathered the state: rank 0's rows only) is refused, naming
/// the tensor and the expected rows, and nothing in the run changes.
#[test]
fn a_saved_state_without_the_global_batch_is_refused() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let first = Trainer::from_config(config(dir.path(), "half", "max_steps = 5"))
        .unwrap()
        .fit()
        .unwrap();
    assert_eq!(first.steps, 5);
    let run = dir.path().join("half");
    let state = run.join("checkpoints/step-00000005/state.safetensors");
    let saved = tch::Tensor::read_safetensors(&state).unwrap();
    assert_eq!(saved[0].1.size(), [1, 8, 32]);
    let rank0_rows = saved[0].1.narrow(1, 0, 4);
    tch::Tensor::write_safetensors(&[("hidden.0", &rank0_rows)], &state).unwrap();
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let err = Trainer::resume(&run.display().to_string(), dir.path(), &[]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("hidden.0") && msg.contains("[1, 4, 32]") && msg.contains("= 8 rows"),
        "{msg}"
    );
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics);
}
