//! A short training run on real text (Tiny Shakespeare) learns: its validation loss falls below
//! the unigram baseline's (the entropy of the training split's token frequencies, scored on the
//! validation split).
mod common;

use std::collections::HashMap;

use perplex_data::{DataConfig, LmData, TokenizerKind};
use perplex_trainer::{RunConfig, Trainer};

/// Cross-entropy (nats/token) of the validation ids under the add-one-smoothed unigram
/// distribution of the training ids.
fn unigram_baseline(data: &LmData) -> f64 {
    let train = Vec::<i64>::try_from(&data.train).unwrap();
    let valid = Vec::<i64>::try_from(&data.valid).unwrap();
    let v = data.vocab.len() as f64;
    let mut counts: HashMap<i64, f64> = HashMap::new();
    for t in &train {
        *counts.entry(*t).or_default() += 1.0;
    }
    let total = train.len() as f64 + v;
    valid
        .iter()
        .map(|t| -((counts.get(t).copied().unwrap_or(0.0) + 1.0) / total).ln())
        .sum::<f64>()
        / valid.len() as f64
}

fn small_run(dir: &tempfile::TempDir, loss_type: &str) -> RunConfig {
    let corpus = common::tiny_shakespeare();
    let body = format!(
        r#"
[data]
path = "{}"
tokenizer = "word"
max_vocab_size = 10000
batch_size = 32
seq_len = 35

[model]
type = "gru"
embedding_dim = 64
hidden_size = 128

[loss]
type = "{loss_type}"

[optim]
type = "adam"
lr = 3e-3

[trainer]
epochs = 1
max_steps = 80
device = "cpu"
log_every = 0
run_dir = "{}"
run_name = "small"
"#,
        corpus.display(),
        dir.path().display()
    );
    let path = common::write_config(dir, &body);
    RunConfig::load(Some(&path), &[]).unwrap()
}

#[test]
fn short_run_beats_the_unigram_baseline_and_writes_its_run_directory() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let config = small_run(&dir, "softmax_cross_entropy");
    let data = LmData::load(&config.data).unwrap();
    let baseline = unigram_baseline(&data);
    let summary = Trainer::from_config(config).unwrap().fit().unwrap();
    let valid = summary.epochs[0].valid.unwrap().loss;
    eprintln!("validation loss {valid:.4} nats/token, unigram baseline {baseline:.4}");
    assert!(
        valid < baseline,
        "validation loss {valid} is not below the unigram baseline {baseline}"
    );
    let run = dir.path().join("small");
    for f in [
        "config.toml",
        "vocab.json",
        "model.safetensors",
        "metrics.jsonl",
    ] {
        assert!(run.join(f).exists(), "{f} missing from the run directory");
    }
}

#[test]
fn seeded_cpu_runs_are_reproducible() {
    let _serial = common::serial();
    let corpus = common::tiny_shakespeare();
    let run = || {
        let mut c = RunConfig {
            data: DataConfig {
                path: Some(corpus.clone()),
                tokenizer: TokenizerKind::Char,
                max_vocab_size: 0,
                batch_size: 8,
                seq_len: 16,
                ..DataConfig::default()
            },
            model: Box::new(perplex_model::GruLmConfig {
                embedding_dim: 16,
                hidden_size: 32,
                ..Default::default()
            }),
            ..RunConfig::default()
        };
        c.trainer.epochs = 1;
        c.trainer.max_steps = 5;
        c.trainer.device = "cpu".into();
        c.trainer.log_every = 0;
        let dir = tempfile::tempdir().unwrap();
        c.trainer.run_dir = dir.path().to_path_buf();
        let s = Trainer::from_config(c).unwrap().fit().unwrap();
        (s.epochs[0].train_loss, s.epochs[0].valid.unwrap().loss)
    };
    assert_eq!(run(), run());
}
