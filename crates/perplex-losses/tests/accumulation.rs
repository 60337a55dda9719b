//! Gradient accumulation is exact for every loss and option: a batch split into micro-batches,
//! each divided by the whole batch's `Loss::normalizer`, gives the whole batch's loss and
//! gradients (class weights, label smoothing, ignored positions, soft targets, z-loss terms,
//! composite losses, micro-batches with no counted token).
mod common;

use perplex_losses::testing::accumulation_mismatch;
use perplex_losses::{registered_losses, Loss};
use proptest::prelude::*;
use serde_json::{json, Value};
use tch::{Kind, Tensor};

use common::Rng;

/// Every loss of the crate with the options that change its denominator or its per-token value.
/// `weights` has one entry per vocabulary id.
fn cases(weights: &[f64]) -> Vec<(&'static str, Value)> {
    vec![
        ("softmax_cross_entropy", json!({})),
        ("softmax_cross_entropy", json!({"weight": weights})),
        ("softmax_cross_entropy", json!({"label_smoothing": 0.2})),
        (
            "softmax_cross_entropy",
            json!({"weight": weights, "label_smoothing": 0.1}),
        ),
        ("cross_entropy", json!({})),
        ("nll", json!({"weight": weights})),
        ("z_loss", json!({"coefficient": 0.01})),
        ("focal", json!({"gamma": 2.0, "alpha": weights})),
        ("distillation_kl", json!({"temperature": 2.0})),
        ("unlikelihood", json!({"alpha": 0.7})),
        ("banned_tokens", json!({"banned_ids": [0, 1], "alpha": 0.5})),
        (
            "linear_cross_entropy",
            json!({"z_loss": 0.01, "label_smoothing": 0.05, "chunk_size": 3}),
        ),
        (
            "weighted_sum",
            json!({"terms": [
                {"weight": 1.0, "loss": {"type": "softmax_cross_entropy", "weight": weights}},
                {"weight": 0.1, "loss": {"type": "z_loss"}},
                {"weight": 0.5, "loss": {"type": "weighted_sum", "terms": [
                    {"loss": {"type": "nll", "weight": weights}},
                    {"loss": {"type": "linear_cross_entropy", "z_loss": 0.1, "chunk_size": 2}},
                ]}},
            ]}),
        ),
    ]
}

fn build(name: &str, mut cfg: Value) -> Box<dyn Loss> {
    cfg["type"] = json!(name);
    serde_json::from_value(cfg).unwrap()
}

#[test]
fn the_cases_cover_every_registered_loss() {
    let covered: Vec<&str> = cases(&[1.0]).iter().map(|(n, _)| *n).collect();
    for info in registered_losses() {
        assert!(covered.contains(&info.name), "{} is not tested", info.name);
    }
}

struct Batch {
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor,
    targets: Tensor,
    soft: Tensor,
    teacher: Tensor,
    class_weights: Vec<f64>,
}

/// `[b, t, h]` hidden states, a `[v, h]` head, targets with a fraction `ignore` at -100 (and the
/// first micro-batch wholly ignored when `empty_first`), soft targets and teacher logits.
fn batch(b: i64, t: i64, v: i64, k: i64, seed: u64, ignore: f64, empty_first: bool) -> Batch {
    let h = 3;
    let mut rng = Rng::new(seed);
    let mut ids: Vec<i64> = (0..b * t)
        .map(|_| {
            if rng.uniform() < ignore {
                -100
            } else {
                rng.below(v)
            }
        })
        .collect();
    if empty_first {
        for id in ids.iter_mut().take(((b / k) * t) as usize) {
            *id = -100;
        }
    }
    let soft = rng.randn(&[b, t, v], 1.0).softmax(-1, Kind::Double);
    Batch {
        hidden: rng.randn(&[b, t, h], 1.0),
        weight: rng.randn(&[v, h], 1.0),
        bias: rng.randn(&[v], 0.5),
        targets: Tensor::from_slice(&ids).view([b, t]),
        soft,
        teacher: rng.randn(&[b, t, v], 1.5),
        class_weights: (0..v).map(|_| 0.2 + 2.0 * rng.uniform()).collect(),
    }
}

fn check(name: &str, loss: &dyn Loss, bt: &Batch, targets: &Tensor, k: i64) {
    let m = accumulation_mismatch(
        loss,
        &bt.hidden,
        &bt.weight,
        Some(&bt.bias),
        targets,
        Some(&bt.teacher),
        k,
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        m.loss < 1e-9 && m.grad < 1e-9,
        "{name} ({loss:?}), {k} micro-batches: {m:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn accumulated_micro_batches_equal_the_whole_batch(
        per in 1i64..3, t in 1i64..5, v in 2i64..7, k in 2i64..4, seed in any::<u64>(),
        ignore in 0.0f64..0.7, empty_first in any::<bool>(),
    ) {
        let b = per * k;
        let bt = batch(b, t, v, k, seed, ignore, empty_first);
        for (name, cfg) in cases(&bt.class_weights) {
            let loss = build(name, cfg);
            check(name, loss.as_ref(), &bt, &bt.targets, k);
        }
        // Probability targets (softmax_cross_entropy divides by rows then).
        for (name, cfg) in [
            ("softmax_cross_entropy", json!({})),
            ("softmax_cross_entropy", json!({"weight": bt.class_weights, "label_smoothing": 0.1})),
            ("cross_entropy", json!({})),
        ] {
            let loss = build(name, cfg);
            check(name, loss.as_ref(), &bt, &bt.soft, k);
        }
    }
}

#[test]
fn a_class_weighted_mean_divided_by_the_token_count_would_be_wrong() {
    // Guards the test itself: dividing each micro-batch by the token count (what the trainer did)
    // is detectably different from the weighted mean, so the property above can fail.
    let bt = batch(4, 3, 5, 2, 7, 0.0, false);
    let loss = build(
        "softmax_cross_entropy",
        json!({"weight": [0.2, 3.0, 1.0, 0.5, 2.0]}),
    );
    let right = loss.normalizer(&bt.targets).unwrap().double_value(&[0]);
    let tokens = bt.targets.numel() as f64;
    assert!((right - tokens).abs() > 0.1, "{right} vs {tokens}");
}

/// What `trainer.precision = "f64"` relies on: every registered loss (every case above), given
/// float64 hidden states, head and teacher logits, returns a float64 loss and float64 gradients;
/// none narrows to float32 on the way (only bf16/f16 predictions are widened, to float32).
#[test]
fn every_loss_keeps_float64_inputs_in_float64() {
    let bt = batch(4, 3, 5, 2, 7, 0.2, false);
    for (name, cfg) in cases(&bt.class_weights) {
        let loss = build(name, cfg);
        let leaf = |t: &Tensor| t.detach().copy().set_requires_grad(true);
        let (h, w, b) = (leaf(&bt.hidden), leaf(&bt.weight), leaf(&bt.bias));
        assert_eq!(h.kind(), Kind::Double);
        let input = perplex_losses::LossInput::from_hidden(&h, &w, Some(&b), &bt.targets)
            .with_teacher_logits(&bt.teacher);
        let out = loss.forward(&input).unwrap();
        assert_eq!(out.loss.kind(), Kind::Double, "{name}: the loss");
        out.loss.backward();
        for (tensor, g) in [("hidden", &h), ("head", &w), ("bias", &b)] {
            assert_eq!(
                g.grad().kind(),
                Kind::Double,
                "{name}: the {tensor} gradient"
            );
        }
        for (metric, value) in &out.metrics {
            assert_eq!(value.kind(), Kind::Double, "{name}: metric {metric}");
        }
    }
}
