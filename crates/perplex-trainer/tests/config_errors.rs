//! Config errors are clear: they name the file, the key and what was expected.
mod common;

use perplex_trainer::RunConfig;

fn load_err(body: &str, overrides: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_config(&dir, body);
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let err = RunConfig::load(Some(&path), &o).unwrap_err().to_string();
    assert!(
        err.contains("run.toml"),
        "error should name the file: {err}"
    );
    err
}

#[test]
fn unknown_loss_type_lists_registered_losses() {
    let err = load_err("[loss]\ntype = \"softmax_cross_entropyy\"\n", &[]);
    assert!(err.contains("softmax_cross_entropyy"), "{err}");
    assert!(
        err.contains("softmax_cross_entropy`"),
        "should list the registered names: {err}"
    );
    assert!(err.contains("z_loss") || err.contains("nll"), "{err}");
}

#[test]
fn unknown_key_is_named() {
    let err = load_err("[trainer]\nepocs = 3\n", &[]);
    assert!(err.contains("epocs"), "{err}");
}

#[test]
fn unknown_key_inside_a_loss_is_named() {
    let err = load_err(
        "[loss]\ntype = \"softmax_cross_entropy\"\nlabel_smothing = 0.1\n",
        &[],
    );
    assert!(err.contains("label_smothing"), "{err}");
}

#[test]
fn bad_value_names_the_key_and_expected_type() {
    let err = load_err("[trainer]\nepochs = \"many\"\n", &[]);
    assert!(err.contains("epochs") || err.contains("many"), "{err}");
    assert!(err.contains("integer") || err.contains("u64"), "{err}");
}

#[test]
fn bad_override_value_is_an_error() {
    let err = load_err("", &["trainer.epochs=lots"]);
    assert!(err.contains("lots"), "{err}");
}

#[test]
fn missing_config_file_is_named() {
    let err = RunConfig::load(Some("/nonexistent/run.toml".as_ref()), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/run.toml") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn overrides_and_environment_apply_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_config(&dir, "[trainer]\nepochs = 7\nseed = 1\n");
    let c = RunConfig::load(Some(&path), &[]).unwrap();
    assert_eq!((c.trainer.epochs, c.trainer.seed), (7, 1));
    let c = RunConfig::load(
        Some(&path),
        &[
            "trainer.epochs=2".into(),
            "data.splits=[0.8, 0.1, 0.1]".into(),
        ],
    )
    .unwrap();
    assert_eq!(c.trainer.epochs, 2);
    assert_eq!(c.data.splits, vec![0.8, 0.1, 0.1]);
}

#[test]
fn seed_config_file_parses_and_round_trips() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/configs/gru-tinyshakespeare.toml"
    );
    let c = RunConfig::load(Some(path.as_ref()), &[]).unwrap();
    assert_eq!(c.data.batch_size, 64);
    assert_eq!(c.optim.lr(), 1e-3);
    let toml = c.to_toml().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let again = common::write_config(&dir, &toml);
    let c2 = RunConfig::load(Some(&again), &[]).unwrap();
    assert_eq!(c2.to_toml().unwrap(), toml);
}

#[test]
fn bad_enum_values_list_the_accepted_ones() {
    for (key, bad, listed) in [
        ("precision", "\"fp16\"", "\"f32\", \"bf16\", \"f64\""),
        ("host_allocator", "\"jemalloc\"", "\"retain\", \"system\""),
        ("on_non_finite", "\"ignore\"", "\"stop\", \"skip\""),
        ("precision", "16", "\"f32\", \"bf16\", \"f64\""),
    ] {
        let err = load_err(&format!("[trainer]\n{key} = {bad}\n"), &[]);
        assert!(err.contains(&format!("trainer.{key}")), "{err}");
        assert!(err.contains(listed), "{err}");
    }
}
