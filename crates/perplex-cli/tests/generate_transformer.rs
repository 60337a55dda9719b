//! `perplex generate` with a Transformer whose learned position table has only `block_size`
//! rows: BB2-04 (generation past `block_size` crops, never indexes out of range) and BB2-03's
//! single-token prompt, against a crop reference computed here without a cache.
mod common;

use common::corpus;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use perplex_model::HiddenState;
use perplex_trainer::LoadedModel;
use tch::{Device, Tensor};

/// The model's context.
const BLOCK_SIZE: i64 = 8;

fn perplex() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_perplex"));
    c.env("RUST_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("PERPLEX__") {
            c.env_remove(k);
        }
    }
    c
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

/// The pitfall's `tiny.toml` GPT with `block_size = 8` and learned positions, trained 300 steps
/// (lr 1e-2: after the pitfall's 20 steps greedy text is one repeated space) on Tiny
/// Shakespeare characters, once per test binary.
fn trained_run() -> &'static Path {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &RUN.get_or_init(|| {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let config = dir.path().join("gpt.toml");
        let body = format!(
            r#"
[data]
path = "{}"
tokenizer = "char"
batch_size = 16
seq_len = {BLOCK_SIZE}
[model]
type = "transformer"
n_layer = 2
n_head = 2
n_embd = 32
block_size = {BLOCK_SIZE}
positions = "learned"
bias = true
tie_weights = true
[optim]
type = "adamw"
lr = 1e-2
[trainer]
epochs = 1
max_steps = 300
eval = false
device = "cpu"
threads = 1
progress = false
run_dir = "{}"
run_name = "gpt"
"#,
            corpus().display(),
            dir.path().display()
        );
        std::fs::write(&config, body).unwrap();
        let out = perplex()
            .args(["train", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        check(&out, "perplex train");
        let run = dir.path().join("gpt");
        assert!(run.join("model.safetensors").is_file());
        (dir, run)
    })
    .1
}

/// `perplex generate --temperature 0` of `prompt`: (exit status, stdout, stderr).
fn generate(prompt: &str, max_tokens: usize) -> Output {
    perplex()
        .args(["generate", "--device", "cpu", "--temperature", "0"])
        .args(["--max-tokens", &max_tokens.to_string(), "--prompt", prompt])
        .arg("--checkpoint")
        .arg(trained_run())
        .output()
        .unwrap()
}

/// What `perplex generate` should print: the prompt and `max_tokens` greedy characters, each
/// the argmax of an uncached forward over the last `min(len, block_size)` ids read (a line
/// break first, as `LoadedModel::sample` reads it).
fn crop_reference(prompt: &str, max_tokens: usize) -> String {
    let m = LoadedModel::load(trained_run(), Device::Cpu).unwrap();
    let chars: Vec<String> = prompt.chars().map(String::from).collect();
    let mut seen = vec![m.vocab.id("\n")];
    if chars.first().map(String::as_str) == Some("\n") {
        seen.clear();
    }
    seen.extend(m.vocab.encode(&chars));
    let mut out = prompt.to_string();
    tch::no_grad(|| {
        for _ in 0..max_tokens {
            let start = seen.len().saturating_sub(BLOCK_SIZE as usize);
            let window = Tensor::from_slice(&seen[start..]).view([1, -1]);
            let next = m
                .model
                .forward(&window, &HiddenState::none(), false)
                .unwrap()
                .logits()
                .select(1, -1)
                .argmax(-1, false)
                .int64_value(&[0]);
            seen.push(next);
            out.push_str(m.vocab.token(next).unwrap());
        }
    });
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// BB2-04: a 6-character prompt (7 ids with the line break) and 20 greedy tokens: the 2nd new
/// token needs position 8, one past the learned table. Exit 0, exactly 20 new characters, the
/// crop reference's. A 12-character prompt is cropped to its last 8 ids with a warning.
#[test]
fn bb2_04_generate_past_block_size_crops_and_matches_the_reference() {
    let prompt = "First ";
    let out = generate(prompt, 20);
    check(&out, "perplex generate");
    let stdout = text(&out.stdout);
    println!("greedy, 20 tokens past block_size 8: {stdout:?}");
    let continuation = stdout.strip_prefix(prompt).unwrap();
    assert!(
        matches!(continuation.chars().count(), 20 | 21),
        "{stdout:?}"
    );
    assert_eq!(stdout, crop_reference(prompt, 20));
    // Not one repeated character (the newline `generate` may print after the text aside).
    let mut distinct: Vec<char> = continuation.chars().take(20).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() >= 2, "too uniform to test much: {stdout:?}");
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );

    let long = "Before we pr";
    let out = generate(long, 12);
    check(&out, "perplex generate (long prompt)");
    assert_eq!(text(&out.stdout), crop_reference(long, 12));
    let err = text(&out.stderr);
    println!("12-character prompt: {err}");
    assert!(
        err.contains("warning") && err.contains("13 tokens") && err.contains("block_size = 8"),
        "{err}"
    );
}

/// BB2-03: a prompt of a single token (the empty prompt reads just the line break) generates
/// as the crop reference does.
#[test]
fn bb2_03_generate_from_a_single_token_prompt() {
    let out = generate("", 12);
    check(&out, "perplex generate --prompt ''");
    assert_eq!(text(&out.stdout), crop_reference("", 12));
}
