//! Finite-difference gradient checks (float64, central differences) of every loss and its main
//! options.
mod common;

use perplex_losses::{
    BannedTokens, CrossEntropy, DistillationKl, Focal, LinearCrossEntropy, Loss, LossInput, Nll,
    Reduction, SoftmaxCrossEntropy, Term, Unlikelihood, WeightedSum, ZLoss,
};
use tch::{Kind, Tensor};

use common::{gradcheck, Rng};

const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

/// A scalar from a loss output: the loss itself, or a weighted sum of a `none` output with
/// fixed per-position weights (so that the check sees more than the gradient of the sum).
fn scalarise(loss: Tensor, upstream: Option<&Tensor>) -> Tensor {
    if loss.dim() == 0 {
        return loss;
    }
    match upstream {
        Some(u) => {
            let shape = loss.size();
            (loss * u.reshape(shape)).sum(Kind::Double)
        }
        None => loss.sum(Kind::Double),
    }
}

/// Targets `[2, 4]` over 5 classes with two ignored (-100) positions.
fn targets_with_ignored(rng: &mut Rng) -> Tensor {
    let t = rng.targets(&[2, 4], 5);
    let _ = t.narrow(1, 1, 1).narrow(0, 0, 1).fill_(-100);
    let _ = t.narrow(1, 3, 1).narrow(0, 1, 1).fill_(-100);
    t
}

/// Gradcheck of a loss on logits `[2, 4, 5]` with the given targets.
fn check_logits(loss: &dyn Loss, targets: &Tensor, seed: u64, what: &str) {
    let mut rng = Rng::new(seed);
    let logits = rng.randn(&[2, 4, 5], 1.5);
    let upstream = rng.randn(&[2, 4], 1.0);
    gradcheck(
        &[logits],
        |x| {
            let out = loss
                .forward(&LossInput::from_logits(&x[0], targets))
                .unwrap();
            scalarise(out.loss, Some(&upstream))
        },
        what,
    );
}

#[test]
fn softmax_cross_entropy_options() {
    let mut rng = Rng::new(1);
    let plain = rng.targets(&[2, 4], 5);
    let ignored = targets_with_ignored(&mut rng);
    let weight = Some(vec![0.5, 1.0, 1.5, 2.0, 0.7]);
    for reduction in REDUCTIONS {
        for (ls, w) in [
            (0.0, None),
            (0.1, None),
            (0.0, weight.clone()),
            (0.2, weight.clone()),
        ] {
            for (name, t) in [("plain", &plain), ("ignored", &ignored)] {
                let l = SoftmaxCrossEntropy {
                    weight: w.clone(),
                    label_smoothing: ls,
                    reduction,
                    ..Default::default()
                };
                check_logits(&l, t, 2, &format!("sce {reduction:?} ls={ls} {w:?} {name}"));
            }
        }
    }
    // Soft targets.
    let probs = rng.randn(&[2, 4, 5], 1.0).softmax(-1, Kind::Double);
    for reduction in REDUCTIONS {
        let l = SoftmaxCrossEntropy {
            reduction,
            label_smoothing: 0.1,
            ..Default::default()
        };
        check_logits(&l, &probs, 3, &format!("sce soft {reduction:?}"));
    }
}

#[test]
fn cross_entropy_and_nll() {
    let mut rng = Rng::new(4);
    let ignored = targets_with_ignored(&mut rng);
    let logits = rng.randn(&[2, 4, 5], 1.0);
    for reduction in REDUCTIONS {
        let ce = CrossEntropy {
            reduction,
            ..Default::default()
        };
        gradcheck(
            std::slice::from_ref(&logits),
            |x| {
                let p = x[0].softmax(-1, Kind::Double);
                scalarise(
                    ce.forward(&LossInput::from_probs(&p, &ignored))
                        .unwrap()
                        .loss,
                    None,
                )
            },
            &format!("cross_entropy {reduction:?}"),
        );
        let nll = Nll {
            reduction,
            weight: Some(vec![1.0, 2.0, 0.5, 1.0, 3.0]),
            ..Default::default()
        };
        gradcheck(
            std::slice::from_ref(&logits),
            |x| {
                let lp = x[0].log_softmax(-1, Kind::Double);
                scalarise(
                    nll.forward(&LossInput::from_log_probs(&lp, &ignored))
                        .unwrap()
                        .loss,
                    None,
                )
            },
            &format!("nll {reduction:?}"),
        );
    }
}

#[test]
fn z_loss() {
    let mut rng = Rng::new(5);
    let ignored = targets_with_ignored(&mut rng);
    for reduction in REDUCTIONS {
        for coefficient in [1e-4, 1.0] {
            let l = ZLoss {
                coefficient,
                reduction,
                ..Default::default()
            };
            check_logits(
                &l,
                &ignored,
                6,
                &format!("z_loss {reduction:?} {coefficient}"),
            );
        }
    }
}

#[test]
fn focal() {
    let mut rng = Rng::new(7);
    let ignored = targets_with_ignored(&mut rng);
    let plain = rng.targets(&[2, 4], 5);
    for reduction in REDUCTIONS {
        for gamma in [0.0, 0.5, 2.0, 3.5] {
            for alpha in [None, Some(vec![0.25, 1.0, 0.75, 2.0, 0.5])] {
                for (name, t) in [("plain", &plain), ("ignored", &ignored)] {
                    let l = Focal {
                        gamma,
                        alpha: alpha.clone(),
                        reduction,
                        ..Default::default()
                    };
                    let what = format!("focal {reduction:?} gamma={gamma} {alpha:?} {name}");
                    check_logits(&l, t, 8, &what);
                }
            }
        }
    }
}

#[test]
fn distillation_kl() {
    let mut rng = Rng::new(9);
    let ignored = targets_with_ignored(&mut rng);
    let teacher = rng.randn(&[2, 4, 5], 2.0);
    let logits = rng.randn(&[2, 4, 5], 1.5);
    for reduction in REDUCTIONS {
        for temperature in [1.0, 2.0, 4.5] {
            let l = DistillationKl {
                temperature,
                reduction,
                ..Default::default()
            };
            gradcheck(
                std::slice::from_ref(&logits),
                |x| {
                    let input =
                        LossInput::from_logits(&x[0], &ignored).with_teacher_logits(&teacher);
                    scalarise(l.forward(&input).unwrap().loss, None)
                },
                &format!("distillation_kl {reduction:?} T={temperature}"),
            );
        }
    }
}

#[test]
fn unlikelihood() {
    let mut rng = Rng::new(10);
    // Repeats within sequences, so that candidate sets are not empty.
    let t = Tensor::from_slice(&[1i64, 2, 1, 3, -100, 2, 4, 4, 0, 0, 3, -100]).view([2, 6]);
    for reduction in REDUCTIONS {
        for alpha in [0.0, 0.5, 1.0] {
            let l = Unlikelihood {
                alpha,
                reduction,
                ..Default::default()
            };
            let logits = rng.randn(&[2, 6, 5], 1.0);
            let upstream = rng.randn(&[2, 6], 1.0);
            gradcheck(
                &[logits],
                |x| {
                    let out = l.forward(&LossInput::from_logits(&x[0], &t)).unwrap();
                    scalarise(out.loss, Some(&upstream))
                },
                &format!("unlikelihood {reduction:?} alpha={alpha}"),
            );
        }
    }
}

#[test]
fn banned_tokens() {
    let mut rng = Rng::new(11);
    let ignored = targets_with_ignored(&mut rng);
    for reduction in REDUCTIONS {
        for (ids, alpha) in [(vec![], 1.0), (vec![0, 3], 1.0), (vec![4, 4, 1], 2.5)] {
            let l = BannedTokens {
                banned_ids: ids.clone(),
                alpha,
                reduction,
                ..Default::default()
            };
            check_logits(&l, &ignored, 12, &format!("banned {reduction:?} {ids:?}"));
        }
    }
}

/// Gradcheck of `linear_cross_entropy` w.r.t. hidden, weight and bias.
fn check_linear(l: &LinearCrossEntropy, targets: &Tensor, bias: bool, normalizer: Option<f64>) {
    let mut rng = Rng::new(13);
    let hidden = rng.randn(&[2, 4, 3], 1.0);
    let weight = rng.randn(&[6, 3], 0.8);
    let b = rng.randn(&[6], 0.5);
    let norm = normalizer.map(|n| Tensor::scalar_tensor(n, (Kind::Double, tch::Device::Cpu)));
    let what = format!("linear_ce {l:?} bias={bias} normalizer={normalizer:?}");
    let mut inputs = vec![hidden, weight];
    if bias {
        inputs.push(b);
    }
    gradcheck(
        &inputs,
        |x| {
            let mut input = LossInput::from_hidden(&x[0], &x[1], x.get(2), targets);
            if let Some(n) = &norm {
                input = input.with_normalizer(n);
            }
            // `none` gives exact gradients for a uniform upstream gradient: check 0.7 · sum.
            let loss = l.forward(&input).unwrap().loss;
            if loss.dim() == 0 {
                loss
            } else {
                loss.sum(Kind::Double) * 0.7
            }
        },
        &what,
    );
}

#[test]
fn linear_cross_entropy() {
    let t = Tensor::from_slice(&[1i64, 5, -100, 0, 2, 2, -100, 4]).view([2, 4]);
    for reduction in REDUCTIONS {
        for chunk_size in [1, 3, 8, 4096] {
            for (label_smoothing, z_loss) in [(0.0, 0.0), (0.15, 0.0), (0.0, 0.3), (0.1, 1e-2)] {
                let l = LinearCrossEntropy {
                    reduction,
                    chunk_size,
                    label_smoothing,
                    z_loss,
                    ..Default::default()
                };
                check_linear(&l, &t, true, None);
            }
        }
        let l = LinearCrossEntropy {
            reduction,
            chunk_size: 3,
            ..Default::default()
        };
        check_linear(&l, &t, false, None);
    }
    let l = LinearCrossEntropy {
        chunk_size: 5,
        label_smoothing: 0.1,
        ..Default::default()
    };
    check_linear(&l, &t, true, Some(17.0));
}

#[test]
fn linear_cross_entropy_none_hidden_grad_is_exact_for_any_upstream() {
    let t = Tensor::from_slice(&[1i64, 5, -100, 0, 2, 2, -100, 4]).view([2, 4]);
    let mut rng = Rng::new(14);
    let hidden = rng.randn(&[2, 4, 3], 1.0);
    let weight = rng.randn(&[6, 3], 0.8).detach();
    let upstream = rng.randn(&[2, 4], 1.0);
    let l = LinearCrossEntropy {
        reduction: Reduction::None,
        chunk_size: 3,
        label_smoothing: 0.1,
        z_loss: 0.1,
        ..Default::default()
    };
    gradcheck(
        &[hidden],
        |x| {
            let out = l
                .forward(&LossInput::from_hidden(&x[0], &weight, None, &t))
                .unwrap();
            scalarise(out.loss, Some(&upstream))
        },
        "linear_ce none, hidden only, random upstream",
    );
}

#[test]
fn weighted_sum() {
    let mut rng = Rng::new(15);
    let ignored = targets_with_ignored(&mut rng);
    let l = WeightedSum {
        terms: vec![
            Term::new(1.0, SoftmaxCrossEntropy::default()),
            Term::new(0.3, ZLoss::default()),
            Term::new(0.5, Focal::default()),
        ],
    };
    check_logits(&l, &ignored, 16, "weighted_sum on logits");

    // A fused term inside a weighted sum: the upstream scalar (0.25) must reach the head.
    let hidden = rng.randn(&[2, 4, 3], 1.0);
    let weight = rng.randn(&[5, 3], 1.0);
    let l = WeightedSum {
        terms: vec![
            Term::new(
                0.25,
                LinearCrossEntropy {
                    chunk_size: 3,
                    ..Default::default()
                },
            ),
            Term::new(2.0, ZLoss::default()),
        ],
    };
    gradcheck(
        &[hidden, weight],
        |x| {
            l.forward(&LossInput::from_hidden(&x[0], &x[1], None, &ignored))
                .unwrap()
                .loss
        },
        "weighted_sum with linear_cross_entropy",
    );
}
