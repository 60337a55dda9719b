//! perplex against transformers itself, on tiny random models saved with `save_pretrained`
//! (`tests/hf/make_fixtures.py`): GPT-2; Llama with GQA, untied, `llama3` rope scaling and an
//! explicit `head_dim` (in transformers 5's `rope_parameters` spelling and the older
//! `rope_theta` + `rope_scaling` one); its multi-head twin; Llama with one key/value head, tied,
//! MLP biases and `rms_norm_eps` 1e-2; Qwen2 (q/k/v biases, tied, padded vocabulary); Mistral;
//! a sharded checkpoint; one stored in bf16.
//!
//! Per model: logits equal transformers' (float32, 1e-5 scaled by the logits' size); one
//! training step gives the same loss, gradients and AdamW update; greedy decoding with the KV
//! cache gives `generate(do_sample=False)`'s ids; an exported directory reloads in transformers
//! with no missing or unexpected keys and the same logits and ids; import -> export -> import
//! is the identity on every tensor. Traps of the project's pitfalls list (part 2, items 1-6) are
//! tests below.
mod hf;

use std::path::{Path, PathBuf};

use perplex_model::hf::{self as hfm, HfFormat};
use perplex_model::{BuildContext, LanguageModel, ModelConfig};
use perplex_optim::{AdamWConfig, OptimizerConfig};
use tch::{nn, Device, Kind, Tensor};

use hf::{fixtures, max_diff, run_script, Expected};

/// The tokenizer of every fixture has 320 tokens (Qwen2's embedding has 336 rows).
const TOKENS: i64 = 320;

struct Loaded {
    vs: nn::VarStore,
    model: Box<dyn LanguageModel>,
    config: Box<dyn ModelConfig>,
    format: Box<dyn HfFormat>,
    report: hfm::LoadReport,
}

fn load(dir: &Path) -> Result<Loaded, perplex_model::ModelError> {
    let config = hfm::resolve(dir, None)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = config.build(&vs.root(), &BuildContext::new(TOKENS))?;
    let format = config
        .hf_format()
        .expect("a transformers model has a format");
    let report = hfm::load_weights(&vs, format.as_ref(), dir)?;
    Ok(Loaded {
        vs,
        model,
        config,
        format,
        report,
    })
}

fn logits(model: &dyn LanguageModel, ids: &Tensor) -> Tensor {
    tch::no_grad(|| {
        model
            .forward(ids, &model.initial_state(ids.size()[0], Device::Cpu), false)
            .unwrap()
            .logits()
    })
}

/// Logits agree to 1e-5 relative to their scale (transformers' and perplex's kernels differ in
/// summation order; the fixtures' logits reach about 10).
fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor) {
    let scale = theirs.abs().max().double_value(&[]).max(1.0);
    let d = max_diff(ours, theirs);
    assert!(
        d <= 1e-5 * scale,
        "{what}: max |diff| {d:e} (scale {scale})"
    );
}

fn greedy(model: &dyn LanguageModel, prompt: &[i64], new: usize) -> Vec<i64> {
    let mut ids = prompt.to_vec();
    let mut decoder = model.decoder(1, Device::Cpu);
    let mut next = Tensor::from_slice(prompt).view([1, -1]);
    tch::no_grad(|| {
        for _ in 0..new {
            let l = decoder.feed(&next).unwrap();
            let id = l.argmax(-1, false).int64_value(&[0]);
            ids.push(id);
            next = Tensor::from_slice(&[id]).view([1, 1]);
        }
    });
    ids
}

/// The whole golden check of one fixture.
fn golden(name: &str) {
    let dir = fixtures().join(name);
    let exp = Expected::load(name);
    let m = load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let ids = exp.tensor("input_ids");

    // Logits.
    assert_close(
        &format!("{name} logits"),
        &logits(m.model.as_ref(), &ids),
        &exp.tensor("logits"),
    );
    if let Some(long) = exp.get("long_input_ids") {
        assert_close(
            &format!("{name} logits at positions 0..200"),
            &logits(m.model.as_ref(), &long),
            &exp.tensor("long_logits"),
        );
    }

    // Greedy decoding with the KV cache.
    let want = exp.ids("greedy_ids");
    assert_eq!(
        greedy(m.model.as_ref(), &want[..6], want.len() - 6),
        want,
        "{name} greedy ids"
    );

    // Export, and transformers reads it back.
    let out = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let exported = out.path().join(name);
    std::fs::create_dir(&exported).unwrap();
    hfm::write_model(&m.vs, m.format.as_ref(), m.model.vocab_size(), &exported).unwrap();
    let input = out.path().join("input.safetensors");
    Tensor::write_safetensors(&[("input_ids", &ids)], &input).unwrap();
    let their_logits = out.path().join("logits.safetensors");
    let report: serde_json::Value = serde_json::from_str(
        run_script(
            "check_export.py",
            &[
                exported.as_os_str(),
                input.as_os_str(),
                their_logits.as_os_str(),
            ],
        )
        .trim(),
    )
    .unwrap();
    for key in [
        "missing_keys",
        "unexpected_keys",
        "mismatched_keys",
        "error_msgs",
    ] {
        assert_eq!(
            report[key],
            serde_json::json!([]),
            "{name} export: {key}: {report}"
        );
    }
    assert_eq!(report["tied"], exp.json["tied"], "{name} export tied");
    let reread = Tensor::read_safetensors(&their_logits).unwrap();
    assert_close(
        &format!("{name} exported logits in transformers"),
        &reread[0].1,
        &exp.tensor("logits"),
    );
    let ids_back: Vec<i64> = report["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(ids_back, want, "{name} exported greedy ids");

    // import -> export -> import is the identity on every tensor.
    let again = load(&exported).unwrap();
    let before = m.vs.variables();
    let after = again.vs.variables();
    assert_eq!(before.len(), after.len());
    for (k, v) in &before {
        assert!(v.equal(&after[k]), "{name}: `{k}` changed through export");
    }

    // One training step: loss, gradients and the AdamW update.
    let (b, l) = ids.size2().unwrap();
    let out = m
        .model
        .forward(&ids, &m.model.initial_state(b, Device::Cpu), true)
        .unwrap();
    let logits = out.logits();
    let loss = logits
        .narrow(1, 0, l - 1)
        .reshape([-1, logits.size()[2]])
        .cross_entropy_for_logits(&ids.narrow(1, 1, l - 1).reshape([-1]));
    let want_loss = exp.json["loss"].as_f64().unwrap();
    assert!(
        (loss.double_value(&[]) - want_loss).abs() < 1e-5,
        "{name} loss {} vs {want_loss}",
        loss.double_value(&[])
    );
    loss.backward();
    let mut params: Vec<(String, Tensor)> = m.vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let hf_of = |k: &str| {
        let t = m.format.hf_tensor(k).unwrap();
        (t.name, t.transposed)
    };
    for (k, v) in &params {
        let (hf_name, transposed) = hf_of(k);
        let mut g = exp.tensor(&format!("grad.{hf_name}"));
        if transposed {
            g = g.tr();
        }
        let scale = g.abs().max().double_value(&[]).max(1e-3);
        let d = max_diff(&v.grad(), &g);
        assert!(
            d <= 1e-5 * scale.max(1.0),
            "{name} grad of {hf_name}: {d:e} (scale {scale})"
        );
    }
    let config = AdamWConfig {
        lr: 1e-2,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt = config
        .build(
            params
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect(),
        )
        .unwrap();
    opt.step().unwrap();
    // Adam's first step moves each element by about lr · g / (|g| + eps): where the gradient is
    // at rounding level (a key bias's gradient is zero in exact arithmetic) the direction is
    // rounding noise on both sides. Elements with |g| >= 1e-5 (1000 eps) are compared to 1e-5;
    // the others only within one step (2 lr).
    for (k, v) in &params {
        let (hf_name, transposed) = hf_of(k);
        let (mut p, mut g) = (
            exp.tensor(&format!("after.{hf_name}")),
            exp.tensor(&format!("grad.{hf_name}")),
        );
        if transposed {
            p = p.tr();
            g = g.tr();
        }
        let diff = (v - &p).abs();
        let conditioned = g.abs().ge(1e-5);
        let d = diff.masked_select(&conditioned).max().double_value(&[]);
        assert!(d <= 1e-5, "{name} after AdamW, {hf_name}: {d:e}");
        let all = diff.max().double_value(&[]);
        assert!(all <= 2.0 * 1e-2, "{name} after AdamW, {hf_name}: {all:e}");
    }
    let _ = m.config;
}

#[test]
fn gpt2_matches_transformers() {
    golden("gpt2");
}

#[test]
fn llama_gqa_llama3_rope_head_dim_matches_transformers() {
    golden("llama_gqa");
}

/// pitfalls part 2 item 2: the older `rope_theta` + `rope_scaling` spelling.
#[test]
fn llama_gqa_in_the_legacy_rope_spelling_matches_transformers() {
    golden("llama_gqa_legacy");
}

/// pitfalls part 2 item 1: the multi-head twin of the GQA model.
#[test]
fn llama_mha_matches_transformers() {
    golden("llama_mha");
}

#[test]
fn llama_multi_query_tied_with_mlp_bias_and_large_eps_matches_transformers() {
    golden("llama_mqa_tied");
}

/// pitfalls part 2 items 3, 4: tied, q/k/v biases, a padded vocabulary.
#[test]
fn qwen2_matches_transformers() {
    golden("qwen2");
}

#[test]
fn mistral_matches_transformers() {
    golden("mistral");
}

/// pitfalls part 2 item 5.
#[test]
fn sharded_checkpoint_matches_transformers() {
    golden("llama_sharded");
}

/// pitfalls part 2 item 6: bf16 storage, float32 compute.
#[test]
fn bf16_checkpoint_loads_as_float32_and_matches_transformers() {
    golden("llama_bf16");
    let m = load(&fixtures().join("llama_bf16")).unwrap();
    assert!(
        m.report.converted.contains_key("BFloat16"),
        "{:?}",
        m.report
    );
    assert!(m.vs.variables().values().all(|t| t.kind() == Kind::Float));
}

/// A copy of fixture `name` to break.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dst = tmp.path().join(name);
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    (tmp, dst)
}

fn load_err(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites `model.safetensors` of `dir` through `edit`.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let file = dir.join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&file).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &file).unwrap();
}

/// pitfalls part 2 item 3: an untied model whose head is deleted fails, naming the key.
#[test]
fn an_untied_checkpoint_without_its_head_is_refused_by_name() {
    let (_tmp, dir) = copy_fixture("llama_gqa");
    edit_weights(&dir, |t| t.retain(|(k, _)| k != "lm_head.weight"));
    let e = load_err(&dir);
    assert!(e.contains("lacks tensor `lm_head.weight`"), "{e}");
}

#[test]
fn a_tensor_the_model_does_not_have_is_refused_by_name() {
    let (_tmp, dir) = copy_fixture("llama_mha");
    edit_weights(&dir, |t| {
        t.push((
            "model.layers.7.mlp.up_proj.weight".into(),
            Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
        ))
    });
    let e = load_err(&dir);
    assert!(e.contains("`model.layers.7.mlp.up_proj.weight`"), "{e}");
}

#[test]
fn a_tensor_of_another_shape_is_refused_by_name() {
    let (_tmp, dir) = copy_fixture("gpt2");
    edit_weights(&dir, |t| {
        for (k, v) in t.iter_mut() {
            if k == "transformer.h.1.mlp.c_fc.weight" {
                *v = v.tr().contiguous(); // stored [out, in] instead of Conv1D's [in, out]
            }
        }
    });
    let e = load_err(&dir);
    assert!(
        e.contains("`transformer.h.1.mlp.c_fc.weight` has shape [128, 32]"),
        "{e}"
    );
}

/// GPT-2's keys come with and without the `transformer.` prefix; the `attn.bias` /
/// `attn.masked_bias` buffers of older checkpoints are skipped.
#[test]
fn gpt2_keys_without_prefix_and_with_attention_buffers_load_the_same() {
    let (_tmp, dir) = copy_fixture("gpt2");
    edit_weights(&dir, |t| {
        for (k, _) in t.iter_mut() {
            if let Some(rest) = k.strip_prefix("transformer.") {
                *k = rest.to_string();
            }
        }
        let mask = Tensor::ones([1, 1, 64, 64], (Kind::Float, Device::Cpu)).tril(0);
        t.push(("h.0.attn.bias".into(), mask));
        t.push(("h.0.attn.masked_bias".into(), Tensor::from(-1e4f32)));
    });
    let stripped = load(&dir).unwrap();
    assert_eq!(stripped.report.skipped.len(), 2, "{:?}", stripped.report);
    let original = load(&fixtures().join("gpt2")).unwrap();
    let exp = Expected::load("gpt2");
    let ids = exp.tensor("input_ids");
    assert!(logits(stripped.model.as_ref(), &ids).equal(&logits(original.model.as_ref(), &ids)));
}

/// pitfalls part 2 item 5: the index is authoritative.
#[test]
fn sharded_checkpoints_are_read_through_their_index_only() {
    // A missing shard fails before any parameter is touched, naming the file.
    let (_tmp, dir) = copy_fixture("llama_sharded");
    let shard = "model-00002-of-00006.safetensors";
    std::fs::remove_file(dir.join(shard)).unwrap();
    let e = load_err(&dir);
    assert!(e.contains(shard) && e.contains("not found"), "{e}");

    // An extra unindexed file with zeroed weights changes nothing.
    let (_tmp2, dir) = copy_fixture("llama_sharded");
    let zeros: Vec<(String, Tensor)> = Tensor::read_safetensors(dir.join(shard))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.zeros_like()))
        .collect();
    Tensor::write_safetensors(&zeros, dir.join("model-extra.safetensors")).unwrap();
    let exp = Expected::load("llama_sharded");
    let m = load(&dir).unwrap();
    assert_close(
        "with a stray file",
        &logits(m.model.as_ref(), &exp.tensor("input_ids")),
        &exp.tensor("logits"),
    );

    // An index entry pointing at a shard without that tensor is an error.
    let (_tmp3, dir) = copy_fixture("llama_sharded");
    let index = dir.join("model.safetensors.index.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    let map = json["weight_map"].as_object_mut().unwrap();
    let (name, file) = map
        .iter()
        .find(|(_, f)| f.as_str() != Some(shard))
        .map(|(k, f)| (k.clone(), f.as_str().unwrap().to_string()))
        .unwrap();
    map.insert(name.clone(), serde_json::json!(shard));
    std::fs::write(&index, json.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains(&format!("`{name}`")) && e.contains(shard),
        "{e} (was in {file})"
    );
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(json.as_object_mut().unwrap());
    std::fs::write(&path, json.to_string()).unwrap();
}

type ConfigEdit = Box<dyn FnOnce(&mut serde_json::Map<String, serde_json::Value>)>;

/// Every config.json key that changes the computation is honoured or refused by name.
#[test]
fn config_keys_perplex_cannot_honour_are_refused_by_name() {
    let cases: Vec<(&str, ConfigEdit, &str)> = vec![
        (
            "llama_mha",
            Box::new(|c| {
                c.insert(
                    "architectures".into(),
                    serde_json::json!(["FalconForCausalLM"]),
                );
            }),
            "architecture `FalconForCausalLM` is not supported",
        ),
        (
            "llama_mha",
            Box::new(|c| {
                c.insert("frobnicate".into(), serde_json::json!(3));
            }),
            "key `frobnicate` is not known",
        ),
        (
            "llama_mha",
            Box::new(|c| {
                c.insert("hidden_act".into(), serde_json::json!("gelu"));
            }),
            "hidden_act = \"gelu\"",
        ),
        (
            "llama_mha",
            Box::new(|c| {
                c.insert("pretraining_tp".into(), serde_json::json!(2));
            }),
            "pretraining_tp = 2",
        ),
        (
            "mistral",
            Box::new(|c| {
                c.insert("sliding_window".into(), serde_json::json!(16));
            }),
            "sliding_window = 16",
        ),
        (
            "qwen2",
            Box::new(|c| {
                c.insert("use_sliding_window".into(), serde_json::json!(true));
            }),
            "use_sliding_window = true",
        ),
        (
            "llama_gqa",
            Box::new(|c| {
                c["rope_parameters"]["rope_type"] = serde_json::json!("yarn");
            }),
            "rope_parameters.rope_type = \"yarn\"",
        ),
        (
            "gpt2",
            Box::new(|c| {
                c.insert(
                    "scale_attn_by_inverse_layer_idx".into(),
                    serde_json::json!(true),
                );
            }),
            "scale_attn_by_inverse_layer_idx = true",
        ),
        (
            "gpt2",
            Box::new(|c| {
                c.insert("activation_function".into(), serde_json::json!("relu"));
            }),
            "activation_function = \"relu\"",
        ),
    ];
    for (name, edit, want) in cases {
        let (_tmp, dir) = copy_fixture(name);
        edit_config(&dir, edit);
        let e = load_err(&dir);
        assert!(
            e.contains(want) && e.contains("config.json"),
            "{name}: {e}\nwanted: {want}"
        );
    }
}

/// pitfalls part 2 item 3: a tied model stays tied through a training step (one tensor), and
/// its export writes no head.
#[test]
fn a_tied_model_keeps_one_tensor_for_embedding_and_head() {
    let m = load(&fixtures().join("qwen2")).unwrap();
    assert!(!m.vs.variables().contains_key("lm_head.weight"));
    let exp = Expected::load("qwen2");
    let out = m
        .model
        .forward(
            &exp.tensor("input_ids"),
            &m.model.initial_state(2, Device::Cpu),
            true,
        )
        .unwrap();
    let embed = &m.vs.variables()["model.embed_tokens.weight"];
    assert_eq!(out.head.weight.data_ptr(), embed.data_ptr());
    assert_eq!(m.model.vocab_size(), 336, "Qwen2's padded embedding");
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    hfm::write_model(&m.vs, m.format.as_ref(), m.model.vocab_size(), tmp.path()).unwrap();
    let written = Tensor::read_safetensors(tmp.path().join("model.safetensors")).unwrap();
    assert!(written.iter().all(|(k, _)| k != "lm_head.weight"));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["architectures"][0], "Qwen2ForCausalLM");
}

/// A perplex Transformer and a Llama trained from scratch export too (not only imported ones):
/// a GPT without biases exports zero biases, which transformers reads with the same logits.
#[test]
fn models_made_in_perplex_export_to_transformers() {
    for config in [
        Box::new(perplex_model::TransformerLmConfig {
            n_layer: 2,
            n_embd: 32,
            block_size: 32,
            ..Default::default()
        }) as Box<dyn ModelConfig>,
        Box::new(perplex_model::LlamaLmConfig {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_key_value_heads: Some(2),
            max_position_embeddings: 32,
            tie_word_embeddings: true,
            ..Default::default()
        }),
    ] {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = config
            .build(&vs.root(), &BuildContext::new(TOKENS))
            .unwrap();
        let format = config.hf_format().unwrap();
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let dir = tmp.path().join("model");
        std::fs::create_dir(&dir).unwrap();
        hfm::write_model(&vs, format.as_ref(), TOKENS, &dir).unwrap();
        let ids = Tensor::randint(TOKENS, [2, 12], (Kind::Int64, Device::Cpu));
        let input = tmp.path().join("input.safetensors");
        Tensor::write_safetensors(&[("input_ids", &ids)], &input).unwrap();
        let out = tmp.path().join("logits.safetensors");
        let report: serde_json::Value = serde_json::from_str(
            run_script(
                "check_export.py",
                &[dir.as_os_str(), input.as_os_str(), out.as_os_str()],
            )
            .trim(),
        )
        .unwrap();
        for key in [
            "missing_keys",
            "unexpected_keys",
            "mismatched_keys",
            "error_msgs",
        ] {
            assert_eq!(
                report[key],
                serde_json::json!([]),
                "{config:?}: {key}: {report}"
            );
        }
        let theirs = &Tensor::read_safetensors(&out).unwrap()[0].1;
        assert_close(
            &format!("{config:?}"),
            &logits(model.as_ref(), &ids),
            theirs,
        );
    }
}

/// A truncated weights file and a safetensors header that is not one are errors naming the
/// file, never a panic or a read past the mapping.
#[test]
fn a_damaged_weights_file_is_refused_naming_it() {
    let (_tmp, dir) = copy_fixture("llama_mha");
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 1000]).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::write(&file, b"not a safetensors file at all").unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("not a safetensors file"),
        "{e}"
    );
    std::fs::remove_file(&file).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("no model.safetensors or model.safetensors.index.json"),
        "{e}"
    );
}

/// SmolLM's config keys (nanotron's `is_llama_config`, `rope_interleaved = false`) describe a
/// plain Llama and load; interleaved rotary pairs are refused by name.
#[test]
fn smollm_config_keys_are_honoured() {
    let (_tmp, dir) = copy_fixture("llama_mha");
    edit_config(&dir, |c| {
        c.insert("is_llama_config".into(), serde_json::json!(true));
        c.insert("rope_interleaved".into(), serde_json::json!(false));
    });
    let exp = Expected::load("llama_mha");
    let m = load(&dir).unwrap();
    assert_close(
        "SmolLM keys",
        &logits(m.model.as_ref(), &exp.tensor("input_ids")),
        &exp.tensor("logits"),
    );
    edit_config(&dir, |c| {
        c.insert("rope_interleaved".into(), serde_json::json!(true));
    });
    let e = load_err(&dir);
    assert!(e.contains("rope_interleaved = true"), "{e}");
}
