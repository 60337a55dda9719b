//! `PERPLEX__SECTION__KEY` environment variables override the file; `--set` overrides both.
//! (Its own test binary: it sets process environment variables.)
use perplex_trainer::RunConfig;

#[test]
fn environment_then_set_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(
        &path,
        "[trainer]\nepochs = 7\n[loss]\ntype = \"softmax_cross_entropy\"\n",
    )
    .unwrap();
    std::env::set_var("PERPLEX__TRAINER__EPOCHS", "3");
    std::env::set_var("PERPLEX__LOSS__LABEL_SMOOTHING", "0.1");
    let c = RunConfig::load(Some(&path), &[]).unwrap();
    assert_eq!(c.trainer.epochs, 3);
    let json = serde_json::to_value(&c.loss).unwrap();
    assert_eq!(json["label_smoothing"], 0.1);
    let c = RunConfig::load(Some(&path), &["trainer.epochs=5".into()]).unwrap();
    assert_eq!(c.trainer.epochs, 5);
    std::env::remove_var("PERPLEX__TRAINER__EPOCHS");
    std::env::remove_var("PERPLEX__LOSS__LABEL_SMOOTHING");
}
