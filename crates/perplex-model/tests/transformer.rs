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

/// BB2-02 (causal masking): the Transformer takes no padding mask, so `is_causal` is the only
/// mask and causality must be exact: changing token `t` leaves every logit before `t` bitwise
/// equal on the CPU, with learned and rotary positions.
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

/// BB2-05 (cached decoding positions), with chunks of several tokens after a cache.
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

/// BB2-04 (generation past `block_size`) and BB2-05 after the crop: logits of every step equal
/// a full forward of the last `block_size` tokens.
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

/// BB2-06 (weight tying): the tied model has `vocab × n_embd` fewer parameters, its head is the
/// embedding's storage, gets both uses' gradients, and sees an in-place edit of the embedding.
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

/// BB2-06: a checkpoint stores one tensor for the tied pair, and after a load the head is still
/// the embedding's storage.
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

/// The pitfalls' `tiny.toml` model: 65 characters, 2 layers, 2 heads, width 32, bias, tied.
fn pitfall_tiny(positions: Positions, block_size: i64) -> TransformerLmConfig {
    TransformerLmConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        block_size,
        bias: true,
        positions,
        ..Default::default()
    }
}

/// A model of `config` over 65 ids after `steps` Adam steps on windows of a stream that repeats
/// 23 random ids (its logits are then peaked, as a trained model's, so greedy choices are not
/// near ties, and its greedy continuation is not constant).
fn trained(config: &TransformerLmConfig, steps: usize) -> (nn::VarStore, Box<dyn LanguageModel>) {
    use tch::nn::OptimizerConfig;
    tch::manual_seed(11);
    let (vs, model) = build(config, 65);
    let stream = Tensor::randint(65, [23], (Kind::Int64, Device::Cpu)).repeat([18]);
    let mut opt = nn::Adam::default().build(&vs, 3e-3).unwrap();
    let len = config.block_size;
    for step in 0..steps as i64 {
        let starts: Vec<i64> = (0..8)
            .map(|i| (step * 37 + i * 41) % (414 - len - 1))
            .collect();
        let window = |offset: i64| {
            Tensor::stack(
                &starts
                    .iter()
                    .map(|&s| stream.narrow(0, s + offset, len))
                    .collect::<Vec<_>>(),
                0,
            )
        };
        let (input, targets) = (window(0), window(1));
        let loss = logits(model.as_ref(), &input)
            .view([-1, 65])
            .cross_entropy_for_logits(&targets.view([-1]));
        opt.backward_step(&loss);
    }
    (vs, model)
}

/// BB2-02 (a padding mask with `is_causal`): perplex's Transformer takes no padding mask, so
/// right padding is ordinary later tokens that causal attention never lets earlier positions
/// see. The pitfall's batch: row 1 right-padded with id 0; perturbing row 0 at position 5 and
/// row 1 at position 3 leaves the logits before them bitwise equal, and the real positions of
/// the padded row equal the row run alone without padding (≤ 1e-5), as does row 0 alone.
#[test]
fn bb2_02_right_padding_never_reaches_the_real_positions() {
    for positions in [Positions::Learned, Positions::Rope] {
        tch::manual_seed(21);
        let (_vs, model) = build(&pitfall_tiny(positions, 16), 65);
        let batch = ids(&[&[3, 1, 4, 1, 5, 9, 2, 6], &[2, 7, 1, 8, 2, 0, 0, 0]]);
        let perturbed = ids(&[&[3, 1, 4, 1, 5, 10, 2, 6], &[2, 7, 1, 11, 2, 0, 0, 0]]);
        let row1_alone = ids(&[&[2, 7, 1, 8, 2]]);
        let row0_alone = batch.narrow(0, 0, 1);
        let run = |x: &Tensor| tch::no_grad(|| logits(model.as_ref(), x));
        let (a, b) = (run(&batch), run(&perturbed));
        let (row0, row1) = (a.get(0), a.get(1));
        assert!(
            row0.narrow(0, 0, 5).equal(&b.get(0).narrow(0, 0, 5)),
            "{positions:?}: row 0 positions 0..4 saw position 5"
        );
        assert!(
            row1.narrow(0, 0, 3).equal(&b.get(1).narrow(0, 0, 3)),
            "{positions:?}: row 1 positions 0..2 saw position 3"
        );
        assert!(
            max_abs_diff(&row0.narrow(0, 5, 3), &b.get(0).narrow(0, 5, 3)) > 1e-4,
            "{positions:?}: the perturbation must reach position 5 on"
        );
        let padded_vs_alone = max_abs_diff(&row1.narrow(0, 0, 5), &run(&row1_alone).get(0));
        let batched_vs_alone = max_abs_diff(&row0, &run(&row0_alone).get(0));
        println!(
            "{positions:?}: padded row vs alone {padded_vs_alone:e}, batched row vs alone \
             {batched_vs_alone:e}"
        );
        assert!(padded_vs_alone <= 1e-5, "{positions:?}: {padded_vs_alone}");
        assert!(
            batched_vs_alone <= 1e-5,
            "{positions:?}: {batched_vs_alone}"
        );
    }
}

/// Whether every element of `t` is finite.
fn all_finite(t: &Tensor) -> bool {
    t.isfinite().all().int64_value(&[]) == 1
}

/// BB2-03 (fully masked rows turn into NaN): with causal attention alone every query sees at
/// least itself, so no softmax row is empty. One training step on the BB2-02 batch plus a row
/// with a single real token (padding targets ignored, `ignore_index` -100), and one on a batch
/// of one-token sequences, give a finite loss and finite gradients for every parameter; the
/// single real token's logits equal that token run alone.
#[test]
fn bb2_03_a_row_with_one_real_token_gives_finite_loss_and_gradients() {
    for positions in [Positions::Learned, Positions::Rope] {
        tch::manual_seed(22);
        let (vs, model) = build(&pitfall_tiny(positions, 16), 65);
        let input = ids(&[
            &[3, 1, 4, 1, 5, 9, 2, 6],
            &[2, 7, 1, 8, 2, 0, 0, 0],
            &[5, 0, 0, 0, 0, 0, 0, 0],
        ]);
        let targets = ids(&[
            &[1, 4, 1, 5, 9, 2, 6, 5],
            &[7, 1, 8, 2, -100, -100, -100, -100],
            &[-100, -100, -100, -100, -100, -100, -100, -100],
        ]);
        let one_token = ids(&[&[5], &[9], &[0]]);
        let one_token_targets = ids(&[&[1], &[2], &[3]]);
        for (x, y) in [(&input, &targets), (&one_token, &one_token_targets)] {
            let out = logits(model.as_ref(), x);
            let loss = out.view([-1, 65]).cross_entropy_loss::<Tensor>(
                &y.view([-1]),
                None,
                tch::Reduction::Mean,
                -100,
                0.0,
            );
            assert!(all_finite(&out), "{positions:?}: logits {:?}", x.size());
            assert!(all_finite(&loss), "{positions:?}: loss {loss:?}");
            for mut t in vs.trainable_variables() {
                t.zero_grad();
            }
            loss.backward();
            for (name, t) in vs.variables() {
                assert!(
                    t.grad().defined() && all_finite(&t.grad()),
                    "{positions:?}: gradient of {name}"
                );
            }
        }
        let alone = tch::no_grad(|| logits(model.as_ref(), &ids(&[&[5]])));
        let batched = tch::no_grad(|| logits(model.as_ref(), &input));
        assert!(max_abs_diff(&batched.get(2).narrow(0, 0, 1), &alone.get(0)) <= 1e-5);
    }
}

/// Greedy decoding of `new_tokens` after `prompt` (`[batch, n]`) with the key/value-cache
/// decoder and, as the reference, with an uncached full forward over the last
/// `min(len, block_size)` tokens at each step. Returns both id sequences (`[batch, new_tokens]`)
/// and the largest difference between the two logits over all steps.
fn greedy_cached_and_uncached(
    model: &dyn LanguageModel,
    prompt: &Tensor,
    new_tokens: usize,
    block_size: i64,
) -> (Tensor, Tensor, f64) {
    tch::no_grad(|| {
        let batch = prompt.size()[0];
        let mut decoder = model.decoder(batch, Device::Cpu);
        let mut cached_logits = decoder.feed(prompt).unwrap();
        let mut seen = prompt.shallow_clone();
        let (mut cached, mut uncached) = (Vec::new(), Vec::new());
        let mut worst: f64 = 0.0;
        for _ in 0..new_tokens {
            let len = seen.size()[1];
            let window = seen.narrow(1, (len - block_size).max(0), len.min(block_size));
            let full = logits(model, &window).select(1, -1);
            worst = worst.max(max_abs_diff(&cached_logits, &full));
            let next_cached = cached_logits.argmax(-1, true);
            uncached.push(full.argmax(-1, true));
            seen = Tensor::cat(&[&seen, &next_cached], 1);
            cached_logits = decoder.feed(&next_cached).unwrap();
            cached.push(next_cached);
        }
        (Tensor::cat(&cached, 1), Tensor::cat(&uncached, 1), worst)
    })
}

/// BB2-04 (generation past `block_size` with learned positions): `block_size = 8`, the prompt
/// `1..=6` and 20 greedy tokens (the 4th needs position 8). The cached decoder never indexes
/// the position table out of range; its ids equal the crop reference (an uncached forward of
/// the last `min(len, 8)` tokens, argmax) exactly. A 12-id prompt is read as its last 8 ids.
#[test]
fn bb2_04_greedy_decoding_past_block_size_equals_the_crop_reference() {
    for positions in [Positions::Learned, Positions::Rope] {
        let config = pitfall_tiny(positions, 8);
        let (_vs, model) = trained(&config, 20);
        let prompt = ids(&[&[1, 2, 3, 4, 5, 6]]);
        let (cached, uncached, diff) = greedy_cached_and_uncached(model.as_ref(), &prompt, 20, 8);
        println!("{positions:?}: 20 tokens past block_size 8: max logit diff {diff:e}");
        assert_eq!(cached.size(), [1, 20]);
        assert!(
            cached.equal(&uncached),
            "{positions:?}: {cached:?} vs {uncached:?}"
        );
        assert!(diff <= 1e-5, "{positions:?}: {diff}");

        let long: Vec<i64> = (1..=12).collect();
        let long = ids(&[&long]);
        let got = tch::no_grad(|| model.decoder(1, Device::Cpu).feed(&long).unwrap());
        let last8 = tch::no_grad(|| logits(model.as_ref(), &long.narrow(1, 4, 8)).select(1, -1));
        assert!(max_abs_diff(&got, &last8) <= 1e-5, "{positions:?}");
    }
}

/// BB2-05 (cached decoding uses the wrong positions): `tiny.toml` (block_size 16) after 50
/// steps, learned and rotary; the prompt `[18, 47, 56, 57, 58]` twice in one batch, then 30
/// greedy tokens with the cache (past block_size from the 12th). At every step the cached
/// logits equal the last-position logits of a full uncached forward (≤ 1e-5), the greedy ids
/// equal the uncached ones, and both rows of the batch agree.
#[test]
fn bb2_05_cached_decoding_equals_a_full_forward_at_every_step() {
    for positions in [Positions::Learned, Positions::Rope] {
        let config = pitfall_tiny(positions, 16);
        let (_vs, model) = trained(&config, 50);
        let prompt = ids(&[&[18, 47, 56, 57, 58], &[18, 47, 56, 57, 58]]);
        let (cached, uncached, diff) = greedy_cached_and_uncached(model.as_ref(), &prompt, 30, 16);
        println!("{positions:?}: 30 cached greedy steps: max logit diff {diff:e}");
        assert!(diff <= 1e-5, "{positions:?}: {diff}");
        assert!(
            cached.equal(&uncached),
            "{positions:?}: {cached:?} vs {uncached:?}"
        );
        assert!(
            cached.get(0).equal(&cached.get(1)),
            "{positions:?}: rows differ"
        );
        let distinct = Vec::<i64>::try_from(cached.get(0)).unwrap();
        assert!(
            distinct.iter().any(|&i| i != distinct[0]),
            "{positions:?}: a constant continuation would prove little"
        );
    }
}
