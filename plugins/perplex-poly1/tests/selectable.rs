//! The plugin is listed, chosen by name from config and trains, with no change to the trainer.
use perplex_losses::{Loss, LossInput};
use perplex_trainer::{RunConfig, Trainer};
use tch::{Device, Kind, Tensor};

#[test]
fn poly1_is_registered_and_listed() {
    perplex_poly1::link();
    let names: Vec<&str> = perplex_losses::registered_losses()
        .iter()
        .map(|l| l.name)
        .collect();
    assert!(names.contains(&"poly1"), "{names:?}");
    let loss: Box<dyn Loss> = serde_json::from_str(r#"{"type": "poly1", "epsilon": 2.0}"#).unwrap();
    assert!(format!("{loss:?}").contains("epsilon: 2.0"));
}

#[test]
fn poly1_equals_ce_plus_epsilon_one_minus_pt() {
    let logits = Tensor::randn([4, 5], (Kind::Double, Device::Cpu));
    let targets = Tensor::from_slice(&[0i64, 3, -100, 1]);
    let poly: Box<dyn Loss> = serde_json::from_str(r#"{"type": "poly1", "epsilon": 0.5}"#).unwrap();
    let got = poly
        .forward(&LossInput::from_logits(&logits, &targets))
        .unwrap()
        .loss
        .double_value(&[]);
    let logp = logits.log_softmax(-1, Kind::Double);
    let mut want = 0.0;
    for (i, t) in [(0, 0), (1, 3), (3, 1)] {
        let lp = logp.double_value(&[i, t]);
        want += -lp + 0.5 * (1.0 - lp.exp());
    }
    want /= 3.0;
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

#[test]
fn poly1_picked_by_name_trains_a_few_steps() {
    perplex_poly1::link();
    let dir = tempfile::tempdir().unwrap();
    // Through the project's fetch code: $PERPLEX_DATA_MIRROR when set, else the public source.
    let corpus = perplex_data::fetch_corpus("tinyshakespeare", dir.path()).unwrap();
    let cfg = dir.path().join("poly.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[data]
path = "{}"
tokenizer = "char"
max_vocab_size = 0
batch_size = 16
seq_len = 32
[model]
type = "gru"
embedding_dim = 32
hidden_size = 64
[loss]
type = "poly1"
epsilon = 1.0
[optim]
type = "adam"
lr = 3e-3
[trainer]
epochs = 1
max_steps = 30
device = "cpu"
log_every = 0
run_dir = "{}"
"#,
            corpus.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let config = RunConfig::load(Some(&cfg), &[]).unwrap();
    let summary = Trainer::from_config(config).unwrap().fit().unwrap();
    let e = &summary.epochs[0];
    let valid = e.valid.expect("validation ran");
    // Character-level uniform guessing over ~65 symbols costs ln 65 = 4.17 nats.
    assert!(
        valid.loss < 3.5,
        "validation loss {} after 30 poly1 steps",
        valid.loss
    );
}
