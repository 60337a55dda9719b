//! `trainer.precision = "bf16"` on the CPU: bf16 autocast really runs (the numbers move off the
//! float32 ones), training still converges to within a few percent of float32, with the plain
//! and the fused loss, and the parameters stay float32.
mod common;

use common::tiny_char_config as config;
use perplex_trainer::{FitSummary, LoadedModel, Trainer};
use tch::Kind;

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
