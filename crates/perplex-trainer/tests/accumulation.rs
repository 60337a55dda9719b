//! `trainer.accumulate = k` takes the same steps as `accumulate = 1`, for any loss: each
//! micro-batch divides by the whole batch's denominator as the loss reports it (here the sum of
//! class weights of a weighted cross-entropy, and a weighted cross-entropy plus a z-loss, whose
//! terms count differently).
mod common;

use perplex_trainer::Trainer;

/// Trains 3 SGD steps (SGD: an update proportional to the gradient, so a gradient scaled by the
/// weight ratio shows; Adam would hide most of it) and returns the step losses and final weights.
fn train(dir: &std::path::Path, name: &str, loss: &str, accumulate: u64) -> (Vec<f64>, Vec<f32>) {
    let extra = format!("accumulate = {accumulate}\neval = false");
    let mut cfg = common::tiny_char_config(dir, name, loss, &extra);
    cfg.trainer.max_steps = 3;
    cfg.trainer.log_every = 1;
    cfg.optim = serde_json::from_str(r#"{"type": "sgd", "lr": 0.5}"#).unwrap();
    let mut trainer = Trainer::from_config(cfg).unwrap();
    trainer.fit().unwrap();
    let metrics = std::fs::read_to_string(dir.join(name).join("metrics.jsonl")).unwrap();
    let losses = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "train")
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    let weights = trainer
        .var_store()
        .variables()
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>()
        .values()
        .flat_map(|t| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap())
        .collect();
    (losses, weights)
}

#[test]
fn accumulated_steps_equal_whole_batch_steps_for_weighted_losses() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let vocab =
        perplex_data::LmData::load(&common::tiny_char_config(dir.path(), "probe", "", "").data)
            .unwrap()
            .vocab
            .len();
    // Very unequal class weights, so the weight sum is far from the token count.
    let weights: Vec<String> = (0..vocab)
        .map(|i| format!("{}", 0.1 + (i % 7) as f64))
        .collect();
    let weights = weights.join(", ");
    for (label, loss) in [
        (
            "weighted",
            format!("type = \"softmax_cross_entropy\"\nweight = [{weights}]\nlabel_smoothing = 0.1"),
        ),
        (
            "weighted_sum",
            format!(
                "type = \"weighted_sum\"\nterms = [\n  {{ weight = 1.0, loss = {{ type = \"softmax_cross_entropy\", weight = [{weights}] }} }},\n  {{ weight = 0.5, loss = {{ type = \"z_loss\", coefficient = 0.1 }} }},\n]"
            ),
        ),
    ] {
        let (l1, w1) = train(dir.path(), &format!("{label}-1"), &loss, 1);
        for k in [2, 4] {
            let (lk, wk) = train(dir.path(), &format!("{label}-{k}"), &loss, k);
            assert_eq!(l1.len(), 3);
            for (a, b) in l1.iter().zip(&lk) {
                assert!((a - b).abs() < 1e-5 * a.abs().max(1.0), "{label}, {k}: losses {l1:?} vs {lk:?}");
            }
            let diff = w1.iter().zip(&wk).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-5, "{label}, accumulate {k}: weights differ by {diff}");
        }
    }
}
