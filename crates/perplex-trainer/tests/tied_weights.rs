//! BB2-06 (weight tying broken by a copy or by a checkpoint load), through the trainer: a tied
//! Transformer's head stays its token embedding across optimiser steps, a checkpoint and a
//! resume; the optimiser keeps one moment pair for the shared tensor; a checkpoint whose head
//! differs from its embedding is refused, not silently re-tied.
mod common;

use std::collections::BTreeSet;
use std::path::Path;

use perplex_model::HiddenState;
use perplex_trainer::{LoadedModel, Trainer};
use tch::{Device, Tensor};

/// The head weight the model uses for its logits.
fn head_of(t: &Trainer) -> Tensor {
    let x = Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]);
    t.model()
        .forward(&x, &HiddenState::none(), false)
        .unwrap()
        .head
        .weight
}

/// The parameter names of the `PARAM.slot` tensors of a checkpoint's `optimizer.safetensors`.
fn optimizer_params(checkpoint: &Path) -> BTreeSet<String> {
    Tensor::read_safetensors(checkpoint.join("optimizer.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(name, _)| name.rsplit_once('.').unwrap().0.to_string())
        .collect()
}

#[test]
fn bb2_06_the_tie_survives_steps_checkpoints_and_resume() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let config = |run: &str, steps: u64| {
        common::tiny_gpt_config(dir.path(), run, "", &format!("max_steps = {steps}"))
    };
    let straight = Trainer::from_config(config("straight", 4))
        .unwrap()
        .fit()
        .unwrap();
    assert_eq!(straight.steps, 4);

    Trainer::from_config(config("interrupted", 3))
        .unwrap()
        .fit()
        .unwrap();
    let run = dir.path().join("interrupted");
    let checkpoint = run.join("checkpoints/step-00000003");
    let saved: Vec<String> = Tensor::read_safetensors(checkpoint.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(saved.contains(&"wte.weight".to_string()), "{saved:?}");
    assert!(
        !saved.contains(&"head.weight".to_string()),
        "a tied pair is stored once: {saved:?}"
    );

    let mut resumed = Trainer::resume(
        &run.display().to_string(),
        dir.path(),
        &["trainer.max_steps=4".into()],
    )
    .unwrap();
    assert_eq!(resumed.step(), 3);
    // After the load the head and the embedding are one tensor: an edit through one name is
    // seen through the other (the test hook of the pitfall: add 1 to embedding[0][0]).
    let wte = resumed.var_store().variables()["wte.weight"].shallow_clone();
    let head = head_of(&resumed);
    assert_eq!(
        head.data_ptr(),
        wte.data_ptr(),
        "head and wte share storage"
    );
    let before = head.double_value(&[0, 0]);
    tch::no_grad(|| {
        let _ = wte.get(0).get(0).f_add_(&Tensor::from(1.0f32)).unwrap();
    });
    let edited = head.double_value(&[0, 0]);
    assert_eq!(edited, wte.double_value(&[0, 0]));
    assert!((edited - before - 1.0).abs() < 1e-6, "{before} -> {edited}");
    tch::no_grad(|| {
        let _ = wte.get(0).get(0).f_sub_(&Tensor::from(1.0f32)).unwrap();
    });

    // One more AdamW step: the two are still one matrix, bitwise.
    resumed.fit().unwrap();
    let wte = &resumed.var_store().variables()["wte.weight"];
    let head = head_of(&resumed);
    assert!(head.equal(wte));
    assert_eq!(head.data_ptr(), wte.data_ptr());
    // The optimiser holds moments for each unique tensor once: no `head.weight` entries.
    let variables: BTreeSet<String> = resumed.var_store().variables().into_keys().collect();
    let moments = optimizer_params(&run.join("checkpoints/step-00000004"));
    assert_eq!(moments, variables);
    // The resumed step 4 is the uninterrupted run's step 4, bit for bit.
    let a = common::train_log(&dir.path().join("straight"), "loss");
    let b = common::train_log(&run, "loss");
    assert_eq!(a.len(), 4);
    assert_eq!(a.len(), b.len());
    for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert_eq!(la.to_bits(), lb.to_bits(), "step {sa}: {la} vs {lb}");
    }
}

#[test]
fn bb2_06_tied_and_untied_counts_differ_by_one_embedding() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let count = |tie: bool| {
        let mut c = common::tiny_gpt_config(dir.path(), &format!("tie-{tie}"), "", "");
        c.model = Box::new(perplex_model::TransformerLmConfig {
            n_layer: 2,
            n_head: 2,
            n_embd: 32,
            block_size: 16,
            bias: true,
            tie_weights: tie,
            ..Default::default()
        });
        let t = Trainer::from_config(c).unwrap();
        let vocab = t.model().vocab_size();
        let n: i64 = t
            .var_store()
            .trainable_variables()
            .iter()
            .map(|v| v.numel() as i64)
            .sum();
        (n, vocab)
    };
    let ((tied, vocab), (untied, _)) = (count(true), count(false));
    println!("tied {tied} parameters, untied {untied} (vocabulary {vocab})");
    assert_eq!(tied, untied - vocab * 32);
}

/// A checkpoint whose `head.weight` differs from its `wte.weight` (head = embedding + 0.5) read
/// into a tied model: refused with the tensor named, never re-tied silently.
#[test]
fn bb2_06_a_checkpoint_with_a_separate_head_is_refused_by_a_tied_model() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let config = common::tiny_gpt_config(dir.path(), "run", "", "max_steps = 2");
    Trainer::from_config(config).unwrap().fit().unwrap();
    let run = dir.path().join("run");
    let checkpoint = run.join("checkpoints/step-00000002");
    for weights in [
        run.join("model.safetensors"),
        checkpoint.join("model.safetensors"),
    ] {
        let mut tensors = Tensor::read_safetensors(&weights).unwrap();
        let wte = tensors
            .iter()
            .find(|(n, _)| n == "wte.weight")
            .unwrap()
            .1
            .copy();
        tensors.push(("head.weight".into(), wte + 0.5));
        Tensor::write_safetensors(&tensors, &weights).unwrap();
    }
    let err = LoadedModel::load(&run, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`head.weight`") && err.contains("tie_weights"),
        "{err}"
    );
    let err = Trainer::resume(
        &run.display().to_string(),
        dir.path(),
        &["trainer.max_steps=3".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`head.weight`"), "{err}");
}
