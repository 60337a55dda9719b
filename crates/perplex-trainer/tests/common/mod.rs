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
