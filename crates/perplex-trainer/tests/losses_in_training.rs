//! Losses beyond plain cross-entropy plug into the trainer by name: the fused, chunked
//! `linear_cross_entropy` as the main loss of the GRU LM, and distillation from a teacher run.
mod common;

use common::tiny_char_config as config;
use perplex_trainer::Trainer;

#[test]
fn linear_cross_entropy_trains_the_gru_lm_like_the_unfused_loss() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let fused = Trainer::from_config(config(
        dir.path(),
        "fused",
        "type = \"linear_cross_entropy\"\nchunk_size = 100",
        "",
    ))
    .unwrap()
    .fit()
    .unwrap();
    let plain = Trainer::from_config(config(
        dir.path(),
        "plain",
        "type = \"softmax_cross_entropy\"",
        "",
    ))
    .unwrap()
    .fit()
    .unwrap();
    let (f, p) = (fused.epochs[0].train_loss, plain.epochs[0].train_loss);
    eprintln!("mean training loss: fused {f:.6}, unfused {p:.6}");
    // Same initial weights and data; only float rounding differs between the two paths.
    assert!((f - p).abs() < 1e-3 * p, "fused {f} vs unfused {p}");
    assert!(fused.epochs[0].valid.unwrap().loss < 3.5);
}

#[test]
fn distillation_from_a_teacher_run_trains() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    Trainer::from_config(config(
        dir.path(),
        "teacher",
        "type = \"softmax_cross_entropy\"",
        "",
    ))
    .unwrap()
    .fit()
    .unwrap();
    let teacher = dir.path().join("teacher");
    let loss = r#"type = "weighted_sum"
terms = [
  { weight = 0.5, loss = { type = "softmax_cross_entropy" } },
  { weight = 0.5, loss = { type = "distillation_kl", temperature = 2.0 } },
]"#;
    let extra = format!("teacher = \"{}\"", teacher.display());
    let s = Trainer::from_config(config(dir.path(), "student", loss, &extra))
        .unwrap()
        .fit()
        .unwrap();
    let v = s.epochs[0].valid.unwrap().loss;
    assert!(v.is_finite() && v < 3.5, "student validation loss {v}");

    // Without a teacher the distillation loss says what it needs.
    let err = Trainer::from_config(config(
        dir.path(),
        "no-teacher",
        "type = \"distillation_kl\"",
        "",
    ))
    .unwrap()
    .fit()
    .unwrap_err()
    .to_string();
    assert!(err.contains("teacher"), "{err}");
}

#[test]
fn weighted_sum_terms_reach_the_logs_and_both_metrics_files() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let loss = r#"type = "weighted_sum"
terms = [
  { weight = 1.0, loss = { type = "softmax_cross_entropy" } },
  { weight = 0.1, loss = { type = "z_loss", coefficient = 1.0 } },
]"#;
    let mut cfg = config(dir.path(), "terms", loss, "accumulate = 2\neval = false");
    cfg.trainer.max_steps = 10;
    cfg.trainer.log_every = 5;
    Trainer::from_config(cfg).unwrap().fit().unwrap();
    let run = dir.path().join("terms");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["kind"] == "train")
        .collect();
    assert_eq!(records.len(), 2);
    for r in &records {
        let ce = r["metrics"]["softmax_cross_entropy"].as_f64().unwrap();
        let z = r["metrics"]["z_loss"].as_f64().unwrap();
        let loss = r["loss"].as_f64().unwrap();
        // The logged loss is the weighted sum of the logged terms (window means of both).
        assert!((loss - (ce + 0.1 * z)).abs() < 1e-4 * loss, "{r}");
    }
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(
        header.ends_with(",metrics.softmax_cross_entropy,metrics.z_loss"),
        "{header}"
    );
    let columns = header.split(',').count();
    for line in csv.lines() {
        assert_eq!(line.split(',').count(), columns, "{line}");
    }
}
