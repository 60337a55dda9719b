//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::PathBuf;

/// Tiny Shakespeare through the project's own fetch code (from `$PERPLEX_DATA_MIRROR` when set,
/// else its public source; the checksum always verified) into the test target's data directory.
pub fn tiny_shakespeare() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("data");
    perplex_data::fetch_corpus("tinyshakespeare", &dir).expect("fetch Tiny Shakespeare")
}

/// A config file in a fresh temporary directory.
pub fn write_config(dir: &tempfile::TempDir, body: &str) -> PathBuf {
    let p = dir.path().join("run.toml");
    std::fs::write(&p, body).unwrap();
    p
}

/// libtorch's random generator is process-wide and the test harness runs tests on several
/// threads: tests that train (and so draw initial weights and dropout masks) hold this lock so
/// that seeded runs are reproducible.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A small character-level GRU run on Tiny Shakespeare (40 CPU steps, seconds): `loss` is the
/// body of `[loss]`, `extra` more `[trainer]` keys.
pub fn tiny_char_config(
    dir: &std::path::Path,
    run: &str,
    loss: &str,
    extra: &str,
) -> perplex_trainer::RunConfig {
    let body = format!(
        r#"
[data]
path = "{}"
tokenizer = "char"
max_vocab_size = 0
batch_size = 16
seq_len = 32
[model]
type = "gru"
embedding_dim = 32
hidden_size = 64
[loss]
{loss}
[optim]
type = "adam"
lr = 3e-3
[trainer]
epochs = 1
max_steps = 40
device = "cpu"
log_every = 0
progress = false
run_dir = "{}"
run_name = "{run}"
{extra}
"#,
        tiny_shakespeare().display(),
        dir.display()
    );
    let p = dir.join(format!("{run}.toml"));
    std::fs::write(&p, body).unwrap();
    perplex_trainer::RunConfig::load(Some(&p), &[]).unwrap()
}

/// The first 6,000 characters of Tiny Shakespeare, written once into `dir`.
pub fn small_shakespeare(dir: &std::path::Path) -> PathBuf {
    let text = std::fs::read_to_string(tiny_shakespeare()).unwrap();
    let p = dir.join("small.txt");
    std::fs::write(&p, &text[..6000]).unwrap();
    p
}

/// The pitfalls' `tiny.toml` GPT as a character-level run on 6,000 characters of Tiny
/// Shakespeare (2 layers, 2 heads, width 32, block_size 16, bias, tied head; AdamW lr 1e-3, wd
/// 0.1, betas 0.9/0.95; 4 windows of 16 per step; one log line per step, no validation):
/// `sections` are more TOML sections (a `[schedule]`), `extra` more `[trainer]` keys. Steps take
/// milliseconds.
pub fn tiny_gpt_config(
    dir: &std::path::Path,
    run: &str,
    sections: &str,
    extra: &str,
) -> perplex_trainer::RunConfig {
    let body = format!(
        r#"
[data]
path = "{}"
tokenizer = "char"
max_vocab_size = 0
batch_size = 4
seq_len = 16
[model]
type = "transformer"
n_layer = 2
n_head = 2
n_embd = 32
block_size = 16
bias = true
tie_weights = true
[optim]
type = "adamw"
lr = 1e-3
weight_decay = 0.1
betas = [0.9, 0.95]
{sections}
[trainer]
epochs = 1
device = "cpu"
threads = 1
eval = false
log_every = 1
progress = false
run_dir = "{}"
run_name = "{run}"
{extra}
"#,
        small_shakespeare(dir).display(),
        dir.display()
    );
    let p = dir.join(format!("{run}.toml"));
    std::fs::write(&p, body).unwrap();
    perplex_trainer::RunConfig::load(Some(&p), &[]).unwrap()
}

/// `(step, value)` of every "train" line of a run's `metrics.jsonl`, for the key `key`
/// (`loss`, `lr`). A line's `step` counts the steps taken, so its lr is that of 0-based step
/// `step - 1`.
pub fn train_log(run: &std::path::Path, key: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v[key].as_f64().unwrap()))
        .collect()
}
