//! Every model in float64 (what `trainer.precision = "f64"` does: build, then
//! `VarStore::double`): the variables keep their values and a tied head stays the embedding
//! (BB2-06), and the forward pass, the initial state, the rotary tables and the gradients follow
//! the parameters' dtype, with no float32 tensor made along the way; the output equals the
//! float32 model's to float32 precision.
use perplex_model::{
    BuildContext, GruLmConfig, LanguageModel, LstmLmConfig, ModelConfig, Positions,
    TransformerLmConfig,
};
use tch::{nn, Device, Kind, Tensor};

/// A model config and the name of its token embedding.
fn models() -> Vec<(&'static str, Box<dyn ModelConfig>, &'static str)> {
    let transformer = |positions, tie_weights| TransformerLmConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        block_size: 8,
        positions,
        tie_weights,
        ..Default::default()
    };
    vec![
        (
            "gru, tied",
            Box::new(GruLmConfig {
                embedding_dim: 16,
                hidden_size: 16,
                num_layers: 2,
                tie_weights: true,
                ..Default::default()
            }),
            "embedding.weight",
        ),
        (
            "lstm, tied",
            Box::new(LstmLmConfig {
                embedding_dim: 16,
                hidden_size: 16,
                tie_weights: true,
                ..Default::default()
            }),
            "embedding.weight",
        ),
        (
            "transformer, rope, tied",
            Box::new(transformer(Positions::Rope, true)),
            "wte.weight",
        ),
        (
            "transformer, learned positions",
            Box::new(transformer(Positions::Learned, false)),
            "wte.weight",
        ),
        (
            "llama, gqa, llama3 rope, tied",
            Box::new(perplex_model::LlamaLmConfig {
                hidden_size: 16,
                intermediate_size: 24,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: Some(2),
                max_position_embeddings: 8,
                rope_scaling: Some(perplex_model::RopeScaling {
                    rope_type: "llama3".into(),
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 4,
                }),
                tie_word_embeddings: true,
                ..Default::default()
            }),
            "model.embed_tokens.weight",
        ),
    ]
}

#[test]
fn every_model_runs_in_float64_after_var_store_double() {
    let vocab = 11;
    let input = Tensor::from_slice(&[1i64, 4, 2, 9, 0, 3, 7, 5, 10, 6, 8, 2]).view([2, 6]);
    for (name, config, embedding) in models() {
        tch::manual_seed(3);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = config
            .build(&vs.root(), &BuildContext::new(vocab).with_seq_len(8))
            .unwrap();
        let forward = |model: &dyn LanguageModel| {
            model
                .forward(&input, &model.initial_state(2, Device::Cpu), false)
                .unwrap()
        };
        let f32_logits = tch::no_grad(|| forward(model.as_ref()).logits());
        let before: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect();
        vs.double();
        for (n, old) in &before {
            let now = &vs.variables()[n];
            assert_eq!(now.kind(), Kind::Double, "{name}: {n}");
            assert!(now.requires_grad(), "{name}: {n} left the graph");
            assert!(now.equal(&old.to_kind(Kind::Double)), "{name}: {n} changed");
        }
        let state = model.initial_state(2, Device::Cpu);
        for s in &state.0 {
            assert_eq!(s.kind(), Kind::Double, "{name}: initial state");
        }
        let out = model.forward(&input, &state, true).unwrap();
        assert_eq!(out.hidden.kind(), Kind::Double, "{name}: hidden");
        assert_eq!(out.head.weight.kind(), Kind::Double, "{name}: head");
        for s in &out.state.0 {
            assert_eq!(s.kind(), Kind::Double, "{name}: state");
        }
        if name.contains("tied") {
            assert_eq!(
                out.head.weight.data_ptr(),
                vs.variables()[embedding].data_ptr(),
                "{name}: the head is no longer the embedding"
            );
        }
        let logits = out.logits();
        assert_eq!(logits.kind(), Kind::Double, "{name}: logits");
        let diff = (&logits.detach() - f32_logits.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            diff < 1e-5,
            "{name}: float64 vs float32 logits differ by {diff}"
        );
        assert!(diff > 0.0, "{name}: the float64 model computed in float32");
        logits.square().sum(Kind::Double).backward();
        for (n, v) in vs.variables() {
            let g = v.grad();
            assert!(g.defined(), "{name}: {n} has no gradient");
            assert_eq!(g.kind(), Kind::Double, "{name}: gradient of {n}");
        }
        // Sampling reads float32 logits, as documented for every decoder.
        let mut decoder = model.decoder(2, Device::Cpu);
        let next = tch::no_grad(|| decoder.feed(&input)).unwrap();
        assert_eq!(next.kind(), Kind::Float, "{name}: decoder logits");
        assert_eq!(next.size(), [2, vocab]);
    }
}
