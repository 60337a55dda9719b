//! CUDA-tagged tests: the losses on the GPU equal their CPU float64 values. Every test here is
//! named `cuda_*` and `#[ignore]`d, so a CPU-only run shows them as ignored (never as passed);
//! `scripts/gpu-check.sh` runs them with `--include-ignored` on a GPU machine, where a missing
//! CUDA device fails them.
mod common;

use perplex_losses::{LinearCrossEntropy, Loss, LossInput, SoftmaxCrossEntropy};
use tch::{Device, Kind, Tensor};

fn cuda() -> Option<Device> {
    assert!(
        tch::Cuda::is_available(),
        "no CUDA device: these tests are run by scripts/gpu-check.sh on a GPU machine"
    );
    Some(Device::Cuda(0))
}

fn value_and_grad(loss: &dyn Loss, logits: &Tensor, targets: &Tensor) -> (f64, Tensor) {
    let x = logits.detach().set_requires_grad(true);
    let out = loss.forward(&LossInput::from_logits(&x, targets)).unwrap();
    out.loss.backward();
    (
        out.loss.double_value(&[]),
        x.grad().to_device(Device::Cpu).to_kind(Kind::Double),
    )
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it (--include-ignored)"]
fn cuda_softmax_cross_entropy_matches_cpu_float64() {
    let Some(dev) = cuda() else { return };
    let mut rng = common::Rng::new(7);
    let logits = rng.randn(&[64, 35, 1000], 3.0);
    let targets = rng.targets(&[64, 35], 1000);
    for loss in [
        SoftmaxCrossEntropy::default(),
        SoftmaxCrossEntropy {
            label_smoothing: 0.1,
            ..Default::default()
        },
    ] {
        let (v64, g64) = value_and_grad(&loss, &logits, &targets);
        let (v32, g32) = value_and_grad(
            &loss,
            &logits.to_kind(Kind::Float).to_device(dev),
            &targets.to_device(dev),
        );
        assert!((v64 - v32).abs() <= 1e-5 * v64.abs(), "{v64} vs {v32}");
        let gd = (g64 - g32).abs().max().double_value(&[]);
        assert!(gd < 1e-6, "gradient difference {gd}");
    }
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-check.sh runs it (--include-ignored)"]
fn cuda_linear_cross_entropy_matches_unfused() {
    let Some(dev) = cuda() else { return };
    let mut rng = common::Rng::new(8);
    let (n, h, v) = (4096, 512, 50_000);
    let hidden = rng.randn(&[n, h], 1.0).to_kind(Kind::Float).to_device(dev);
    let weight = rng.randn(&[v, h], 0.05).to_kind(Kind::Float).to_device(dev);
    let targets = rng.targets(&[n], v).to_device(dev);
    let run = |loss: &dyn Loss| {
        let hs = hidden.detach().set_requires_grad(true);
        let w = weight.detach().set_requires_grad(true);
        let out = loss
            .forward(&LossInput::from_hidden(&hs, &w, None, &targets))
            .unwrap();
        out.loss.backward();
        (out.loss.double_value(&[]), hs.grad(), w.grad())
    };
    let (a, ah, aw) = run(&SoftmaxCrossEntropy::default());
    let (b, bh, bw) = run(&LinearCrossEntropy {
        chunk_size: 1024,
        ..Default::default()
    });
    assert!((a - b).abs() <= 1e-5 * a.abs(), "{a} vs {b}");
    for (x, y) in [(ah, bh), (aw, bw)] {
        let d = (&x - &y).abs().max().double_value(&[]);
        let s = x.abs().max().double_value(&[]);
        assert!(d <= 1e-4 * s, "gradient difference {d} (scale {s})");
    }
}
