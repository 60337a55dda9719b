//! The Transformer against PyTorch and against itself: golden logits, causality, the key/value
//! cache, cropping at `block_size`, initialisation and weight tying.
mod common;

use common::{max_abs_diff, Fixture};
use perplex_model::{
    BuildContext, HiddenState, LanguageModel, ModelConfig, Positions, TransformerLmConfig,
};
use tch::{nn, Device, Kind, Tensor};

fn tiny(positions: Positions) -> TransformerLmConfig {
    TransformerLmConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        block_size: 8,
        bias: true,
        positions,
        ..Default::default()
    }
}

fn build(config: &TransformerLmConfig, vocab: i64) -> (nn::VarStore, Box<dyn LanguageModel>) {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = config.build(&vs.root(), &BuildContext::new(vocab)).unwrap();
    (vs, model)
}

/// Logits `[batch, seq, vocab]` of a full forward (no dropout).
fn logits(model: &dyn LanguageModel, input: &Tensor) -> Tensor {
    model
        .forward(input, &HiddenState::none(), false)
        .unwrap()
        .logits()
}

fn ids(rows: &[&[i64]]) -> Tensor {
    Tensor::from_slice2(rows)
}

#[test]
fn logits_match_the_pytorch_reference_to_1e_5() {
    for name in [
        "gpt_learned_tied",
        "gpt_learned_bias_tied",
        "gpt_rope_untied",
    ] {
        let f = Fixture::load(name, "transformer");
        let got = tch::no_grad(|| logits(f.model.as_ref(), &f.input));
        let diff = max_abs_diff(&got, &f.expected("logits"));
        println!("{name}: max |perplex - PyTorch| = {diff:e}");
        assert!(diff < 1e-5, "{name}: {diff}");
    }
}

#[test]
fn variables_carry_the_reference_state_dict_names() {
    let f = Fixture::load("gpt_learned_bias_tied", "transformer");
    let mut names: Vec<String> = f.vs.variables().into_keys().collect();
    names.sort();
    let mut expected = vec![
        "wte.weight".to_string(),
        "wpe.weight".into(),
        "ln_f.weight".into(),
        "ln_f.bias".into(),
    ];
    for i in 0..2 {
        for module in ["ln1", "qkv", "proj", "ln2", "fc", "fc_proj"] {
            for tensor in ["weight", "bias"] {
                expected.push(format!("blocks.{i}.{module}.{tensor}"));
            }
        }
    }
    expected.sort();
    assert_eq!(names, expected);
    // Rotary positions have no table; an untied head is `head.weight`.
    let f = Fixture::load("gpt_rope_untied", "transformer");
    let names = f.vs.variables();
    assert!(!names.contains_key("wpe.weight") && names.contains_key("head.weight"));
}

#[test]
fn changing_a_token_changes_no_earlier_logit() {
    for positions in [Positions::Learned, Positions::Rope] {
        tch::manual_seed(1);
        let (_vs, model) = build(&tiny(positions), 13);
        let a = ids(&[&[3, 1, 4, 1, 5, 9, 2, 6], &[2, 7, 1, 8, 2, 8, 1, 8]]);
        for t in 0..8 {
            let b = a.copy();
            let _ = b.narrow(1, t, 1).fill_(12);
            let (la, lb) =
                tch::no_grad(|| (logits(model.as_ref(), &a), logits(model.as_ref(), &b)));
            if t > 0 {
                // Bitwise: the earlier positions do the same operations on the same numbers.
                assert!(
                    la.narrow(1, 0, t).equal(&lb.narrow(1, 0, t)),
                    "{positions:?}: token {t} changed an earlier logit"
                );
            }
            assert!(
                max_abs_diff(&la.narrow(1, t, 8 - t), &lb.narrow(1, t, 8 - t)) > 1e-4,
                "{positions:?}: token {t} changed nothing at or after it"
            );
        }
    }
}

/// Feeds `chunks` (`[1, n]` each) to a decoder and checks each answer against the last position
/// of a full forward of the last `block_size` tokens read so far; returns the largest difference.
fn decode_against_full_forward(model: &dyn LanguageModel, chunks: &[Tensor], block: i64) -> f64 {
    let mut decoder = model.decoder(1, Device::Cpu);
    let mut seen: Option<Tensor> = None;
    let mut worst: f64 = 0.0;
    tch::no_grad(|| {
        for chunk in chunks {
            let got = decoder.feed(chunk).unwrap();
            let all = match &seen {
                Some(s) => Tensor::cat(&[s, chunk], 1),
                None => chunk.shallow_clone(),
            };
            let len = all.size()[1];
            let window = all.narrow(1, (len - block).max(0), len.min(block));
            let want = logits(model, &window).select(1, -1);
            assert_eq!(got.kind(), Kind::Float);
            worst = worst.max(max_abs_diff(&got, &want));
            seen = Some(all);
        }
    });
    worst
}

#[test]
fn the_kv_cache_decoder_equals_a_full_forward_at_every_position() {
    for positions in [Positions::Learned, Positions::Rope] {
        tch::manual_seed(2);
        let (_vs, model) = build(&tiny(positions), 13);
        // A prompt of 3, then one token at a time up to block_size.
        let mut chunks = vec![ids(&[&[1, 2, 3]])];
        chunks.extend((4..9).map(|i| ids(&[&[i]])));
        let diff = decode_against_full_forward(model.as_ref(), &chunks, 8);
        println!("{positions:?}: one token at a time: max diff {diff:e}");
        assert!(diff < 1e-5, "{positions:?}: {diff}");
        // Several tokens after a cache (the mask aligned to the bottom right).
        let chunks = [ids(&[&[5, 6]]), ids(&[&[7, 1, 2]]), ids(&[&[3, 4]])];
        let diff = decode_against_full_forward(model.as_ref(), &chunks, 8);
        println!("{positions:?}: chunks after a cache: max diff {diff:e}");
        assert!(diff < 1e-5, "{positions:?}: {diff}");
    }
}

#[test]
fn decoding_past_block_size_crops_to_the_last_block_size_tokens() {
    for positions in [Positions::Learned, Positions::Rope] {
        tch::manual_seed(3);
        let (_vs, model) = build(&tiny(positions), 13);
        // BB2-04: a prompt of 6 with 20 more tokens (the 4th needs position 8), and a prompt of
        // 12, longer than the window.
        let mut chunks = vec![ids(&[&[1, 2, 3, 4, 5, 6]])];
        chunks.extend((0..20).map(|i| ids(&[&[i % 13]])));
        let diff = decode_against_full_forward(model.as_ref(), &chunks, 8);
        assert!(diff < 1e-5, "{positions:?}: {diff}");
        let mut chunks = vec![ids(&[&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])];
        chunks.extend((0..5).map(|i| ids(&[&[i]])));
        let diff = decode_against_full_forward(model.as_ref(), &chunks, 8);
        println!("{positions:?}: past block_size: max diff {diff:e}");
        assert!(diff < 1e-5, "{positions:?}: {diff}");
    }
}

#[test]
fn the_decoder_reads_a_batch_of_streams() {
    tch::manual_seed(4);
    let (_vs, model) = build(&tiny(Positions::Learned), 13);
    let prompt = ids(&[&[1, 2, 3], &[4, 5, 6]]);
    let next = ids(&[&[7], &[8]]);
    let mut decoder = model.decoder(2, Device::Cpu);
    let got = tch::no_grad(|| {
        let _prompt_logits = decoder.feed(&prompt).unwrap();
        decoder.feed(&next).unwrap()
    });
    let full = tch::no_grad(|| logits(model.as_ref(), &Tensor::cat(&[&prompt, &next], 1)));
    assert_eq!(got.size(), [2, 13]);
    assert!(max_abs_diff(&got, &full.select(1, -1)) < 1e-5);
}

#[test]
fn build_refuses_a_window_longer_than_block_size() {
    let vs = nn::VarStore::new(Device::Cpu);
    let err = tiny(Positions::Learned)
        .build(&vs.root(), &BuildContext::new(13).with_seq_len(9))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("block_size = 8") && err.contains("seq_len = 9"),
        "{err}"
    );
    // Equal is fine.
    tiny(Positions::Learned)
        .build(&vs.root(), &BuildContext::new(13).with_seq_len(8))
        .unwrap();
}

#[test]
fn forward_refuses_an_input_longer_than_block_size() {
    let (_vs, model) = build(&tiny(Positions::Learned), 13);
    let x = Tensor::zeros([1, 9], (Kind::Int64, Device::Cpu));
    let err = model
        .forward(&x, &HiddenState::none(), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("block_size = 8") && err.contains("[1, 9]"),
        "{err}"
    );
}

/// Standard deviation of the variable `name`.
fn std_of(vs: &nn::VarStore, name: &str) -> f64 {
    vs.variables()[name].std(true).double_value(&[])
}

#[test]
fn initialisation_is_gpt2s() {
    tch::manual_seed(5);
    let config = TransformerLmConfig {
        n_layer: 6,
        n_head: 4,
        n_embd: 256,
        block_size: 128,
        bias: true,
        tie_weights: false,
        ..Default::default()
    };
    let (vs, _model) = build(&config, 1000);
    let residual = 0.02 / (12f64).sqrt();
    let close = |name: &str, want: f64| {
        let got = std_of(&vs, name);
        assert!(
            (got / want - 1.0).abs() < 0.03,
            "{name}: std {got}, want {want}"
        );
        let mean = vs.variables()[name].mean(Kind::Double).double_value(&[]);
        assert!(mean.abs() < want / 10.0, "{name}: mean {mean}");
    };
    for name in ["wte.weight", "wpe.weight", "head.weight"] {
        close(name, 0.02);
    }
    for i in 0..6 {
        close(&format!("blocks.{i}.qkv.weight"), 0.02);
        close(&format!("blocks.{i}.fc.weight"), 0.02);
        close(&format!("blocks.{i}.proj.weight"), residual);
        close(&format!("blocks.{i}.fc_proj.weight"), residual);
    }
    for (name, t) in vs.variables() {
        if name.ends_with(".bias") {
            assert_eq!(t.abs().max().double_value(&[]), 0.0, "{name}");
        }
        if name.contains("ln") && name.ends_with(".weight") {
            assert!(t.eq(1.0).all().int64_value(&[]) == 1, "{name}");
        }
    }
}

#[test]
fn a_tied_head_is_the_embedding_and_gets_the_gradient_of_both_uses() {
    let config = tiny(Positions::Learned);
    tch::manual_seed(6);
    let (tied_vs, tied) = build(&config, 13);
    let untied_config = TransformerLmConfig {
        tie_weights: false,
        ..config.clone()
    };
    let (untied_vs, untied) = build(&untied_config, 13);
    // BB2-06: one matrix fewer (vocab × n_embd).
    let count = |vs: &nn::VarStore| -> i64 {
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    };
    assert_eq!(count(&tied_vs), count(&untied_vs) - 13 * 16);
    // The untied model with the tied one's numbers, and its head a copy of the embedding.
    tch::no_grad(|| {
        let t = tied_vs.variables();
        for (name, mut var) in untied_vs.variables() {
            let source = if name == "head.weight" {
                "wte.weight"
            } else {
                name.as_str()
            };
            var.copy_(&t[source]);
        }
    });
    let x = ids(&[&[1, 2, 3, 4, 5, 6, 7, 8]]);
    let loss = |model: &dyn LanguageModel| {
        let out = model.forward(&x, &HiddenState::none(), true).unwrap();
        assert!(out.head.bias.is_none());
        let loss = out
            .logits()
            .view([-1, 13])
            .cross_entropy_for_logits(&x.view([-1]));
        loss.backward();
        out
    };
    let out = loss(tied.as_ref());
    let wte = &tied_vs.variables()["wte.weight"];
    assert_eq!(out.head.weight.data_ptr(), wte.data_ptr(), "same storage");
    loss(untied.as_ref());
    let u = untied_vs.variables();
    let both = u["wte.weight"].grad() + u["head.weight"].grad();
    assert!(u["wte.weight"].grad().abs().max().double_value(&[]) > 0.0);
    assert!(max_abs_diff(&wte.grad(), &both) < 1e-6);
    // An in-place change of the embedding is the head's.
    tch::no_grad(|| {
        let _ = wte.get(0).get(0).fill_(1.0);
    });
    assert_eq!(out.head.weight.double_value(&[0, 0]), 1.0);
}

#[test]
fn a_checkpoint_round_trips_and_stays_tied() {
    let dir = std::env::temp_dir().join(format!("perplex-model-gpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("model.safetensors");
    tch::manual_seed(7);
    let (vs, model) = build(&tiny(Positions::Learned), 13);
    vs.save(&file).unwrap();
    let saved = Tensor::read_safetensors(&file).unwrap();
    assert!(
        saved.iter().all(|(n, _)| n != "head.weight"),
        "one tensor for a tied pair"
    );
    tch::manual_seed(8);
    let (mut other_vs, other) = build(&tiny(Positions::Learned), 13);
    other_vs.load(&file).unwrap();
    let x = ids(&[&[1, 2, 3, 4]]);
    let (a, b) = tch::no_grad(|| (logits(model.as_ref(), &x), logits(other.as_ref(), &x)));
    assert!(a.equal(&b));
    let head = other
        .forward(&x, &HiddenState::none(), false)
        .unwrap()
        .head
        .weight;
    assert_eq!(
        head.data_ptr(),
        other_vs.variables()["wte.weight"].data_ptr()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dropout_acts_only_in_training() {
    let config = TransformerLmConfig {
        dropout: 0.5,
        ..tiny(Positions::Learned)
    };
    let (_vs, model) = build(&config, 13);
    let x = ids(&[&[1, 2, 3, 4, 5]]);
    let run = |train| {
        model
            .forward(&x, &HiddenState::none(), train)
            .unwrap()
            .hidden
    };
    assert!(run(false).equal(&run(false)));
    assert!(!run(true).equal(&run(true)));
}
