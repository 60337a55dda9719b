//! A Llama-family decoder (`type = "llama"`): the model of transformers' `LlamaForCausalLM`,
//! and with options of `Qwen2ForCausalLM` and `MistralForCausalLM` (without a sliding window).
//!
//! Touvron et al., "LLaMA: Open and Efficient Foundation Language Models" (2023) and "Llama 2"
//! (2023): pre-norm blocks with RMSNorm (Zhang & Sennrich 2019), a SwiGLU MLP (Shazeer 2020),
//! rotary positions (Su et al. 2021) in the `rotate_half` layout, and grouped-query attention
//! (Ainslie et al. 2023). Every key has the name of transformers' `LlamaConfig`, and every
//! variable the name it has in a transformers checkpoint (`model.layers.0.self_attn.q_proj.weight`),
//! so a `save_pretrained` directory loads without renaming ([`crate::hf`]).
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::model::check_input;
use crate::transformer::{LayerCache, Linear};
use crate::{
    BuildContext, Decoder, HiddenState, LanguageModel, ModelConfig, ModelError, ModelOutput,
    OutputHead,
};

/// The `rope_type` of a Llama's rotary embeddings (transformers' `rope_parameters`, or
/// `rope_scaling` in configs written before transformers 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeScaling {
    /// `"llama3"` (Llama 3.1+): the only scaling rule implemented; `"default"` means none.
    pub rope_type: String,
    /// How much longer the context is than `original_max_position_embeddings` (Llama 3.1: 8).
    pub factor: f64,
    /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are divided by
    /// `factor` (Llama 3.1: 1).
    pub low_freq_factor: f64,
    /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept (4).
    pub high_freq_factor: f64,
    /// The context length the model was pretrained with (Llama 3.1: 8192).
    pub original_max_position_embeddings: i64,
}

/// Configuration of [`LlamaLm`] (`type = "llama"`), in transformers' `LlamaConfig` names.
/// Defaults: a small model of the size of the GPT example (4 layers, width 128).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlamaLmConfig {
    /// Width of the residual stream. Default 128.
    pub hidden_size: i64,
    /// Width of the SwiGLU MLP. Default 352 (about 8/3 of `hidden_size`, as Llama).
    pub intermediate_size: i64,
    /// Decoder blocks. Default 4.
    pub num_hidden_layers: i64,
    /// Query heads. Default 4.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention; 1 is multi-query); must divide
    /// `num_attention_heads`. Default: `num_attention_heads` (multi-head attention).
    pub num_key_value_heads: Option<i64>,
    /// Width of a head. Default `hidden_size / num_attention_heads`.
    pub head_dim: Option<i64>,
    /// The longest window the model reads (at least `data.seq_len`). Default 256.
    pub max_position_embeddings: i64,
    /// `eps` of every RMSNorm. Default 1e-6.
    pub rms_norm_eps: f64,
    /// Base of the rotary frequencies. Default 10000.
    pub rope_theta: f64,
    /// The `llama3` frequency scaling, or none.
    pub rope_scaling: Option<RopeScaling>,
    /// Biases on `q_proj`, `k_proj`, `v_proj` and `o_proj` (transformers' `attention_bias`).
    /// Default false.
    pub attention_bias: bool,
    /// A bias on `o_proj`; default: `attention_bias`. Qwen2 has q/k/v biases but none on
    /// `o_proj` (`attention_bias = true`, `o_proj_bias = false`).
    pub o_proj_bias: Option<bool>,
    /// Biases on the MLP's `gate_proj`, `up_proj`, `down_proj`. Default false.
    pub mlp_bias: bool,
    /// The output head is `embed_tokens` (no `lm_head.weight`). Default false.
    pub tie_word_embeddings: bool,
    /// Dropout on the attention probabilities (transformers' `attention_dropout`), in `[0, 1)`.
    /// Default 0.
    pub attention_dropout: f64,
    /// Standard deviation of the initial weights (transformers' `initializer_range`).
    /// Default 0.02.
    pub initializer_range: f64,
    /// Rows of the embedding and the head, when the checkpoint has more than the tokenizer's
    /// vocabulary (Qwen2 pads it to a multiple of 128). Default: the tokenizer's size.
    pub vocab_size: Option<i64>,
    /// The transformers directory the weights come from (`[model] init_from`), recorded by the
    /// run; its weights are read when a new run starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

impl Default for LlamaLmConfig {
    fn default() -> Self {
        Self {
            hidden_size: 128,
            intermediate_size: 352,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: None,
            head_dim: None,
            max_position_embeddings: 256,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_scaling: None,
            attention_bias: false,
            o_proj_bias: None,
            mlp_bias: false,
            tie_word_embeddings: false,
            attention_dropout: 0.0,
            initializer_range: 0.02,
            vocab_size: None,
            init_from: None,
        }
    }
}

impl LlamaLmConfig {
    /// Key/value heads.
    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of a head.
    pub fn head_width(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether `o_proj` has a bias.
    pub fn has_o_proj_bias(&self) -> bool {
        self.o_proj_bias.unwrap_or(self.attention_bias)
    }

    /// The vocabulary the model is built with for a tokenizer of `tokens` tokens.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] when `vocab_size` is below the tokenizer's size.
    pub fn rows(&self, tokens: i64) -> Result<i64, ModelError> {
        crate::transformer::embedding_rows(self.vocab_size, tokens)
    }

    fn validate(&self, vocab_size: i64) -> Result<(), ModelError> {
        let positive = crate::recurrent::check_positive;
        positive("vocab_size", vocab_size)?;
        positive("hidden_size", self.hidden_size)?;
        positive("intermediate_size", self.intermediate_size)?;
        positive("num_hidden_layers", self.num_hidden_layers)?;
        positive("num_attention_heads", self.num_attention_heads)?;
        positive("num_key_value_heads", self.kv_heads())?;
        positive("max_position_embeddings", self.max_position_embeddings)?;
        if self.num_attention_heads % self.kv_heads() != 0 {
            return Err(ModelError::InvalidConfig {
                key: "num_key_value_heads",
                value: format!(
                    "{} (num_attention_heads = {})",
                    self.kv_heads(),
                    self.num_attention_heads
                ),
                expected: "a divisor of num_attention_heads",
            });
        }
        let head = self.head_width();
        if head <= 0 || head % 2 != 0 {
            return Err(ModelError::InvalidConfig {
                key: "head_dim",
                value: head.to_string(),
                expected: "a positive even width (rotary positions pair its halves); without \
                           head_dim, hidden_size / num_attention_heads",
            });
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(ModelError::InvalidConfig {
                key: "rms_norm_eps",
                value: self.rms_norm_eps.to_string(),
                expected: "a positive number",
            });
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 1.0 {
            return Err(ModelError::InvalidConfig {
                key: "rope_theta",
                value: self.rope_theta.to_string(),
                expected: "a base above 1",
            });
        }
        if let Some(s) = &self.rope_scaling {
            if s.rope_type != "llama3" {
                return Err(ModelError::InvalidConfig {
                    key: "rope_scaling.rope_type",
                    value: format!("{:?}", s.rope_type),
                    expected: "\"llama3\" (the only rope scaling implemented; omit rope_scaling \
                               for plain rotary positions)",
                });
            }
            if !(s.factor >= 1.0
                && s.low_freq_factor > 0.0
                && s.high_freq_factor > s.low_freq_factor
                && s.original_max_position_embeddings > 0)
            {
                return Err(ModelError::InvalidConfig {
                    key: "rope_scaling",
                    value: format!("{s:?}"),
                    expected: "factor >= 1, 0 < low_freq_factor < high_freq_factor and a \
                               positive original_max_position_embeddings",
                });
            }
        }
        if !(0.0..1.0).contains(&self.attention_dropout) {
            return Err(ModelError::InvalidConfig {
                key: "attention_dropout",
                value: self.attention_dropout.to_string(),
                expected: "a probability in [0, 1)",
            });
        }
        Ok(())
    }

    /// The rotary inverse frequencies `theta^(-2i / head_dim)`, `i < head_dim / 2`, with the
    /// `llama3` rule applied (transformers' `_compute_llama3_parameters`), in float64.
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_width();
        let plain = (0..d / 2).map(|i| {
            // transformers: 1 / base ** (arange(0, dim, 2) / dim), in float32.
            let exponent = ((2 * i) as f32 / d as f32) as f64;
            1.0 / self.rope_theta.powf(exponent)
        });
        let Some(s) = &self.rope_scaling else {
            return plain.collect();
        };
        let old = s.original_max_position_embeddings as f64;
        let low_wavelen = old / s.low_freq_factor;
        let high_wavelen = old / s.high_freq_factor;
        plain
            .map(|f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / s.factor
                } else {
                    let smooth = (old / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            })
            .collect()
    }
}

#[typetag::serde(name = "llama")]
impl ModelConfig for LlamaLmConfig {
    fn build(
        &self,
        path: &nn::Path,
        context: &BuildContext,
    ) -> Result<Box<dyn LanguageModel>, ModelError> {
        if context.seq_len > self.max_position_embeddings {
            return Err(ModelError::InvalidConfig {
                key: "max_position_embeddings",
                value: format!(
                    "{} (data.seq_len = {})",
                    self.max_position_embeddings, context.seq_len
                ),
                expected: "at least data.seq_len: the model reads at most \
                           max_position_embeddings tokens",
            });
        }
        let rows = self.rows(context.vocab_size)?;
        Ok(Box::new(LlamaLm::new(path, rows, self)?))
    }

    fn init_from(&self) -> Option<&std::path::Path> {
        self.init_from.as_deref()
    }

    fn hf_format(&self) -> Option<Box<dyn crate::hf::HfFormat>> {
        Some(Box::new(crate::hf::LlamaFormat(self.clone())))
    }
}

/// transformers' `LlamaRMSNorm`: `weight * (x / sqrt(mean(x²) + eps))`, the mean of squares
/// in float32 (or the input's dtype when wider) whatever the input's dtype, cast back before
/// the weight.
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(path: nn::Path, width: i64, eps: f64) -> Self {
        Self {
            weight: path.var("weight", &[width], nn::Init::Const(1.0)),
            eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        let kind = x.kind();
        let wide = if kind == Kind::Double {
            x.shallow_clone()
        } else {
            x.f_to_kind(Kind::Float)?
        };
        let variance = wide.f_pow_tensor_scalar(2)?.f_mean_dim(-1, true, None)?;
        let normed = wide.f_mul(&variance.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        self.weight.f_mul(&normed.f_to_kind(kind)?)
    }
}

/// One Llama decoder layer: `x + o_proj(attn(input_layernorm(x)))`, then
/// `x + down_proj(silu(gate_proj(h)) * up_proj(h))` with `h = post_attention_layernorm(x)`.
#[derive(Debug)]
struct Layer {
    input_layernorm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Layer {
    fn new(path: nn::Path, c: &LlamaLmConfig) -> Self {
        let (h, d) = (c.hidden_size, c.head_width());
        let std = c.initializer_range;
        let attn = &path / "self_attn";
        let mlp = &path / "mlp";
        Self {
            input_layernorm: RmsNorm::new(&path / "input_layernorm", h, c.rms_norm_eps),
            q_proj: Linear::new(
                &attn / "q_proj",
                h,
                c.num_attention_heads * d,
                std,
                c.attention_bias,
            ),
            k_proj: Linear::new(&attn / "k_proj", h, c.kv_heads() * d, std, c.attention_bias),
            v_proj: Linear::new(&attn / "v_proj", h, c.kv_heads() * d, std, c.attention_bias),
            o_proj: Linear::new(
                &attn / "o_proj",
                c.num_attention_heads * d,
                h,
                std,
                c.has_o_proj_bias(),
            ),
            post_attention_layernorm: RmsNorm::new(
                &path / "post_attention_layernorm",
                h,
                c.rms_norm_eps,
            ),
            gate_proj: Linear::new(&mlp / "gate_proj", h, c.intermediate_size, std, c.mlp_bias),
            up_proj: Linear::new(&mlp / "up_proj", h, c.intermediate_size, std, c.mlp_bias),
            down_proj: Linear::new(&mlp / "down_proj", c.intermediate_size, h, std, c.mlp_bias),
            heads: c.num_attention_heads,
            kv_heads: c.kv_heads(),
            head_dim: d,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        rotary: &(Tensor, Tensor),
        dropout: f64,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor, tch::TchError> {
        let (batch, len, _) = x.size3()?;
        let h = self.input_layernorm.forward(x)?;
        let heads = |t: Tensor, n: i64| t.f_view([batch, len, n, self.head_dim])?.f_transpose(1, 2);
        let q = heads(self.q_proj.forward(&h)?, self.heads)?;
        let k = heads(self.k_proj.forward(&h)?, self.kv_heads)?;
        let v = heads(self.v_proj.forward(&h)?, self.kv_heads)?;
        let (cos, sin) = rotary;
        // transformers' `apply_rotary_pos_emb` (rotate_half pairing).
        let q = crate::rotary::apply(&q, cos, sin)?;
        let k = crate::rotary::apply(&k, cos, sin)?;
        let (k, v, past) = match cache {
            None => (k, v, 0),
            Some(cache) => cache.extend(k, v)?,
        };
        let a = crate::transformer::attend(&q, &k, &v, past, dropout, self.kv_heads != self.heads)?
            .f_transpose(1, 2)?
            .f_contiguous()?
            .f_view([batch, len, self.heads * self.head_dim])?;
        let x = x.f_add(&self.o_proj.forward(&a)?)?;
        let h = self.post_attention_layernorm.forward(&x)?;
        let gated = self
            .gate_proj
            .forward(&h)?
            .f_silu()?
            .f_mul(&self.up_proj.forward(&h)?)?;
        x.f_add(&self.down_proj.forward(&gated)?)
    }
}

/// A Llama-family decoder-only language model:
/// `embed_tokens -> num_hidden_layers × Layer -> norm -> lm_head` (or `embed_tokens` when tied).
///
/// Attention is causal through libtorch's `scaled_dot_product_attention` (with `enable_gqa`
/// when there are fewer key/value heads than query heads: query head `i` reads key/value head
/// `i / (heads / kv_heads)`, transformers' `repeat_kv`), scale `1/sqrt(head_dim)`. Rotary
/// tables are computed in float32 (float64 for a float64 model) from
/// [`LlamaLmConfig::inv_freq`] and cast to the activations' dtype, as transformers does. No
/// padding mask is taken (as [`crate::TransformerLm`]): right-pad, with `ignore_index` targets.
/// Initialisation (training from scratch): every Linear and the embedding `N(0,
/// initializer_range)`, biases zero, norm weights one (transformers' `_init_weights`).
#[derive(Debug)]
pub struct LlamaLm {
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Tensor,
    vocab_size: i64,
    /// [`LlamaLmConfig::inv_freq`], float64 `[head_dim / 2]` on the model's device, made once.
    inv_freq: Tensor,
    config: LlamaLmConfig,
}

impl LlamaLm {
    /// Creates the variables under `path` with transformers' names: `model.embed_tokens.weight`,
    /// `model.layers.{i}.input_layernorm.weight`, `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`
    /// (`.bias` with `attention_bias`), `model.layers.{i}.post_attention_layernorm.weight`,
    /// `model.layers.{i}.mlp.{gate,up,down}_proj.weight` (`.bias` with `mlp_bias`),
    /// `model.norm.weight`, and `lm_head.weight` when untied.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for an out-of-range key, naming it.
    pub fn new(
        path: &nn::Path,
        vocab_size: i64,
        config: &LlamaLmConfig,
    ) -> Result<Self, ModelError> {
        config.validate(vocab_size)?;
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: config.initializer_range,
        };
        let model = path / "model";
        let embed_tokens =
            (&model / "embed_tokens").var("weight", &[vocab_size, config.hidden_size], init);
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::new(&model / "layers" / i, config))
            .collect();
        let norm = RmsNorm::new(&model / "norm", config.hidden_size, config.rms_norm_eps);
        let lm_head = if config.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            (path / "lm_head").var("weight", &[vocab_size, config.hidden_size], init)
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            vocab_size,
            inv_freq: Tensor::f_from_slice(&config.inv_freq())?.f_to_device(path.device())?,
            config: config.clone(),
        })
    }

    /// `cos` and `sin` `[len, head_dim]` of positions `start .. start + len`, computed in
    /// float32 (float64 for a float64 model) and cast to `kind`.
    fn rotary(&self, start: i64, len: i64, device: Device) -> Result<(Tensor, Tensor), ModelError> {
        let wide = if self.embed_tokens.kind() == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        let inv_freq = self.inv_freq.f_to_device(device)?.f_to_kind(wide)?;
        let positions = Tensor::f_arange_start(start, start + len, (wide, device))?;
        let angles = positions.f_outer(&inv_freq)?;
        let angles = Tensor::f_cat(&[&angles, &angles], -1)?;
        Ok((angles.f_cos()?, angles.f_sin()?))
    }

    fn hidden(
        &self,
        input: &Tensor,
        start: i64,
        caches: Option<&mut [LayerCache]>,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        check_input(input)?;
        let len = input.size()[1];
        let limit = self.config.max_position_embeddings;
        if start + len > limit {
            return Err(ModelError::BadInput {
                tensor: "input",
                actual: input.size(),
                kind: format!("{:?}", input.kind()),
                expected: format!(
                    "at most max_position_embeddings = {limit} positions ({start} already cached)"
                ),
            });
        }
        let mut x = Tensor::f_embedding(&self.embed_tokens, input, -1, false, false)?;
        // Cast to the residual stream's dtype, as transformers does (float32 under bf16
        // autocast: the rotated queries and keys are then float32, and SDPA casts them).
        let (cos, sin) = self.rotary(start, len, input.device())?;
        let rotary = (cos.f_to_kind(x.kind())?, sin.f_to_kind(x.kind())?);
        let dropout = if train {
            self.config.attention_dropout
        } else {
            0.0
        };
        match caches {
            Some(caches) => {
                for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
                    x = layer.forward(&x, &rotary, dropout, Some(cache))?;
                }
            }
            None => {
                for layer in &self.layers {
                    x = layer.forward(&x, &rotary, dropout, None)?;
                }
            }
        }
        Ok(self.norm.forward(&x)?)
    }

    fn output_head(&self) -> OutputHead {
        OutputHead {
            weight: self.lm_head.shallow_clone(),
            bias: None,
        }
    }

    fn matmul_parameters(&self) -> i64 {
        let numel = |t: &Tensor| t.size().iter().product::<i64>();
        let linear = |l: &Linear| numel(&l.weight) + l.bias.as_ref().map_or(0, numel);
        let layers: i64 = self
            .layers
            .iter()
            .map(|l| {
                numel(&l.input_layernorm.weight)
                    + numel(&l.post_attention_layernorm.weight)
                    + [
                        &l.q_proj,
                        &l.k_proj,
                        &l.v_proj,
                        &l.o_proj,
                        &l.gate_proj,
                        &l.up_proj,
                        &l.down_proj,
                    ]
                    .into_iter()
                    .map(linear)
                    .sum::<i64>()
            })
            .sum();
        // The head's matmul counts; an untied input embedding is a lookup (no FLOPs).
        numel(&self.lm_head) + layers + numel(&self.norm.weight)
    }
}

impl LanguageModel for LlamaLm {
    fn vocab_size(&self) -> i64 {
        self.vocab_size
    }

    /// `6 N + 12 · layers · heads · head_dim · max_position_embeddings` (nanoGPT's
    /// `estimate_mfu`, PaLM appendix B), `N` every parameter that multiplies (the head, the
    /// layers, the final norm; an untied input embedding is a lookup and is left out).
    fn flops_per_token(&self) -> Option<f64> {
        let c = &self.config;
        let attention = 12 * c.num_hidden_layers * c.num_attention_heads * c.head_width();
        Some(6.0 * self.matmul_parameters() as f64 + (attention * c.max_position_embeddings) as f64)
    }

    fn max_seq_len(&self) -> Option<i64> {
        Some(self.config.max_position_embeddings)
    }

    fn initial_state(&self, _batch_size: i64, _device: Device) -> HiddenState {
        HiddenState::none()
    }

    /// # Shapes
    /// `input` `[batch, seq]` int64, `seq <= max_position_embeddings`; `hidden`
    /// `[batch, seq, hidden_size]` after the final norm; `head.weight` `[vocab, hidden_size]`.
    ///
    /// # Errors
    /// [`ModelError::BadInput`] for ids that are not int64 `[batch, seq]` or a window longer
    /// than `max_position_embeddings`; libtorch errors (an id outside the vocabulary).
    fn forward(
        &self,
        input: &Tensor,
        _state: &HiddenState,
        train: bool,
    ) -> Result<ModelOutput, ModelError> {
        Ok(ModelOutput {
            hidden: self.hidden(input, 0, None, train)?,
            head: self.output_head(),
            state: HiddenState::none(),
        })
    }

    fn decoder<'a>(&'a self, _batch_size: i64, _device: Device) -> Box<dyn Decoder + 'a> {
        Box::new(LlamaDecoder {
            model: self,
            caches: Vec::new(),
            window: None,
        })
    }
}

/// Generation with a key/value cache, as [`crate::TransformerLm`]'s: the window is the last
/// `max_position_embeddings` tokens; past it the cropped window is read again from position 0.
struct LlamaDecoder<'a> {
    model: &'a LlamaLm,
    caches: Vec<LayerCache>,
    window: Option<Tensor>,
}

impl Decoder for LlamaDecoder<'_> {
    fn feed(&mut self, input: &Tensor) -> Result<Tensor, ModelError> {
        let result = self.extend(input);
        if result.is_err() {
            self.caches.clear();
            self.window = None;
        }
        result
    }
}

impl LlamaDecoder<'_> {
    fn extend(&mut self, input: &Tensor) -> Result<Tensor, ModelError> {
        check_input(input)?;
        let limit = self.model.config.max_position_embeddings;
        let cached = self.window.as_ref().map_or(0, |w| w.size()[1]);
        let all = match &self.window {
            Some(w) => Tensor::f_cat(&[w, input], 1)?,
            None => input.shallow_clone(),
        };
        let total = all.size()[1];
        let fresh = |m: &LlamaLm| m.layers.iter().map(|_| LayerCache::default()).collect();
        let hidden = if total <= limit {
            if self.caches.is_empty() {
                self.caches = fresh(self.model);
            }
            let h = self
                .model
                .hidden(input, cached, Some(&mut self.caches), false)?;
            self.window = Some(all);
            h
        } else {
            let window = all.f_narrow(1, total - limit, limit)?;
            self.caches = fresh(self.model);
            let h = self
                .model
                .hidden(&window, 0, Some(&mut self.caches), false)?;
            self.window = Some(window);
            h
        };
        let last = hidden.f_select(1, -1)?;
        Ok(last
            .f_linear::<Tensor>(&self.model.lm_head, None)?
            .f_to_kind(Kind::Float)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pitfalls part 2, item 2: head_dim 16, theta 5e5, llama3 (factor 8, low 1, high 4,
    /// original 64): i = 1 goes 0.1939227 -> 0.0794030; i >= 2 are divided by exactly 8.
    #[test]
    fn llama3_inverse_frequencies_follow_transformers() {
        let c = LlamaLmConfig {
            hidden_size: 64,
            num_attention_heads: 4,
            head_dim: Some(16),
            rope_theta: 5e5,
            rope_scaling: Some(RopeScaling {
                rope_type: "llama3".into(),
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64,
            }),
            ..Default::default()
        };
        let plain = LlamaLmConfig {
            rope_scaling: None,
            ..c.clone()
        }
        .inv_freq();
        let scaled = c.inv_freq();
        assert!((plain[1] - 0.193_922_7).abs() < 1e-7, "{}", plain[1]);
        assert!((scaled[1] - 0.079_403_0).abs() < 1e-7, "{}", scaled[1]);
        assert_eq!(scaled[0], plain[0]);
        for i in 2..8 {
            assert_eq!(scaled[i], plain[i] / 8.0, "i = {i}");
        }
    }

    #[test]
    fn out_of_range_keys_are_refused_by_name() {
        let refused = |c: LlamaLmConfig| {
            let vs = nn::VarStore::new(Device::Cpu);
            c.build(&vs.root(), &BuildContext::new(50))
                .unwrap_err()
                .to_string()
        };
        let err = refused(LlamaLmConfig {
            num_key_value_heads: Some(3),
            ..Default::default()
        });
        assert!(err.contains("num_key_value_heads = 3"), "{err}");
        let err = refused(LlamaLmConfig {
            rope_scaling: Some(RopeScaling {
                rope_type: "yarn".into(),
                factor: 4.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64,
            }),
            ..Default::default()
        });
        assert!(err.contains("rope_scaling.rope_type = \"yarn\""), "{err}");
        let err = refused(LlamaLmConfig {
            vocab_size: Some(40),
            ..Default::default()
        });
        assert!(err.contains("vocab_size = 40"), "{err}");
    }

    #[test]
    fn variables_carry_transformers_names() {
        let vs = nn::VarStore::new(Device::Cpu);
        let c = LlamaLmConfig {
            num_hidden_layers: 1,
            num_key_value_heads: Some(2),
            attention_bias: true,
            o_proj_bias: Some(false),
            ..Default::default()
        };
        c.build(&vs.root(), &BuildContext::new(50)).unwrap();
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "lm_head.weight",
                "model.embed_tokens.weight",
                "model.layers.0.input_layernorm.weight",
                "model.layers.0.mlp.down_proj.weight",
                "model.layers.0.mlp.gate_proj.weight",
                "model.layers.0.mlp.up_proj.weight",
                "model.layers.0.post_attention_layernorm.weight",
                "model.layers.0.self_attn.k_proj.bias",
                "model.layers.0.self_attn.k_proj.weight",
                "model.layers.0.self_attn.o_proj.weight",
                "model.layers.0.self_attn.q_proj.bias",
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.v_proj.bias",
                "model.layers.0.self_attn.v_proj.weight",
                "model.norm.weight",
            ]
        );
        assert_eq!(
            vs.variables()["model.layers.0.self_attn.k_proj.weight"].size(),
            [64, 128]
        );
    }
}
