//! Hugging Face transformers checkpoints in and out.
//!
//! A transformers directory is what `save_pretrained` writes: `config.json`, the weights in one
//! `model.safetensors` or in shards listed by `model.safetensors.index.json`, and the tokenizer
//! files. [`resolve`] reads `config.json` into a perplex model config (`GPT2LMHeadModel` into a
//! [`TransformerLmConfig`]; `LlamaForCausalLM`, `Qwen2ForCausalLM` and `MistralForCausalLM`
//! without a sliding window into a [`LlamaLmConfig`]); every key that changes the computation is
//! honoured or refused by name. [`load_weights`] copies the checkpoint's tensors into a built
//! model's variables, memory-mapped one tensor at a time; [`save_weights`] and
//! [`HfFormat::config_json`] write them back in transformers' names and layouts.
//!
//! Known traps, handled here (each has a test in `perplex-trainer/tests/hf_golden.rs`): GPT-2's
//! `Conv1D` weights are stored `[in, out]` (transposed on the way in and out); its `c_attn` is
//! `q | k | v` along the output, as perplex's `qkv`; the `attn.bias` / `attn.masked_bias`
//! buffers and Llama's `rotary_emb.inv_freq` are skipped; keys come with or without the
//! `transformer.` / `model.` prefix; a tied model has no `lm_head.weight`; a sharded
//! checkpoint is read through its index only (a stray file is never read, a missing shard or a
//! tensor the index places in a file that lacks it is an error before any variable changes).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use serde_json::{json, Map, Value};
use tch::{nn, Kind, Tensor};

use crate::llama::RopeScaling;
use crate::transformer::Activation;
use crate::{LlamaLmConfig, ModelConfig, ModelError, Positions, TransformerLmConfig};

/// The config file of a transformers directory.
pub const CONFIG: &str = "config.json";
/// The weights of an unsharded checkpoint.
pub const WEIGHTS: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const INDEX: &str = "model.safetensors.index.json";

/// Whether `dir` looks like a transformers directory (it has a `config.json`).
pub fn is_hf_dir(dir: &Path) -> bool {
    dir.join(CONFIG).is_file()
}

fn err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Pretrained {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Where a perplex variable lives in a transformers checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfTensor {
    /// transformers' name, with the model's prefix (`transformer.h.0.attn.c_attn.weight`).
    pub name: String,
    /// Stored transposed (GPT-2's `Conv1D`: `[in, out]`).
    pub transposed: bool,
}

/// A perplex model in transformers' format: names, layouts and `config.json`.
pub trait HfFormat: std::fmt::Debug {
    /// transformers' class (`GPT2LMHeadModel`, `LlamaForCausalLM`).
    fn architecture(&self) -> &'static str;
    /// The prefix of the base model's keys (`transformer.`, `model.`), which checkpoints of the
    /// base model alone lack.
    fn prefix(&self) -> &'static str;
    /// The transformers tensor of perplex's variable `name`; `None` for a name the format has no
    /// place for.
    fn hf_tensor(&self, name: &str) -> Option<HfTensor>;
    /// Checkpoint entries that are buffers, not weights (skipped on import).
    fn is_buffer(&self, hf_name: &str) -> bool;
    /// Whether the head is the token embedding (no `lm_head.weight`).
    fn tied(&self) -> bool;
    /// transformers' `config.json` for a model with `vocab_size` embedding rows.
    fn config_json(&self, vocab_size: i64) -> Value;
    /// Tensors the format needs that perplex's model lacks (GPT-2 always has biases: a perplex
    /// Transformer without them exports zeros), with their shapes.
    fn missing_from_model(&self) -> Vec<(String, Vec<i64>)> {
        Vec::new()
    }
    /// Whether the model can be written in this format at all.
    ///
    /// # Errors
    /// A message saying which key prevents it.
    fn exportable(&self) -> Result<(), String> {
        Ok(())
    }
}

/// perplex's [`TransformerLm`](crate::TransformerLm) as transformers' `GPT2LMHeadModel`.
#[derive(Debug, Clone)]
pub struct Gpt2Format(pub TransformerLmConfig);

/// perplex's [`LlamaLm`](crate::LlamaLm) as transformers' `LlamaForCausalLM`.
#[derive(Debug, Clone)]
pub struct LlamaFormat(pub LlamaLmConfig);

impl HfFormat for Gpt2Format {
    fn architecture(&self) -> &'static str {
        "GPT2LMHeadModel"
    }

    fn prefix(&self) -> &'static str {
        "transformer."
    }

    fn hf_tensor(&self, name: &str) -> Option<HfTensor> {
        let plain = |n: String| HfTensor {
            name: n,
            transposed: false,
        };
        match name {
            "wte.weight" | "wpe.weight" => return Some(plain(format!("transformer.{name}"))),
            "head.weight" => return Some(plain("lm_head.weight".into())),
            _ => {}
        }
        if let Some(rest) = name.strip_prefix("ln_f.") {
            return Some(plain(format!("transformer.ln_f.{rest}")));
        }
        let rest = name.strip_prefix("blocks.")?;
        let (layer, rest) = rest.split_once('.')?;
        let (module, param) = rest.split_once('.')?;
        let hf_module = match module {
            "ln1" => "ln_1",
            "ln2" => "ln_2",
            "qkv" => "attn.c_attn",
            "proj" => "attn.c_proj",
            "fc" => "mlp.c_fc",
            "fc_proj" => "mlp.c_proj",
            _ => return None,
        };
        Some(HfTensor {
            name: format!("transformer.h.{layer}.{hf_module}.{param}"),
            transposed: param == "weight" && !module.starts_with("ln"),
        })
    }

    fn is_buffer(&self, hf_name: &str) -> bool {
        hf_name.ends_with(".attn.bias") || hf_name.ends_with(".attn.masked_bias")
    }

    fn tied(&self) -> bool {
        self.0.tie_weights
    }

    fn config_json(&self, vocab_size: i64) -> Value {
        let c = &self.0;
        json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": vocab_size,
            "n_positions": c.block_size,
            "n_embd": c.n_embd,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_inner": c.n_inner,
            "activation_function": match c.activation {
                Activation::Gelu => "gelu",
                Activation::GeluNew => "gelu_new",
            },
            "resid_pdrop": c.dropout,
            "embd_pdrop": c.dropout,
            "attn_pdrop": c.dropout,
            "layer_norm_epsilon": c.layer_norm_epsilon,
            "initializer_range": 0.02,
            "scale_attn_weights": true,
            "scale_attn_by_inverse_layer_idx": false,
            "reorder_and_upcast_attn": false,
            "tie_word_embeddings": c.tie_weights,
            "use_cache": true,
        })
    }

    fn missing_from_model(&self) -> Vec<(String, Vec<i64>)> {
        let c = &self.0;
        if c.bias {
            return Vec::new();
        }
        let (e, inner) = (c.n_embd, c.n_inner.unwrap_or(4 * c.n_embd));
        let mut out = vec![("transformer.ln_f.bias".to_string(), vec![e])];
        for i in 0..c.n_layer {
            let h = format!("transformer.h.{i}");
            out.push((format!("{h}.ln_1.bias"), vec![e]));
            out.push((format!("{h}.attn.c_attn.bias"), vec![3 * e]));
            out.push((format!("{h}.attn.c_proj.bias"), vec![e]));
            out.push((format!("{h}.ln_2.bias"), vec![e]));
            out.push((format!("{h}.mlp.c_fc.bias"), vec![inner]));
            out.push((format!("{h}.mlp.c_proj.bias"), vec![e]));
        }
        out
    }

    fn exportable(&self) -> Result<(), String> {
        if self.0.positions == Positions::Rope {
            return Err(
                "model.positions = \"rope\": GPT-2 has learned positions only; a \
                        rotary model is a Llama (`type = \"llama\"`)"
                    .into(),
            );
        }
        Ok(())
    }
}

impl HfFormat for LlamaFormat {
    fn architecture(&self) -> &'static str {
        "LlamaForCausalLM"
    }

    fn prefix(&self) -> &'static str {
        "model."
    }

    fn hf_tensor(&self, name: &str) -> Option<HfTensor> {
        Some(HfTensor {
            name: name.to_string(),
            transposed: false,
        })
    }

    fn is_buffer(&self, hf_name: &str) -> bool {
        hf_name.ends_with("rotary_emb.inv_freq")
    }

    fn tied(&self) -> bool {
        self.0.tie_word_embeddings
    }

    fn config_json(&self, vocab_size: i64) -> Value {
        let c = &self.0;
        let mut rope = json!({"rope_type": "default", "rope_theta": c.rope_theta});
        if let Some(s) = &c.rope_scaling {
            rope = json!({
                "rope_type": "llama3",
                "rope_theta": c.rope_theta,
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        let o_bias = c.has_o_proj_bias();
        if c.attention_bias && !o_bias {
            // Qwen2's layout: q/k/v biases, none on o_proj.
            return json!({
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "vocab_size": vocab_size,
                "hidden_size": c.hidden_size,
                "intermediate_size": c.intermediate_size,
                "num_hidden_layers": c.num_hidden_layers,
                "num_attention_heads": c.num_attention_heads,
                "num_key_value_heads": c.kv_heads(),
                "head_dim": c.head_width(),
                "hidden_act": "silu",
                "max_position_embeddings": c.max_position_embeddings,
                "rms_norm_eps": c.rms_norm_eps,
                "rope_parameters": rope,
                "rope_theta": c.rope_theta,
                "attention_dropout": c.attention_dropout,
                "use_sliding_window": false,
                "sliding_window": null,
                "tie_word_embeddings": c.tie_word_embeddings,
                "initializer_range": c.initializer_range,
                "use_cache": true,
            });
        }
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.kv_heads(),
            "head_dim": c.head_width(),
            "hidden_act": "silu",
            "max_position_embeddings": c.max_position_embeddings,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_parameters": rope,
            "attention_bias": c.attention_bias,
            "attention_dropout": c.attention_dropout,
            "mlp_bias": c.mlp_bias,
            "pretraining_tp": 1,
            "tie_word_embeddings": c.tie_word_embeddings,
            "initializer_range": c.initializer_range,
            "use_cache": true,
        })
    }

    fn exportable(&self) -> Result<(), String> {
        if self.0.attention_bias != self.0.has_o_proj_bias() && !self.0.attention_bias {
            return Err("model.o_proj_bias = true without attention_bias: neither \
                        LlamaForCausalLM nor Qwen2ForCausalLM has that layout"
                .into());
        }
        Ok(())
    }
}

/// `config.json` keys that do not change what the model computes from ids (generation
/// defaults, bookkeeping, training-time options of transformers itself).
const NO_EFFECT: &[&str] = &[
    "_name_or_path",
    "architectures",
    "model_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "use_cache",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "initializer_range",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "is_decoder",
    "is_encoder_decoder",
    "add_cross_attention",
    "tie_encoder_decoder",
    "task_specific_params",
    "problem_type",
    "id2label",
    "label2id",
    "finetuning_task",
    "prefix",
    "chunk_size_feed_forward",
    "pruned_heads",
    "tokenizer_class",
    "max_length",
    "min_length",
    "num_beams",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "early_stopping",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "typical_p",
    "diversity_penalty",
    "num_beam_groups",
    "encoder_no_repeat_ngram_size",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "cross_attention_hidden_size",
    "_attn_implementation_autoset",
    "attn_implementation",
    "_attn_implementation",
    // nanotron's marker in SmolLM configs: a Llama (the architecture says so).
    "is_llama_config",
];

/// Reads `config.json` of a transformers directory into a perplex model config, with
/// `init_from` set to `dir` (made absolute) and, when given, the dropout of fine-tuning.
///
/// # Errors
/// [`ModelError::Pretrained`] naming the file and key: no `config.json`, an architecture other
/// than GPT-2, Llama, Qwen2 and Mistral, a key perplex does not know (it could change the
/// computation), or a value it does not implement (a sliding window, a rope type other than
/// `llama3`, `pretraining_tp` above 1, another activation).
pub fn resolve(dir: &Path, dropout: Option<f64>) -> Result<Box<dyn ModelConfig>, ModelError> {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let path = dir.join(CONFIG);
    if !dir.is_dir() {
        return Err(err(
            &dir,
            "no such directory (model.init_from must name a transformers directory, the \
             output of save_pretrained)",
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| {
        err(
            &path,
            if e.kind() == std::io::ErrorKind::NotFound {
                "file not found: a transformers directory has config.json beside its weights"
                    .to_string()
            } else {
                e.to_string()
            },
        )
    })?;
    let json: Map<String, Value> =
        serde_json::from_str(&text).map_err(|e| err(&path, format!("not a JSON object: {e}")))?;
    let reader = Keys {
        path: &path,
        json: &json,
        used: std::cell::RefCell::new(BTreeSet::new()),
    };
    let architecture = match json.get("architectures") {
        Some(Value::Array(a)) if a.len() == 1 => a[0].as_str().unwrap_or("").to_string(),
        Some(other) => {
            return Err(err(
                &path,
                format!("architectures = {other}: expected one architecture"),
            ))
        }
        None => match json.get("model_type").and_then(Value::as_str) {
            Some("gpt2") => "GPT2LMHeadModel".into(),
            Some("llama") => "LlamaForCausalLM".into(),
            Some("qwen2") => "Qwen2ForCausalLM".into(),
            Some("mistral") => "MistralForCausalLM".into(),
            _ => String::new(),
        },
    };
    let config: Box<dyn ModelConfig> = match architecture.as_str() {
        "GPT2LMHeadModel" => Box::new(gpt2_config(&reader, &dir, dropout)?),
        "LlamaForCausalLM" | "Qwen2ForCausalLM" | "MistralForCausalLM" => {
            Box::new(llama_config(&reader, &architecture, &dir, dropout)?)
        }
        other => {
            return Err(err(
                &path,
                format!(
                    "architecture `{other}` is not supported: perplex reads GPT2LMHeadModel, \
                     LlamaForCausalLM, Qwen2ForCausalLM and MistralForCausalLM"
                ),
            ))
        }
    };
    reader.check_all_used()?;
    Ok(config)
}

/// Reads keys of `config.json`, remembering which were read, so that any other key is refused.
struct Keys<'a> {
    path: &'a Path,
    json: &'a Map<String, Value>,
    used: std::cell::RefCell<BTreeSet<String>>,
}

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.used.borrow_mut().insert(key.to_string());
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn bad(&self, key: &str, expected: &str) -> ModelError {
        let value = self
            .json
            .get(key)
            .map_or("missing".into(), Value::to_string);
        err(self.path, format!("{key} = {value}: expected {expected}"))
    }

    fn int(&self, key: &str) -> Result<i64, ModelError> {
        self.get(key)
            .and_then(Value::as_i64)
            .ok_or_else(|| self.bad(key, "an integer"))
    }

    fn opt_int(&self, key: &str) -> Result<Option<i64>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "an integer")),
        }
    }

    fn float_or(&self, key: &str, default: f64) -> Result<f64, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.bad(key, "a number")),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.bad(key, "true or false")),
        }
    }

    fn str_or<'s>(&'s self, key: &str, default: &'s str) -> Result<&'s str, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.bad(key, "a string")),
        }
    }

    /// A key that must have `expected` (or be absent).
    fn require(
        &self,
        key: &str,
        ok: impl Fn(&Value) -> bool,
        expected: &str,
    ) -> Result<(), ModelError> {
        match self.get(key) {
            Some(v) if !ok(v) => Err(self.bad(key, expected)),
            _ => Ok(()),
        }
    }

    fn check_all_used(&self) -> Result<(), ModelError> {
        let used = self.used.borrow();
        let unknown: Vec<&String> = self
            .json
            .keys()
            .filter(|k| !used.contains(*k) && !NO_EFFECT.contains(&k.as_str()))
            .collect();
        if let Some(first) = unknown.first() {
            return Err(err(
                self.path,
                format!(
                    "key `{first}` is not known to perplex and could change what the model \
                     computes{}; remove it if it does not",
                    if unknown.len() > 1 {
                        format!(
                            " (also: {})",
                            unknown[1..]
                                .iter()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        Ok(())
    }
}

fn gpt2_config(
    keys: &Keys,
    dir: &Path,
    dropout: Option<f64>,
) -> Result<TransformerLmConfig, ModelError> {
    let n_embd = keys.int("n_embd")?;
    let activation = match keys.str_or("activation_function", "gelu_new")? {
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluNew,
        "gelu" => Activation::Gelu,
        _ => {
            return Err(keys.bad(
                "activation_function",
                "\"gelu_new\", \"gelu_pytorch_tanh\" or \"gelu\"",
            ))
        }
    };
    let pdrop: Vec<f64> = ["resid_pdrop", "embd_pdrop", "attn_pdrop"]
        .iter()
        .map(|k| keys.float_or(k, 0.1))
        .collect::<Result<_, _>>()?;
    let dropout = match dropout {
        Some(d) => d,
        None if pdrop.iter().all(|p| *p == pdrop[0]) => pdrop[0],
        None => {
            return Err(keys.bad(
                "attn_pdrop",
                "resid_pdrop, embd_pdrop and attn_pdrop equal (perplex has one dropout; set \
                 model.dropout to choose it)",
            ))
        }
    };
    keys.require("scale_attn_weights", |v| v == &Value::Bool(true), "true")?;
    keys.require(
        "scale_attn_by_inverse_layer_idx",
        |v| v == &Value::Bool(false),
        "false",
    )?;
    // Upcasting the attention scores changes rounding only (perplex computes them with SDPA).
    keys.get("reorder_and_upcast_attn");
    keys.require("add_cross_attention", |v| v == &Value::Bool(false), "false")?;
    // The summary head of GPT2DoubleHeadsModel: not part of GPT2LMHeadModel.
    for k in [
        "summary_type",
        "summary_use_proj",
        "summary_activation",
        "summary_proj_to_labels",
        "summary_first_dropout",
        "n_ctx",
    ] {
        keys.get(k);
    }
    let n_positions = keys.int("n_positions")?;
    Ok(TransformerLmConfig {
        n_layer: keys.int("n_layer")?,
        n_head: keys.int("n_head")?,
        n_embd,
        block_size: n_positions,
        dropout,
        bias: true,
        positions: Positions::Learned,
        tie_weights: keys.bool_or("tie_word_embeddings", true)?,
        activation,
        layer_norm_epsilon: keys.float_or("layer_norm_epsilon", 1e-5)?,
        n_inner: keys.opt_int("n_inner")?,
        vocab_size: Some(keys.int("vocab_size")?),
        init_from: Some(dir.to_path_buf()),
    })
}

fn llama_config(
    keys: &Keys,
    architecture: &str,
    dir: &Path,
    dropout: Option<f64>,
) -> Result<LlamaLmConfig, ModelError> {
    let qwen2 = architecture == "Qwen2ForCausalLM";
    keys.require("hidden_act", |v| v == "silu", "\"silu\"")?;
    keys.require(
        "pretraining_tp",
        |v| v.as_i64() == Some(1),
        "1 (tensor-parallel slicing of Llama 2's pretraining is not implemented)",
    )?;
    // A sliding window (Mistral v0.1, Qwen2 with use_sliding_window) is not implemented.
    if qwen2 {
        keys.require("use_sliding_window", |v| v == &Value::Bool(false), "false")?;
        keys.get("sliding_window");
        keys.get("max_window_layers");
    } else {
        keys.require(
            "sliding_window",
            |v| v.is_null(),
            "null (sliding-window attention is not implemented)",
        )?;
    }
    // SmolLM's spelling of the rotary layout: false is transformers' rotate_half.
    keys.require(
        "rope_interleaved",
        |v| v == &Value::Bool(false),
        "false (interleaved rotary pairs are not implemented; transformers' Llama pairs halves)",
    )?;
    keys.require(
        "layer_types",
        |v| {
            v.as_array()
                .is_some_and(|a| a.iter().all(|t| t == "full_attention"))
        },
        "every layer \"full_attention\"",
    )?;
    let (theta, scaling) = rope(keys)?;
    let attention_bias = if qwen2 {
        true
    } else {
        keys.bool_or("attention_bias", false)?
    };
    // Read either way: `model.dropout` replaces the value, the key is still known.
    let attention_dropout = keys.float_or("attention_dropout", 0.0)?;
    let attention_dropout = dropout.unwrap_or(attention_dropout);
    Ok(LlamaLmConfig {
        hidden_size: keys.int("hidden_size")?,
        intermediate_size: keys.int("intermediate_size")?,
        num_hidden_layers: keys.int("num_hidden_layers")?,
        num_attention_heads: keys.int("num_attention_heads")?,
        num_key_value_heads: keys.opt_int("num_key_value_heads")?,
        head_dim: keys.opt_int("head_dim")?,
        max_position_embeddings: keys.int("max_position_embeddings")?,
        rms_norm_eps: keys.float_or("rms_norm_eps", 1e-6)?,
        rope_theta: theta,
        rope_scaling: scaling,
        attention_bias,
        o_proj_bias: qwen2.then_some(false),
        mlp_bias: if qwen2 {
            false
        } else {
            keys.bool_or("mlp_bias", false)?
        },
        tie_word_embeddings: keys.bool_or("tie_word_embeddings", false)?,
        attention_dropout,
        initializer_range: keys.float_or("initializer_range", 0.02)?,
        vocab_size: Some(keys.int("vocab_size")?),
        init_from: Some(dir.to_path_buf()),
    })
}

/// The rotary base and scaling: transformers 5's `rope_parameters` (`rope_theta` inside), or
/// the older top-level `rope_theta` with `rope_scaling` (`rope_type`, or `type` before that).
fn rope(keys: &Keys) -> Result<(f64, Option<RopeScaling>), ModelError> {
    let top_theta = keys.float_or("rope_theta", 10_000.0)?;
    let (params, key) = match keys.get("rope_parameters") {
        Some(p) => (Some(p), "rope_parameters"),
        None => (keys.get("rope_scaling"), "rope_scaling"),
    };
    let Some(params) = params else {
        return Ok((top_theta, None));
    };
    let Some(p) = params.as_object() else {
        return Err(keys.bad(key, "an object"));
    };
    let bad = |field: &str, expected: &str| {
        err(
            keys.path,
            format!(
                "{key}.{field} = {}: expected {expected}",
                p.get(field).map_or("missing".into(), Value::to_string)
            ),
        )
    };
    let theta = match p.get("rope_theta") {
        Some(v) => v.as_f64().ok_or_else(|| bad("rope_theta", "a number"))?,
        None => top_theta,
    };
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let known: &[&str] = match kind {
        "default" => &["rope_type", "type", "rope_theta"],
        "llama3" => &[
            "rope_type",
            "type",
            "rope_theta",
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ],
        other => {
            return Err(err(
                keys.path,
                format!(
                    "{key}.rope_type = \"{other}\": perplex implements \"default\" and \
                     \"llama3\" rotary positions"
                ),
            ))
        }
    };
    if let Some(extra) = p.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(bad(extra, &format!("no such key for rope_type \"{kind}\"")));
    }
    if kind == "default" {
        return Ok((theta, None));
    }
    let num = |field: &str| {
        p.get(field)
            .and_then(Value::as_f64)
            .ok_or_else(|| bad(field, "a number"))
    };
    Ok((
        theta,
        Some(RopeScaling {
            rope_type: "llama3".into(),
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: p
                .get("original_max_position_embeddings")
                .and_then(Value::as_i64)
                .ok_or_else(|| bad("original_max_position_embeddings", "an integer"))?,
        }),
    ))
}

/// One memory-mapped safetensors file.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Where the data starts (after the 8-byte length and the header).
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

impl Shard {
    fn open(path: &Path) -> Result<Self, ModelError> {
        let file = File::open(path).map_err(|e| err(path, e.to_string()))?;
        // SAFETY: the file is only read; a concurrent writer could change the bytes under us,
        // as with any memory-mapped checkpoint (transformers and safetensors do the same).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| err(path, e.to_string()))?;
        let (header, metadata): (usize, Metadata) = safetensors::SafeTensors::read_metadata(&mmap)
            .map_err(|e| err(path, format!("not a safetensors file: {e:?}")))?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + header,
            tensors,
        })
    }
}

/// A transformers checkpoint: one file, or the shards its index names.
struct Checkpoint {
    shards: Vec<Shard>,
    /// Tensor name -> index into `shards`.
    place: BTreeMap<String, usize>,
}

impl Checkpoint {
    fn open(dir: &Path) -> Result<Self, ModelError> {
        let index = dir.join(INDEX);
        let single = dir.join(WEIGHTS);
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| err(&index, e.to_string()))?;
            let json: Value =
                serde_json::from_str(&text).map_err(|e| err(&index, format!("not JSON: {e}")))?;
            let Some(map) = json.get("weight_map").and_then(Value::as_object) else {
                return Err(err(&index, "no `weight_map` object"));
            };
            let mut files: Vec<String> = map
                .values()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        err(
                            &index,
                            format!("weight_map value {v}: expected a file name"),
                        )
                    })
                })
                .collect::<Result<BTreeSet<_>, _>>()?
                .into_iter()
                .collect();
            files.sort();
            // Every shard is checked before any is read.
            for f in &files {
                if f.contains('/') || f.contains("..") || !dir.join(f).is_file() {
                    return Err(err(
                        &dir.join(f),
                        format!("shard listed in {INDEX} not found"),
                    ));
                }
            }
            let shards: Vec<Shard> = files
                .iter()
                .map(|f| Shard::open(&dir.join(f)))
                .collect::<Result<_, _>>()?;
            let mut place = BTreeMap::new();
            for (name, file) in map {
                let i = files
                    .iter()
                    .position(|f| Some(f.as_str()) == file.as_str())
                    .expect("every file was collected");
                if !shards[i].tensors.contains_key(name) {
                    return Err(err(
                        &shards[i].path,
                        format!("{INDEX} places tensor `{name}` in this shard, which lacks it"),
                    ));
                }
                place.insert(name.clone(), i);
            }
            Ok(Self { shards, place })
        } else if single.is_file() {
            let shard = Shard::open(&single)?;
            let place = shard.tensors.keys().map(|k| (k.clone(), 0)).collect();
            Ok(Self {
                shards: vec![shard],
                place,
            })
        } else {
            Err(err(
                dir,
                format!(
                    "no {WEIGHTS} or {INDEX} (perplex reads safetensors checkpoints; convert a \
                     pytorch_model.bin with transformers: from_pretrained, then \
                     save_pretrained(safe_serialization=True))"
                ),
            ))
        }
    }

    fn info(&self, name: &str) -> Option<(&Shard, &TensorInfo)> {
        let shard = &self.shards[*self.place.get(name)?];
        Some((shard, shard.tensors.get(name)?))
    }

    /// The tensor `name` as a new libtorch tensor of its stored dtype, then releases the pages
    /// the copy read (so the mapping does not stay resident beside the model).
    fn read(&self, name: &str) -> Result<Tensor, ModelError> {
        let (shard, info) = self.info(name).expect("checked before reading");
        let (start, end) = info.data_offsets;
        let (start, end) = (shard.data_start + start, shard.data_start + end);
        let bytes = shard.mmap.get(start..end).ok_or_else(|| {
            err(
                &shard.path,
                format!("tensor `{name}` lies past the end of the file"),
            )
        })?;
        let kind = kind_of(info.dtype).ok_or_else(|| {
            err(
                &shard.path,
                format!("tensor `{name}` has dtype {:?}", info.dtype),
            )
        })?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let numel: usize = info.shape.iter().product();
        if numel * kind.elt_size_in_bytes() != bytes.len() {
            return Err(err(
                &shard.path,
                format!("tensor `{name}`: {} bytes for shape {shape:?}", bytes.len()),
            ));
        }
        let t = Tensor::f_from_data_size(bytes, &shape, kind)?;
        // Page-aligned range inside the tensor's bytes; the pages are clean file pages, so
        // dropping them only means reading them again if touched.
        let page = 4096;
        let (a, b) = (start.div_ceil(page) * page, end / page * page);
        if b > a {
            // SAFETY: MADV_DONTNEED on a private read-only file mapping drops clean pages; the
            // slice above is no longer used and later reads fault the file back in.
            let _ = unsafe {
                shard
                    .mmap
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a)
            };
        }
        Ok(t)
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

/// What [`load_weights`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Tensors copied into the model.
    pub tensors: usize,
    /// Parameters copied.
    pub parameters: i64,
    /// Stored dtypes other than the model's and how many tensors had each (converted).
    pub converted: BTreeMap<String, usize>,
    /// Checkpoint entries skipped: buffers, and a tied model's stored head.
    pub skipped: Vec<String>,
}

/// Copies the weights of the transformers directory `dir` into the variables of `vs`, built for
/// `format`'s model. Every variable must find its tensor, every checkpoint tensor a variable
/// (buffers aside), shapes must agree; all of this is checked before any variable changes.
/// Tensors are converted to the variables' dtype (bf16 or f16 storage into a float32 model:
/// logged). Tensors are read from the memory-mapped files one at a time and their pages dropped
/// after the copy, so the peak is the model plus about one tensor.
///
/// # Errors
/// [`ModelError::Pretrained`] naming the file and the tensor: missing, unexpected, of another
/// shape or dtype, or an unreadable file.
pub fn load_weights(
    vs: &nn::VarStore,
    format: &dyn HfFormat,
    dir: &Path,
) -> Result<LoadReport, ModelError> {
    let ckpt = Checkpoint::open(dir)?;
    let (plan, claimed, skipped) = plan(vs, format, dir, &ckpt)?;
    let mut converted = BTreeMap::new();
    let mut parameters = 0;
    tch::no_grad(|| -> Result<(), ModelError> {
        for (key, transposed, mut var) in plan {
            let mut t = ckpt.read(&key)?;
            if t.kind() != var.kind() {
                *converted.entry(format!("{:?}", t.kind())).or_insert(0) += 1;
                t = t.f_to_kind(var.kind())?;
            }
            if transposed {
                t = t.f_t_()?;
            }
            var.f_copy_(&t)?;
            parameters += var.numel() as i64;
        }
        Ok(())
    })?;
    for (kind, n) in &converted {
        tracing::info!(
            "{}: converted {n} tensors stored as {kind} to {:?}",
            dir.display(),
            vs.kind()
        );
    }
    Ok(LoadReport {
        tensors: claimed,
        parameters,
        converted,
        skipped,
    })
}

/// Every check of [`load_weights`] (files, index, names, shapes, dtypes), reading no tensor:
/// what `perplex train --dry-run` runs for `init_from`.
///
/// # Errors
/// Those of [`load_weights`].
pub fn check_weights(
    vs: &nn::VarStore,
    format: &dyn HfFormat,
    dir: &Path,
) -> Result<(), ModelError> {
    let ckpt = Checkpoint::open(dir)?;
    plan(vs, format, dir, &ckpt).map(|_| ())
}

/// Which checkpoint tensor goes into which variable (transposed or not), how many were
/// claimed, and the entries skipped; every mismatch is an error here, before anything is read.
#[allow(clippy::type_complexity)]
fn plan(
    vs: &nn::VarStore,
    format: &dyn HfFormat,
    dir: &Path,
    ckpt: &Checkpoint,
) -> Result<(Vec<(String, bool, Tensor)>, usize, Vec<String>), ModelError> {
    let prefix = format.prefix();
    let has_prefix = ckpt.place.keys().any(|k| k.starts_with(prefix));
    let stored = |hf: &str| -> String {
        if has_prefix {
            hf.to_string()
        } else {
            hf.strip_prefix(prefix).unwrap_or(hf).to_string()
        }
    };
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut plan = Vec::new();
    let mut claimed = BTreeSet::new();
    for (name, var) in &vars {
        let hf = format.hf_tensor(name).ok_or_else(|| {
            err(
                dir,
                format!(
                    "variable `{name}` has no place in {}",
                    format.architecture()
                ),
            )
        })?;
        let key = stored(&hf.name);
        let Some((shard, info)) = ckpt.info(&key) else {
            return Err(err(
                dir,
                format!(
                    "the checkpoint lacks tensor `{key}` ({} needs it{})",
                    format.architecture(),
                    if key.ends_with("lm_head.weight") {
                        "; an untied model must store its head"
                    } else {
                        ""
                    }
                ),
            ));
        };
        let mut shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if hf.transposed {
            shape.reverse();
        }
        if shape != var.size() {
            return Err(err(
                &shard.path,
                format!(
                    "tensor `{key}` has shape {:?}, the model's `{name}` needs {:?}{}",
                    info.shape,
                    var.size(),
                    if hf.transposed { " transposed" } else { "" }
                ),
            ));
        }
        if kind_of(info.dtype).is_none() {
            return Err(err(
                &shard.path,
                format!(
                    "tensor `{key}` has dtype {:?}: expected a float",
                    info.dtype
                ),
            ));
        }
        claimed.insert(key.clone());
        plan.push((key, hf.transposed, var.shallow_clone()));
    }
    let mut skipped = Vec::new();
    let head = stored("lm_head.weight");
    for key in ckpt.place.keys() {
        if claimed.contains(key) {
            continue;
        }
        let hf_form = if has_prefix || key == "lm_head.weight" {
            key.clone()
        } else {
            format!("{prefix}{key}")
        };
        if format.is_buffer(&hf_form) || (format.tied() && *key == head) {
            skipped.push(key.clone());
            continue;
        }
        return Err(err(
            dir,
            format!(
                "the checkpoint has tensor `{key}`, which the {} model built from config.json \
                 does not have",
                format.architecture()
            ),
        ));
    }
    Ok((plan, claimed.len(), skipped))
}

/// An owned tensor for safetensors' writer.
struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::tensor::View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn to_bytes(t: &Tensor) -> Result<Bytes, ModelError> {
    let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let dtype = match t.kind() {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        other => {
            return Err(ModelError::BadInput {
                tensor: "weight",
                actual: t.size(),
                kind: format!("{other:?}"),
                expected: "a float tensor".into(),
            })
        }
    };
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(Bytes {
        dtype,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data,
    })
}

/// Writes the variables of `vs` (a model built for `format`) as `file` (a `model.safetensors`)
/// in transformers' names and layouts, with `{"format": "pt"}` metadata; a tied model writes no
/// `lm_head.weight`. Returns the names written.
///
/// # Errors
/// [`ModelError::Pretrained`] when the model cannot be written in this format or the file
/// cannot be written.
pub fn save_weights(
    vs: &nn::VarStore,
    format: &dyn HfFormat,
    file: &Path,
) -> Result<Vec<String>, ModelError> {
    format.exportable().map_err(|m| err(file, m))?;
    let mut tensors: BTreeMap<String, Bytes> = BTreeMap::new();
    for (name, var) in vs.variables() {
        let hf = format.hf_tensor(&name).ok_or_else(|| {
            err(
                file,
                format!(
                    "variable `{name}` has no place in {}",
                    format.architecture()
                ),
            )
        })?;
        let t = if hf.transposed {
            var.f_tr()?.f_contiguous()?
        } else {
            var.shallow_clone()
        };
        tensors.insert(hf.name, to_bytes(&t.f_detach()?)?);
    }
    for (name, shape) in format.missing_from_model() {
        let zeros = Tensor::f_zeros(&shape, (vs.kind(), tch::Device::Cpu))?;
        tensors.insert(name, to_bytes(&zeros)?);
    }
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::tensor::serialize_to_file(
        tensors.iter().map(|(k, v)| (k.clone(), v)),
        &metadata,
        file,
    )
    .map_err(|e| err(file, format!("cannot write: {e:?}")))?;
    Ok(tensors.into_keys().collect())
}

/// `generation_config.json` for a model whose tokenizer has these special ids.
pub fn generation_config(bos: Option<u32>, eos: Option<u32>) -> Value {
    let mut m = Map::new();
    if let Some(b) = bos {
        m.insert("bos_token_id".into(), json!(b));
    }
    if let Some(e) = eos {
        m.insert("eos_token_id".into(), json!(e));
    }
    Value::Object(m)
}

/// Writes `config.json` and `model.safetensors` of the model in `vs` (built for `format`, with
/// `vocab_size` embedding rows) into the existing directory `dir`. The tokenizer files are the
/// caller's (they belong to the run, not the model).
///
/// # Errors
/// As [`save_weights`]; [`ModelError::Pretrained`] when `config.json` cannot be written.
pub fn write_model(
    vs: &nn::VarStore,
    format: &dyn HfFormat,
    vocab_size: i64,
    dir: &Path,
) -> Result<(), ModelError> {
    save_weights(vs, format, &dir.join(WEIGHTS))?;
    let mut config = format.config_json(vocab_size);
    let dtype = match vs.kind() {
        Kind::Double => "float64",
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    };
    config["dtype"] = json!(dtype);
    let path = dir.join(CONFIG);
    let text = serde_json::to_string_pretty(&config).expect("a JSON value serialises");
    std::fs::write(&path, text + "\n").map_err(|e| err(&path, e.to_string()))
}
