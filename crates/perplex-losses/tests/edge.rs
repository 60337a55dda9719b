//! Edge cases: extreme and masked logits, half precision, empty and all-padding batches, bad
//! inputs and options, the registry.
mod common;

use perplex_losses::{
    registered_losses, BannedTokens, DistillationKl, Focal, LinearCrossEntropy, Loss, LossError,
    LossInput, LossOutput, Reduction, SoftmaxCrossEntropy, Term, Unlikelihood, WeightedSum, ZLoss,
};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use common::{assert_close, grad_or_zeros, leaf_kind, scalar, to_vec, Rng};

/// Every loss of the crate that reads logits, with minimal options and no label smoothing
/// (so that `-inf` entries give a finite loss).
fn logit_losses() -> Vec<(&'static str, Box<dyn Loss>)> {
    vec![
        (
            "softmax_cross_entropy",
            Box::new(SoftmaxCrossEntropy::default()),
        ),
        ("z_loss", Box::new(ZLoss::default())),
        ("focal", Box::new(Focal::default())),
        (
            "focal_alpha",
            Box::new(Focal {
                gamma: 0.5,
                alpha: Some(vec![1.0, 0.5, 2.0, 1.0, 1.0, 0.3]),
                ..Default::default()
            }),
        ),
        ("distillation_kl", Box::new(DistillationKl::default())),
        ("unlikelihood", Box::new(Unlikelihood::default())),
        (
            "banned_tokens",
            Box::new(BannedTokens {
                banned_ids: vec![0, 5],
                ..Default::default()
            }),
        ),
        (
            "linear_cross_entropy",
            Box::new(LinearCrossEntropy {
                z_loss: 1e-4,
                ..Default::default()
            }),
        ),
        (
            "weighted_sum",
            Box::new(WeightedSum {
                terms: vec![
                    Term::new(1.0, SoftmaxCrossEntropy::default()),
                    Term::new(1e-4, ZLoss::default()),
                ],
            }),
        ),
    ]
}

fn forward_logits(loss: &dyn Loss, logits: &Tensor, targets: &Tensor) -> LossOutput {
    // Another distribution with the same `-inf` entries.
    // (float32 for half-precision logits, so that it is the same for their float32 copies.)
    let kind = if logits.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let teacher = logits.detach().to_kind(kind) * 0.7 + 0.1;
    loss.forward(&LossInput::from_logits(logits, targets).with_teacher_logits(&teacher))
        .unwrap()
}

fn all_finite(t: &Tensor) -> bool {
    to_vec(t).iter().all(|x| x.is_finite())
}

#[test]
fn logits_of_magnitude_1e4_give_finite_loss_and_gradient() {
    let mut rng = Rng::new(1);
    let base = rng.randn(&[2, 3, 6], 1e4);
    let targets = Tensor::from_slice(&[0i64, 5, 2, -100, 3, 1]).view([2, 3]);
    for kind in [Kind::Double, Kind::Float] {
        for (name, loss) in logit_losses() {
            let x = leaf_kind(&base, kind);
            let out = forward_logits(loss.as_ref(), &x, &targets);
            assert!(all_finite(&out.loss), "{name} {kind:?}: {:?}", out.loss);
            out.loss.backward();
            assert!(
                all_finite(&x.grad()),
                "{name} {kind:?}: gradient not finite"
            );
        }
    }
    // The fused head with huge hidden states.
    let h = leaf_kind(&rng.randn(&[6, 4], 1e3), Kind::Float);
    let w = leaf_kind(&rng.randn(&[6, 4], 10.0), Kind::Float);
    let out = LinearCrossEntropy {
        chunk_size: 4,
        ..Default::default()
    }
    .forward(&LossInput::from_hidden(&h, &w, None, &targets.view([-1])))
    .unwrap();
    assert!(all_finite(&out.loss));
    out.loss.backward();
    assert!(all_finite(&h.grad()) && all_finite(&w.grad()));
}

#[test]
fn neg_inf_masked_vocabulary_entries() {
    let mut rng = Rng::new(2);
    let base = rng.randn(&[2, 3, 6], 1.0);
    // Entries 4 and 5 of the vocabulary masked everywhere; targets avoid them.
    let _ = base.narrow(2, 4, 2).fill_(f64::NEG_INFINITY);
    let targets = Tensor::from_slice(&[0i64, 3, 2, -100, 3, 1]).view([2, 3]);
    for kind in [Kind::Double, Kind::Float] {
        for (name, loss) in logit_losses() {
            let x = leaf_kind(&base, kind);
            let out = forward_logits(loss.as_ref(), &x, &targets);
            assert!(all_finite(&out.loss), "{name} {kind:?}: {:?}", out.loss);
            out.loss.backward();
            let g = x.grad();
            assert!(all_finite(&g), "{name} {kind:?}: gradient not finite");
            assert!(
                to_vec(&g.narrow(2, 4, 2)).iter().all(|&v| v == 0.0),
                "{name}: masked entries got gradient"
            );
        }
    }
    // The fused head with a `-inf` bias entry.
    let h = leaf_kind(&rng.randn(&[6, 3], 1.0), Kind::Double);
    let w = leaf_kind(&rng.randn(&[6, 3], 1.0), Kind::Double);
    let b = Tensor::from_slice(&[0.0, 0.1, 0.2, 0.3, f64::NEG_INFINITY, f64::NEG_INFINITY]);
    let b = leaf_kind(&b, Kind::Double);
    let l = LinearCrossEntropy {
        chunk_size: 4,
        ..Default::default()
    };
    let out = l
        .forward(&LossInput::from_hidden(
            &h,
            &w,
            Some(&b),
            &targets.view([-1]),
        ))
        .unwrap();
    let logits = h.linear(&w, Some(&b));
    let want = SoftmaxCrossEntropy::default()
        .forward(&LossInput::from_logits(&logits, &targets.view([-1])))
        .unwrap();
    assert_close(&out.loss, &want.loss, 1e-12, 0.0, "fused with -inf bias");
    out.loss.backward();
    assert!(all_finite(&h.grad()) && all_finite(&w.grad()) && all_finite(&b.grad()));
}

#[test]
fn bf16_logits_give_a_float32_loss_close_to_float32() {
    let mut rng = Rng::new(3);
    let base = rng.randn(&[2, 4, 6], 2.0);
    let targets = Tensor::from_slice(&[0i64, 5, 2, -100, 3, 1, 1, 1]).view([2, 4]);
    for (name, loss) in logit_losses() {
        for half in [Kind::BFloat16, Kind::Half] {
            let x = leaf_kind(&base, half);
            let out = forward_logits(loss.as_ref(), &x, &targets);
            assert_eq!(
                out.loss.kind(),
                Kind::Float,
                "{name}: loss dtype for {half:?}"
            );
            // Same numbers in float32: equal up to float32 rounding.
            let x32 = leaf_kind(&x.detach(), Kind::Float);
            let want = forward_logits(loss.as_ref(), &x32, &targets);
            assert_close(&out.loss, &want.loss, 1e-5, 1e-6, name);
            // The unrounded float32 logits: close (bf16 keeps 8 bits).
            let full = forward_logits(loss.as_ref(), &leaf_kind(&base, Kind::Float), &targets);
            assert_close(&out.loss, &full.loss, 3e-2, 1e-3, name);
            out.loss.backward();
            assert_eq!(x.grad().kind(), half);
        }
    }
    // Fused head in bf16: float32 loss, bf16 gradients, close to float32.
    let h = rng.randn(&[8, 16], 1.0);
    let w = rng.randn(&[6, 16], 0.3);
    let t = targets.view([-1]);
    let l = LinearCrossEntropy {
        chunk_size: 3,
        z_loss: 1e-3,
        label_smoothing: 0.1,
        ..Default::default()
    };
    let (hb, wb) = (leaf_kind(&h, Kind::BFloat16), leaf_kind(&w, Kind::BFloat16));
    let out = l
        .forward(&LossInput::from_hidden(&hb, &wb, None, &t))
        .unwrap();
    assert_eq!(out.loss.kind(), Kind::Float);
    out.loss.backward();
    assert_eq!(hb.grad().kind(), Kind::BFloat16);
    let (h32, w32) = (leaf_kind(&h, Kind::Float), leaf_kind(&w, Kind::Float));
    let want = l
        .forward(&LossInput::from_hidden(&h32, &w32, None, &t))
        .unwrap();
    want.loss.backward();
    assert_close(&out.loss, &want.loss, 2e-2, 1e-3, "fused bf16 value");
    assert_close(
        &hb.grad().to_kind(Kind::Float),
        &h32.grad(),
        5e-2,
        2e-3,
        "fused bf16 d hidden",
    );
    assert_close(
        &wb.grad().to_kind(Kind::Float),
        &w32.grad(),
        5e-2,
        2e-3,
        "fused bf16 d weight",
    );
}

#[test]
fn empty_batch_gives_zero_with_mean() {
    for shape in [vec![0i64], vec![2, 0], vec![0, 3]] {
        let mut lshape = shape.clone();
        lshape.push(6);
        let targets = Tensor::zeros(&shape[..], (Kind::Int64, Device::Cpu));
        for (name, loss) in logit_losses() {
            let x = leaf_kind(
                &Tensor::zeros(&lshape[..], (Kind::Double, Device::Cpu)),
                Kind::Double,
            );
            let out = forward_logits(loss.as_ref(), &x, &targets);
            assert_eq!(scalar(&out.loss), 0.0, "{name} {shape:?}");
            assert_eq!(scalar(&out.count), 0.0, "{name} {shape:?}");
        }
        let mut hshape = shape.clone();
        hshape.push(3);
        let h = leaf_kind(
            &Tensor::zeros(&hshape[..], (Kind::Double, Device::Cpu)),
            Kind::Double,
        );
        let w = leaf_kind(
            &Tensor::ones([6, 3], (Kind::Double, Device::Cpu)),
            Kind::Double,
        );
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let l = LinearCrossEntropy {
                reduction,
                ..Default::default()
            };
            let out = l
                .forward(&LossInput::from_hidden(&h, &w, None, &targets))
                .unwrap();
            assert_eq!(
                out.loss.size(),
                if reduction == Reduction::None {
                    shape.clone()
                } else {
                    vec![]
                }
            );
            assert_eq!(out.loss.sum(Kind::Double).double_value(&[]), 0.0);
            out.loss.sum(Kind::Double).backward();
            assert!(to_vec(&grad_or_zeros(&w)).iter().all(|&g| g == 0.0));
        }
    }
}

#[test]
fn all_padding_batch_has_zero_loss_and_zero_grad() {
    let mut rng = Rng::new(4);
    let base = rng.randn(&[2, 3, 6], 1.0);
    let targets = Tensor::full([2, 3], -100, (Kind::Int64, Device::Cpu));
    for kind in [Kind::Double, Kind::Float] {
        for (name, loss) in logit_losses() {
            let x = leaf_kind(&base, kind);
            let out = forward_logits(loss.as_ref(), &x, &targets);
            assert_eq!(out.loss.size(), Vec::<i64>::new(), "{name}: scalar");
            assert_eq!(scalar(&out.loss), 0.0, "{name} {kind:?}");
            assert_eq!(scalar(&out.count), 0.0, "{name}");
            out.loss.backward();
            let g = grad_or_zeros(&x);
            assert!(
                to_vec(&g).iter().all(|&v| v == 0.0),
                "{name}: gradient not zero"
            );
        }
        // Fused, with a global normaliser of 0 as well.
        let h = leaf_kind(&rng.randn(&[2, 3, 4], 1.0), kind);
        let w = leaf_kind(&rng.randn(&[6, 4], 1.0), kind);
        let b = leaf_kind(&rng.randn(&[6], 1.0), kind);
        let zero = Tensor::scalar_tensor(0.0, (kind, Device::Cpu));
        for normalizer in [None, Some(&zero)] {
            let mut input = LossInput::from_hidden(&h, &w, Some(&b), &targets);
            if let Some(n) = normalizer {
                input = input.with_normalizer(n);
            }
            let out = LinearCrossEntropy {
                chunk_size: 4,
                z_loss: 0.1,
                label_smoothing: 0.1,
                ..Default::default()
            }
            .forward(&input)
            .unwrap();
            assert_eq!(scalar(&out.loss), 0.0);
            out.loss.backward();
            for t in [&h, &w, &b] {
                assert!(to_vec(&grad_or_zeros(t)).iter().all(|&v| v == 0.0));
            }
        }
    }
}

#[test]
fn out_of_range_target_is_an_error_naming_index_and_vocabulary() {
    let logits = Tensor::zeros([2, 3, 10], (Kind::Float, Device::Cpu));
    for bad in [12i64, 10, -5] {
        let targets = Tensor::from_slice(&[1i64, 2, 3, bad, 4, 5]).view([2, 3]);
        for (name, loss) in logit_losses() {
            let teacher = logits.copy();
            let err = loss
                .forward(&LossInput::from_logits(&logits, &targets).with_teacher_logits(&teacher))
                .unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, LossError::TargetOutOfRange { index, vocab_size: 10, position: 3, .. } if index == bad),
                "{name}: {err:?}"
            );
            assert!(
                msg.contains(&bad.to_string()) && msg.contains("10"),
                "{name}: {msg}"
            );
        }
        let h = Tensor::zeros([2, 3, 4], (Kind::Float, Device::Cpu));
        let w = Tensor::zeros([10, 4], (Kind::Float, Device::Cpu));
        let err = LinearCrossEntropy::default()
            .forward(&LossInput::from_hidden(&h, &w, None, &targets))
            .unwrap_err();
        assert!(
            matches!(err, LossError::TargetOutOfRange { vocab_size: 10, .. }),
            "{err:?}"
        );
    }
}

#[test]
fn wrong_shapes_are_errors_naming_both_shapes() {
    let logits = Tensor::zeros([2, 3, 5], (Kind::Float, Device::Cpu));
    let targets = Tensor::zeros([2, 4], (Kind::Int64, Device::Cpu));
    for (name, loss) in logit_losses() {
        let teacher = logits.copy();
        let err = loss
            .forward(&LossInput::from_logits(&logits, &targets).with_teacher_logits(&teacher))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, LossError::ShapeMismatch { .. }),
            "{name}: {err:?}"
        );
        assert!(
            msg.contains("[2, 3, 5]") && msg.contains("[2, 4]"),
            "{name}: {msg}"
        );
    }
    // Teacher of another shape.
    let good = Tensor::zeros([2, 3], (Kind::Int64, Device::Cpu));
    let teacher = Tensor::zeros([2, 3, 7], (Kind::Float, Device::Cpu));
    let err = DistillationKl::default()
        .forward(&LossInput::from_logits(&logits, &good).with_teacher_logits(&teacher))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[2, 3, 5]") && err.contains("[2, 3, 7]"),
        "{err}"
    );
    // Head that does not fit the hidden states; bias of the wrong length.
    let h = Tensor::zeros([2, 3, 4], (Kind::Float, Device::Cpu));
    let w = Tensor::zeros([5, 3], (Kind::Float, Device::Cpu));
    let err = LinearCrossEntropy::default()
        .forward(&LossInput::from_hidden(&h, &w, None, &good))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[2, 3, 4]") && err.contains("[5, 3]"), "{err}");
    let w = Tensor::zeros([5, 4], (Kind::Float, Device::Cpu));
    let b = Tensor::zeros([6], (Kind::Float, Device::Cpu));
    let err = LinearCrossEntropy::default()
        .forward(&LossInput::from_hidden(&h, &w, Some(&b), &good))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[6]") && err.contains("[5, 4]"), "{err}");
    let err = LinearCrossEntropy::default()
        .forward(&LossInput::from_hidden(&h, &w, None, &targets))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[2, 4]"), "{err}");
}

#[test]
fn missing_teacher_and_bad_options_are_errors() {
    let logits = Tensor::zeros([2, 5], (Kind::Float, Device::Cpu));
    let targets = Tensor::from_slice(&[1i64, 2]);
    let input = LossInput::from_logits(&logits, &targets);
    let err = DistillationKl::default().forward(&input).unwrap_err();
    assert!(
        matches!(
            err,
            LossError::MissingInput {
                loss: "distillation_kl",
                ..
            }
        ),
        "{err:?}"
    );

    let bad: Vec<(&str, Box<dyn Loss>)> = vec![
        (
            "temperature",
            Box::new(DistillationKl {
                temperature: 0.0,
                ..Default::default()
            }),
        ),
        (
            "gamma",
            Box::new(Focal {
                gamma: -1.0,
                ..Default::default()
            }),
        ),
        (
            "alpha",
            Box::new(Focal {
                alpha: Some(vec![1.0; 4]),
                ..Default::default()
            }),
        ),
        (
            "coefficient",
            Box::new(ZLoss {
                coefficient: f64::NAN,
                ..Default::default()
            }),
        ),
        (
            "alpha",
            Box::new(Unlikelihood {
                alpha: -0.5,
                ..Default::default()
            }),
        ),
        (
            "banned_ids",
            Box::new(BannedTokens {
                banned_ids: vec![1, 7],
                ..Default::default()
            }),
        ),
        (
            "chunk_size",
            Box::new(LinearCrossEntropy {
                chunk_size: 0,
                ..Default::default()
            }),
        ),
        (
            "label_smoothing",
            Box::new(LinearCrossEntropy {
                label_smoothing: 1.5,
                ..Default::default()
            }),
        ),
        ("terms", Box::new(WeightedSum::default())),
    ];
    let teacher = logits.copy();
    for (option, loss) in bad {
        let err = loss
            .forward(&LossInput::from_logits(&logits, &targets).with_teacher_logits(&teacher))
            .unwrap_err();
        assert!(
            matches!(&err, LossError::InvalidOption { option: o, .. } if *o == option),
            "{option}: {err:?}"
        );
        if option == "banned_ids" {
            let msg = err.to_string();
            assert!(
                msg.contains('7') && msg.contains("vocabulary size 5"),
                "{msg}"
            );
        }
    }
}

#[test]
fn every_registered_loss_deserialises_from_its_type() {
    let names: Vec<&str> = registered_losses().iter().map(|i| i.name).collect();
    for expected in [
        "banned_tokens",
        "cross_entropy",
        "distillation_kl",
        "focal",
        "linear_cross_entropy",
        "nll",
        "softmax_cross_entropy",
        "unlikelihood",
        "weighted_sum",
        "z_loss",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} not registered: {names:?}"
        );
    }
    for info in registered_losses() {
        assert!(!info.description.is_empty());
        let loss: Box<dyn Loss> = serde_json::from_value(json!({"type": info.name}))
            .unwrap_or_else(|e| panic!("{}: {e}", info.name));
        // Serialises back to the same type.
        let v = serde_json::to_value(&loss).unwrap();
        assert_eq!(v["type"], info.name);
    }
    // Those that need options to run, with minimal ones.
    let logits = Tensor::zeros([2, 5], (Kind::Float, Device::Cpu));
    let targets = Tensor::from_slice(&[1i64, 2]);
    for cfg in [
        json!({"type": "banned_tokens", "banned_ids": [3]}),
        json!({"type": "weighted_sum", "terms": [{"loss": {"type": "softmax_cross_entropy"}}]}),
        json!({"type": "weighted_sum", "terms": [
            {"weight": 1.0, "loss": {"type": "softmax_cross_entropy"}},
            {"weight": 1e-4, "loss": {"type": "z_loss"}},
            {"weight": 0.5, "loss": {"type": "weighted_sum", "terms": [{"loss": {"type": "z_loss"}}]}},
        ]}),
    ] {
        let loss: Box<dyn Loss> = serde_json::from_value(cfg.clone()).unwrap();
        let back = serde_json::to_value(&loss).unwrap();
        let again: Box<dyn Loss> = serde_json::from_value(back).unwrap();
        let out = again
            .forward(&LossInput::from_logits(&logits, &targets))
            .unwrap();
        assert!(scalar(&out.loss).is_finite(), "{cfg}");
    }
    // Unknown fields are refused.
    let err = serde_json::from_value::<Box<dyn Loss>>(json!({"type": "z_loss", "coef": 1.0}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("coef"), "{err}");
}

#[test]
fn unknown_type_error_lists_registered_names() {
    let err = serde_json::from_value::<Box<dyn Loss>>(json!({"type": "no_such_loss"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no_such_loss"), "{err}");
    for name in [
        "softmax_cross_entropy",
        "z_loss",
        "linear_cross_entropy",
        "weighted_sum",
    ] {
        assert!(err.contains(name), "{name} missing from: {err}");
    }
}

#[test]
fn weighted_sum_logs_terms_and_counts_like_the_first() {
    let mut rng = Rng::new(5);
    let logits = rng.randn(&[2, 3, 6], 1.0);
    let targets = Tensor::from_slice(&[0i64, 5, 2, -100, 3, 1]).view([2, 3]);
    let ws = WeightedSum {
        terms: vec![
            Term::new(1.0, SoftmaxCrossEntropy::default()),
            Term::new(
                1e-2,
                ZLoss {
                    coefficient: 1.0,
                    ..Default::default()
                },
            ),
            Term::new(0.5, ZLoss::default()),
            Term::new(
                0.3,
                LinearCrossEntropy {
                    z_loss: 0.1,
                    ..Default::default()
                },
            ),
        ],
    };
    let input = LossInput::from_logits(&logits, &targets);
    let out = ws.forward(&input).unwrap();
    let names: Vec<&str> = out.metrics.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "softmax_cross_entropy",
            "z_loss",
            "z_loss_2",
            "linear_cross_entropy",
            "linear_cross_entropy/z_loss"
        ]
    );
    assert_eq!(scalar(&out.count), 5.0);
    let ce = scalar(&SoftmaxCrossEntropy::default().forward(&input).unwrap().loss);
    let z1 = scalar(
        &ZLoss {
            coefficient: 1.0,
            ..Default::default()
        }
        .forward(&input)
        .unwrap()
        .loss,
    );
    let z2 = scalar(&ZLoss::default().forward(&input).unwrap().loss);
    let lin = scalar(
        &LinearCrossEntropy {
            z_loss: 0.1,
            ..Default::default()
        }
        .forward(&input)
        .unwrap()
        .loss,
    );
    let want = ce + 1e-2 * z1 + 0.5 * z2 + 0.3 * lin;
    assert!(
        (scalar(&out.loss) - want).abs() < 1e-12,
        "{} vs {want}",
        scalar(&out.loss)
    );
    assert_eq!(scalar(&out.metrics[0].1), ce);
    assert_eq!(scalar(&out.metrics[1].1), z1);
    assert!(!out.metrics[0].1.requires_grad());
}

#[test]
fn focal_with_gamma_zero_is_cross_entropy_and_alpha_weights_the_target() {
    let mut rng = Rng::new(6);
    let logits = rng.randn(&[3, 4, 6], 1.5);
    let targets = Tensor::from_slice(&[0i64, 5, 2, -100, 3, 1, 1, 1, 4, -100, 0, 2]).view([3, 4]);
    let input = LossInput::from_logits(&logits, &targets);
    let ce = SoftmaxCrossEntropy {
        reduction: Reduction::None,
        ..Default::default()
    }
    .forward(&input)
    .unwrap()
    .loss;
    let f0 = Focal {
        gamma: 0.0,
        reduction: Reduction::None,
        ..Default::default()
    }
    .forward(&input)
    .unwrap()
    .loss;
    assert_close(&f0, &ce, 1e-12, 1e-15, "focal gamma 0");
    let alpha = vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
    let fa = Focal {
        gamma: 0.0,
        alpha: Some(alpha.clone()),
        reduction: Reduction::None,
        ..Default::default()
    }
    .forward(&input)
    .unwrap()
    .loss;
    let w = SoftmaxCrossEntropy {
        weight: Some(alpha),
        reduction: Reduction::None,
        ..Default::default()
    }
    .forward(&input)
    .unwrap()
    .loss;
    assert_close(&fa, &w, 1e-12, 1e-15, "focal alpha = class weights");
}

#[test]
fn unlikelihood_candidates_are_earlier_targets_of_the_same_sequence() {
    // One sequence [2, 0, 2, -100, 1] and a second [1, 1, 3, 0, 0] over 4 classes.
    let targets = Tensor::from_slice(&[2i64, 0, 2, -100, 1, 1, 1, 3, 0, 0]).view([2, 5]);
    let mut rng = Rng::new(7);
    let logits = rng.randn(&[2, 5, 4], 1.0);
    let alpha = 0.7;
    let out = Unlikelihood {
        alpha,
        reduction: Reduction::None,
        ..Default::default()
    }
    .forward(&LossInput::from_logits(&logits, &targets))
    .unwrap()
    .loss;
    let candidates: [[&[i64]; 5]; 2] = [
        [&[], &[2], &[0], &[], &[2, 0]],
        [&[], &[], &[1], &[1, 3], &[1, 3]],
    ];
    let p = logits.softmax(-1, Kind::Double);
    let lp = logits.log_softmax(-1, Kind::Double);
    for b in 0..2i64 {
        for t in 0..5i64 {
            let y = targets.int64_value(&[b, t]);
            let want = if y == -100 {
                0.0
            } else {
                let ul: f64 = candidates[b as usize][t as usize]
                    .iter()
                    .map(|&c| -(1.0 - p.double_value(&[b, t, c])).ln())
                    .sum();
                -lp.double_value(&[b, t, y]) + alpha * ul
            };
            let got = out.double_value(&[b, t]);
            assert!((got - want).abs() < 1e-12, "({b}, {t}): {got} vs {want}");
        }
    }
}

#[test]
fn banned_tokens_penalise_the_configured_ids() {
    let mut rng = Rng::new(8);
    let logits = rng.randn(&[5, 6], 1.0);
    let targets = Tensor::from_slice(&[0i64, 5, -100, 3, 1]);
    let input = LossInput::from_logits(&logits, &targets);
    let out = BannedTokens {
        banned_ids: vec![4, 1, 4],
        alpha: 2.0,
        reduction: Reduction::None,
        ..Default::default()
    }
    .forward(&input)
    .unwrap()
    .loss;
    let p = logits.softmax(-1, Kind::Double);
    let lp = logits.log_softmax(-1, Kind::Double);
    for i in 0..5i64 {
        let y = targets.int64_value(&[i]);
        let want = if y == -100 {
            0.0
        } else {
            -lp.double_value(&[i, y])
                + 2.0
                    * [4i64, 1]
                        .iter()
                        .map(|&b| -(1.0 - p.double_value(&[i, b])).ln())
                        .sum::<f64>()
        };
        assert!((out.double_value(&[i]) - want).abs() < 1e-12);
    }
}

#[test]
fn distillation_counts_tokens_not_rows() {
    let mut rng = Rng::new(9);
    let logits = rng.randn(&[2, 3, 5], 1.0);
    let teacher = rng.randn(&[2, 3, 5], 1.0);
    let targets = Tensor::from_slice(&[0i64, 1, -100, 2, 3, 4]).view([2, 3]);
    let l = DistillationKl {
        temperature: 3.0,
        ..Default::default()
    };
    let input = LossInput::from_logits(&logits, &targets).with_teacher_logits(&teacher);
    let out = l.forward(&input).unwrap();
    assert_eq!(scalar(&out.count), 5.0);
    let lq = (&logits / 3.0).log_softmax(-1, Kind::Double);
    let lp = (&teacher / 3.0).log_softmax(-1, Kind::Double);
    let per = (lp.exp() * (&lp - lq)).sum_dim_intlist(-1, false, Kind::Double) * 9.0;
    let mask = targets.ne(-100).to_kind(Kind::Double);
    let want = (per * mask).sum(Kind::Double).double_value(&[]) / 5.0;
    assert!((scalar(&out.loss) - want).abs() < 1e-12);
    // The teacher receives no gradient.
    let t = leaf_kind(&teacher, Kind::Double);
    let x = leaf_kind(&logits, Kind::Double);
    l.forward(&LossInput::from_logits(&x, &targets).with_teacher_logits(&t))
        .unwrap()
        .loss
        .backward();
    assert!(!t.grad().defined());
}
