//! A gradient holding `inf` or NaN never reaches the optimiser: with `on_non_finite = "skip"`
//! the step is not taken and every parameter and all optimiser state stay bit-identical (with
//! clipping on or off); with `"stop"` the run ends with an error naming the parameter and the
//! step, and the last good checkpoint stays loadable.
mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use perplex_losses::{Loss, LossError, LossInput, LossOutput, SoftmaxCrossEntropy};
use perplex_trainer::Trainer;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Training forward calls since the test started (all tests hold `common::serial()`).
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Cross-entropy whose `at_call`-th forward also adds a term with value 0 whose gradient on the
/// output head's weight is `inf` (`sqrt` at 0) or NaN (`0 · sqrt` at 0); every other parameter
/// keeps a finite gradient.
#[derive(Debug, Serialize, Deserialize)]
struct GradFault {
    mode: String,
    at_call: u64,
}

#[typetag::serde(name = "test_grad_fault")]
impl Loss for GradFault {
    fn forward(&self, input: &LossInput) -> Result<LossOutput, LossError> {
        let mut out = SoftmaxCrossEntropy::default().forward(input)?;
        // Training calls only: the options probe before a run starts runs without gradients.
        if !out.loss.requires_grad() {
            return Ok(out);
        }
        let call = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
        if call == self.at_call {
            let (_, weight, _) = input.hidden().expect("the trainer passes hidden states");
            let zero = weight - weight.detach();
            let fault = match self.mode.as_str() {
                "inf" => zero.sqrt().sum(zero.kind()),
                _ => (zero.sqrt() * 0.0).sum(zero.kind()),
            };
            out.loss = out.loss.f_add(&fault)?;
        }
        Ok(out)
    }

    fn normalizer(&self, targets: &Tensor) -> Result<Tensor, LossError> {
        SoftmaxCrossEntropy::default().normalizer(targets)
    }
}

fn loss(mode: &str, at_call: u64) -> String {
    format!("type = \"test_grad_fault\"\nmode = \"{mode}\"\nat_call = {at_call}")
}

fn bytes(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Trains `steps` steps; returns the final weights and optimiser state as bytes, and the
/// number of skipped steps.
fn run(
    dir: &std::path::Path,
    name: &str,
    loss: &str,
    steps: u64,
    extra: &str,
) -> (Vec<u8>, Vec<u8>, u64) {
    let extra = format!("eval = false\n{extra}");
    let mut cfg = common::tiny_char_config(dir, name, loss, &extra);
    cfg.trainer.max_steps = steps;
    let mut trainer = Trainer::from_config(cfg).unwrap();
    // Counted from the first step: building the trainer probes the loss once.
    CALLS.store(0, Ordering::SeqCst);
    let summary = trainer.fit().unwrap();
    let run = dir.join(name);
    let ckpt = run.join(format!("checkpoints/step-{steps:08}"));
    (
        bytes(&run.join("model.safetensors")),
        bytes(&ckpt.join("optimizer.safetensors")),
        summary.skipped_steps,
    )
}

#[test]
fn skip_leaves_parameters_and_optimiser_state_bit_identical() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    for (i, (mode, clipping)) in [
        ("inf", ""),
        ("nan", ""),
        ("inf", "clip_grad_norm = 1.0"),
        ("nan", "clip_grad_norm = 1.0\nclip_grad_value = 0.5"),
        ("inf", "clip_grad_value = 0.5"),
    ]
    .into_iter()
    .enumerate()
    {
        let extra = format!("on_non_finite = \"skip\"\n{clipping}");
        // Step 3's gradient is poisoned and skipped; the run stops after it.
        let (w3, o3, skipped) = run(dir.path(), &format!("fault-{i}"), &loss(mode, 3), 3, &extra);
        // The same run stopped after step 2, never poisoned.
        let (w2, o2, none) = run(dir.path(), &format!("clean-{i}"), &loss(mode, 0), 2, &extra);
        assert_eq!((skipped, none), (1, 0), "{mode} {clipping}");
        assert!(
            w3 == w2,
            "{mode} {clipping}: the weights changed on a skipped step"
        );
        assert!(
            o3 == o2,
            "{mode} {clipping}: the optimiser state changed on a skipped step"
        );
    }
}

#[test]
fn stop_names_the_parameter_and_step_and_keeps_the_last_checkpoint() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    for mode in ["inf", "nan"] {
        let name = format!("stop-{mode}");
        let mut cfg = common::tiny_char_config(
            dir.path(),
            &name,
            &loss(mode, 3),
            "eval = false\neval_every = 2\non_non_finite = \"stop\"\nclip_grad_norm = 1.0",
        );
        cfg.trainer.max_steps = 6;
        let mut trainer = Trainer::from_config(cfg).unwrap();
        CALLS.store(0, Ordering::SeqCst);
        let err = trainer.fit().unwrap_err().to_string();
        assert!(
            err.contains("`out.weight`") && err.contains("step 3"),
            "{mode}: {err}"
        );
        let run = dir.path().join(&name);
        let ckpts = perplex_trainer::checkpoint::list(&run);
        let steps: Vec<u64> = ckpts.iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, vec![2], "{mode}: checkpoints {steps:?}");
        let manifest = perplex_trainer::checkpoint::read_manifest(&ckpts[0].1).unwrap();
        assert_eq!(manifest.step, 2);
        // The kept checkpoint resumes.
        let resumed = Trainer::resume(
            run.to_str().unwrap(),
            dir.path(),
            &["loss.at_call=0".into(), "trainer.max_steps=4".into()],
        )
        .unwrap()
        .fit()
        .unwrap();
        assert_eq!(resumed.steps, 4);
    }
}
