//! The example configs' `[model]` sections build for their own `data.seq_len`.
use perplex_model::{BuildContext, ModelConfig};
use tch::{nn, Device};

#[test]
fn the_gpt_example_config_builds_the_reference_quick_model() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/configs/gpt-tinyshakespeare-char.toml"
    );
    let doc: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    let seq_len = doc["data"]["seq_len"].as_integer().unwrap();
    let model: Box<dyn ModelConfig> = doc["model"].clone().try_into().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let context = BuildContext::new(65).with_seq_len(seq_len);
    let m = model.build(&vs.root(), &context).unwrap();
    assert_eq!(m.max_seq_len(), Some(64));
    let parameters: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    // `sum(p.numel() for p in model.parameters())` of the reference GPT for 65 characters
    // (wte + wpe + 4 blocks + ln_f; the tied head counted once).
    assert_eq!(parameters, 804_096);
}
