//! `trainer.precision = "bf16"` on the CPU: bf16 autocast really runs (the numbers move off the
//! float32 ones), training still converges to within a few percent of float32, with the plain
//! and the fused loss, and the parameters stay float32. `trainer.precision = "f64"`: the GRU and
//! the tied Transformer train in float64 (parameters, optimiser state, hidden state, saved
//! files, logged losses), start from the float32 run's initial weights, keep the tie, resume
//! bit for bit, and a resume or a load that would change the dtype is refused.
mod common;

use std::path::Path;

use common::tiny_char_config as config;
use perplex_model::HiddenState;
use perplex_trainer::{FitSummary, LoadedModel, RunConfig, Trainer};
use tch::{Kind, Tensor};

fn fit(dir: &std::path::Path, run: &str, loss: &str, precision: &str) -> FitSummary {
    let mut t = Trainer::from_config(config(
        dir,
        run,
        loss,
        &format!("precision = \"{precision}\""),
    ))
    .unwrap();
    let s = t.fit().unwrap();
    for (name, p) in t.var_store().variables() {
        assert_eq!(p.kind(), Kind::Float, "parameter {name} after {precision}");
    }
    s
}

#[test]
fn bf16_autocast_on_the_cpu_trains_close_to_float32() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    for (tag, loss) in [
        ("plain", "type = \"softmax_cross_entropy\""),
        ("fused", "type = \"linear_cross_entropy\"\nchunk_size = 100"),
    ] {
        let f32 = fit(dir.path(), &format!("{tag}-f32"), loss, "f32");
        let bf16 = fit(dir.path(), &format!("{tag}-bf16"), loss, "bf16");
        let (a, b) = (f32.epochs[0].train_loss, bf16.epochs[0].train_loss);
        let (va, vb) = (
            f32.epochs[0].valid.unwrap().loss,
            bf16.epochs[0].valid.unwrap().loss,
        );
        eprintln!("{tag}: train loss f32 {a:.5} bf16 {b:.5}; valid f32 {va:.5} bf16 {vb:.5}");
        // Autocast took effect: bf16 rounding moves the loss (float32 runs are reproducible).
        assert_ne!(a, b, "{tag}: bf16 run equals the float32 run");
        assert!((a - b).abs() < 0.03 * a, "{tag}: train {a} vs {b}");
        assert!((va - vb).abs() < 0.03 * va, "{tag}: valid {va} vs {vb}");
        // A bf16 run's checkpoint is scored under bf16 autocast, as in training.
        let run = dir.path().join(format!("{tag}-bf16"));
        let loaded = LoadedModel::load(&run, tch::Device::Cpu).unwrap();
        let valid = loaded.split_ids("valid").unwrap();
        let cfg = &loaded.config.data;
        let batches = loaded
            .batches(&valid, cfg.batch_size, cfg.seq_len, "valid")
            .unwrap();
        let again = loaded.evaluate(&batches).unwrap().loss;
        assert_eq!(again, vb, "{tag}: eval of the bf16 checkpoint");
    }
}

/// The kinds of the tensors of a safetensors file, by name.
fn kinds(file: &Path) -> Vec<(String, Kind)> {
    Tensor::read_safetensors(file)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.kind()))
        .collect()
}

/// Every tensor of `file` is `kind` (and there is at least one).
fn assert_all(file: &Path, kind: Kind) {
    let k = kinds(file);
    assert!(!k.is_empty(), "{} holds no tensor", file.display());
    for (name, got) in k {
        assert_eq!(got, kind, "{name} in {}", file.display());
    }
}

/// Trains `config` and checks what `precision = "f64"` promises: Double parameters, optimiser
/// state, saved weights and hidden state; finite, falling losses with more digits than float32
/// holds. Returns the summary and the logged losses.
fn fit_f64(config: RunConfig, run: &Path) -> (FitSummary, Vec<f64>) {
    let mut t = Trainer::from_config(config).unwrap();
    let summary = t.fit().unwrap();
    for (name, p) in t.var_store().variables() {
        assert_eq!(p.kind(), Kind::Double, "parameter {name}");
    }
    assert_all(&run.join("model.safetensors"), Kind::Double);
    let last = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("step-")
        })
        .max()
        .unwrap();
    assert_all(&last.join("model.safetensors"), Kind::Double);
    assert_all(&last.join("optimizer.safetensors"), Kind::Double);
    for (name, kind) in kinds(&last.join("state.safetensors")) {
        assert_eq!(kind, Kind::Double, "hidden state {name}");
    }
    let losses: Vec<f64> = common::train_log(run, "loss")
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert!(losses.len() >= 4, "{losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let n = losses.len();
    assert!(
        losses[n - 1] < losses[0],
        "the loss did not fall: {losses:?}"
    );
    // The logged losses keep float64's digits: a loss rounded to float32 on the way would be a
    // float32 number at every step.
    assert!(
        losses.iter().any(|&l| f64::from(l as f32) != l),
        "every logged loss is a float32 number: {losses:?}"
    );
    (summary, losses)
}

/// The GRU (BPTT, hidden state carried and checkpointed mid-epoch, at step 4): float64 throughout, starting
/// from the float32 run's weights (its first loss equals the float32 one to float32's
/// precision), and `LoadedModel` (what `perplex eval` and `generate` use) scores the f64 run in
/// float64, to the bit of the validation in training.
#[test]
fn f64_trains_the_gru_in_float64_from_the_float32_initial_weights() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let gru = |run: &str, precision: &str| {
        let mut c = config(
            dir.path(),
            run,
            "type = \"softmax_cross_entropy\"",
            &format!("precision = \"{precision}\"\neval_every = 4"),
        );
        // 6,000 characters: 10 windows an epoch, one to validate.
        c.data.path = Some(common::small_shakespeare(dir.path()));
        c.trainer.max_steps = 8;
        c.trainer.log_every = 1;
        c
    };
    let (summary, losses) = fit_f64(gru("f64", "f64"), &dir.path().join("f64"));
    Trainer::from_config(gru("f32", "f32"))
        .unwrap()
        .fit()
        .unwrap();
    // The carried hidden state, saved mid-epoch (10 windows an epoch), is float64 too.
    let state = kinds(
        &dir.path()
            .join("f64/checkpoints/step-00000008/state.safetensors"),
    );
    assert_eq!(state, [("hidden.0".to_string(), Kind::Double)]);
    let f32_losses: Vec<f64> = common::train_log(&dir.path().join("f32"), "loss")
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    eprintln!("gru: f64 losses {losses:?}\ngru: f32 losses {f32_losses:?}");
    // The check above can fail: float32 losses are float32 numbers.
    assert!(f32_losses.iter().all(|&l| f64::from(l as f32) == l));
    let first = (losses[0] - f32_losses[0]).abs();
    assert!(
        first < 1e-5 * losses[0],
        "first loss f64 {} vs f32 {}",
        losses[0],
        f32_losses[0]
    );
    assert_ne!(losses[0], f32_losses[0], "the f64 run computed in float32");

    let loaded = LoadedModel::load(&dir.path().join("f64"), tch::Device::Cpu).unwrap();
    for (name, v) in loaded.vs.variables() {
        assert_eq!(v.kind(), Kind::Double, "loaded {name}");
    }
    let valid = loaded.split_ids("valid").unwrap();
    let cfg = &loaded.config.data;
    let batches = loaded
        .batches(&valid, cfg.batch_size, cfg.seq_len, "valid")
        .unwrap();
    let again = loaded.evaluate(&batches).unwrap().loss;
    assert_eq!(again, summary.epochs[0].valid.unwrap().loss);
    // Per-token losses (`perplex eval`) stay float64: their mean is that loss to float64
    // rounding of the sum, not to float32's.
    let tokens = loaded
        .token_losses(&valid, cfg.batch_size, cfg.seq_len)
        .unwrap();
    let mean = tokens.iter().map(|t| t.nll).sum::<f64>() / tokens.len() as f64;
    assert!((mean - again).abs() < 1e-12, "{mean} vs {again}");
    let options = perplex_trainer::SamplingOptions {
        max_tokens: 20,
        seed: 7,
        ..Default::default()
    };
    let text = loaded.generate("ROMEO:", &options).unwrap();
    assert!(text.starts_with("ROMEO:") && text.len() > 6, "{text:?}");
}

/// The tied Transformer (BB2-06 under float64): the head is still the embedding, one Double
/// tensor, after `VarStore::double`, training, a checkpoint and a resume, and the resumed run
/// equals the uninterrupted one bit for bit.
#[test]
fn f64_trains_the_tied_transformer_and_resumes_it_exactly() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let config = |run: &str, steps: u64| {
        common::tiny_gpt_config(
            dir.path(),
            run,
            "",
            &format!("max_steps = {steps}\nprecision = \"f64\""),
        )
    };
    let (_, straight) = fit_f64(config("straight", 8), &dir.path().join("straight"));
    eprintln!("transformer: f64 losses {straight:?}");
    Trainer::from_config(config("part", 5))
        .unwrap()
        .fit()
        .unwrap();
    let run = dir.path().join("part");
    let mut resumed = Trainer::resume(
        &run.display().to_string(),
        dir.path(),
        &["trainer.max_steps=8".into()],
    )
    .unwrap();
    let tied = |t: &Trainer| {
        let wte = t.var_store().variables()["wte.weight"].shallow_clone();
        let x = Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]);
        let head = t
            .model()
            .forward(&x, &HiddenState::none(), false)
            .unwrap()
            .head
            .weight;
        assert_eq!(wte.kind(), Kind::Double);
        assert_eq!(
            head.data_ptr(),
            wte.data_ptr(),
            "head and wte share storage"
        );
    };
    tied(&resumed);
    resumed.fit().unwrap();
    tied(&resumed);
    let resumed_losses: Vec<f64> = common::train_log(&run, "loss")
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(resumed_losses.len(), straight.len());
    for (a, b) in straight.iter().zip(&resumed_losses) {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{straight:?} vs {resumed_losses:?}"
        );
    }
    assert_all(&run.join("model.safetensors"), Kind::Double);
}

/// A checkpoint fixes the parameters' dtype: resuming an f64 run as `f32` (or an f32 run as
/// `f64`) is refused with both values named and nothing changed, while `f32` to `bf16` (both
/// float32 parameters) is allowed; weights of the wrong dtype are refused by name, not cast.
#[test]
fn a_resume_or_load_that_changes_the_dtype_is_refused() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let fit = |run: &str, precision: &str| {
        let c = common::tiny_gpt_config(
            dir.path(),
            run,
            "",
            &format!("max_steps = 2\nprecision = \"{precision}\""),
        );
        Trainer::from_config(c).unwrap().fit().unwrap();
        dir.path().join(run)
    };
    let check = |run: &Path, precision: &str| {
        Trainer::check_resume(
            &run.display().to_string(),
            dir.path(),
            &[
                "trainer.max_steps=3".into(),
                format!("trainer.precision={precision}"),
            ],
        )
    };
    let f64_run = fit("f64", "f64");
    let f32_run = fit("f32", "f32");
    for (run, was, asks) in [(&f64_run, "f64", "f32"), (&f32_run, "f32", "f64")] {
        let err = check(run, asks).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "trainer.precision: the run has \"{was}\", the resume asks for \"{asks}\""
            )),
            "{err}"
        );
    }
    check(&f32_run, "bf16").unwrap();
    check(&f64_run, "f64").unwrap();

    // float32 weights in an f64 run's directory (a file written by another tool).
    let weights = f64_run.join("model.safetensors");
    let narrowed: Vec<(String, Tensor)> = Tensor::read_safetensors(&weights)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(Kind::Float)))
        .collect();
    Tensor::write_safetensors(&narrowed, &weights).unwrap();
    let err = LoadedModel::load(&f64_run, tch::Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is Float in the file, the model's variables are Double"),
        "{err}"
    );
}

/// The Llama under bf16 autocast (RMSNorm's mean of squares in float32, rotary tables cast to
/// the residual stream's float32, SDPA with grouped-query attention) trains within a few percent
/// of float32, its parameters float32; and it trains in float64.
#[test]
fn the_llama_trains_under_bf16_autocast_and_in_float64() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, precision: &str| {
        let mut c = config(
            dir.path(),
            name,
            "type = \"softmax_cross_entropy\"",
            &format!("precision = \"{precision}\""),
        );
        c.model = Box::new(perplex_model::LlamaLmConfig {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            max_position_embeddings: 32,
            tie_word_embeddings: true,
            ..Default::default()
        });
        c.trainer.max_steps = 15;
        let mut t = Trainer::from_config(c).unwrap();
        let s = t.fit().unwrap();
        let kind = if precision == "f64" {
            Kind::Double
        } else {
            Kind::Float
        };
        for (name, p) in t.var_store().variables() {
            assert_eq!(p.kind(), kind, "parameter {name} after {precision}");
        }
        s.epochs[0].train_loss
    };
    let (f32, bf16, f64) = (
        run("l-f32", "f32"),
        run("l-bf16", "bf16"),
        run("l-f64", "f64"),
    );
    eprintln!("llama train loss: f32 {f32:.5} bf16 {bf16:.5} f64 {f64:.5}");
    assert_ne!(f32, bf16, "bf16 autocast took no effect");
    assert!((f32 - bf16).abs() < 0.03 * f32, "f32 {f32} vs bf16 {bf16}");
    assert!((f32 - f64).abs() < 0.01 * f32, "f32 {f32} vs f64 {f64}");
}
