//! A GPT-style decoder-only Transformer (`type = "transformer"`), the model of
//! `shared/reference/pytorch_gpt_lm.py` (itself nanoGPT's, with shorter module names).
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::model::check_input;
use crate::rotary;
use crate::{
    BuildContext, Decoder, HiddenState, LanguageModel, ModelConfig, ModelError, ModelOutput,
    OutputHead,
};

/// How a [`TransformerLm`] knows where a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// A learned table `wpe` of `block_size` rows added to the token embeddings (GPT-2).
    Learned,
    /// Rotary embeddings on the queries and keys of every layer, no `wpe` (RoFormer; see
    /// `rotary.rs`). Needs an even head size `n_embd / n_head`.
    Rope,
}

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU, `x Φ(x)` (`torch.nn.functional.gelu`; nanoGPT).
    Gelu,
    /// GELU's tanh approximation (`gelu(approximate="tanh")`; GPT-2's `gelu_new`).
    GeluNew,
}

/// Configuration of [`TransformerLm`] (`type = "transformer"`). Defaults are the reference's
/// CPU quick config (character-level Tiny Shakespeare "baby GPT").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerLmConfig {
    /// Transformer blocks. Default 4.
    pub n_layer: i64,
    /// Attention heads per block; must divide `n_embd`. Default 4.
    pub n_head: i64,
    /// Width of the residual stream (embeddings, attention, LayerNorms). Default 128.
    pub n_embd: i64,
    /// The longest window the model reads; at least `data.seq_len`. Default 64.
    pub block_size: i64,
    /// Dropout on the embeddings, the attention probabilities and both residual branches, in
    /// `[0, 1)`. Default 0.
    pub dropout: f64,
    /// Biases in the Linear layers and LayerNorms. Default false (as the reference).
    pub bias: bool,
    /// Position information: `"learned"` or `"rope"`. Default `"learned"`.
    pub positions: Positions,
    /// The output head is the token embedding `wte` (one tensor, both uses' gradients); false
    /// gives a separate `head.weight`. Default true.
    pub tie_weights: bool,
    /// The MLP's activation: `"gelu"` (exact) or `"gelu_new"` (GPT-2's tanh approximation).
    /// Default `"gelu"`.
    pub activation: Activation,
    /// `eps` of every LayerNorm (GPT-2's `layer_norm_epsilon`). Default 1e-5.
    pub layer_norm_epsilon: f64,
    /// Width of the MLP (GPT-2's `n_inner`). Default `4 * n_embd`.
    pub n_inner: Option<i64>,
    /// Rows of the embedding and the head when the checkpoint has more than the tokenizer's
    /// vocabulary. Default: the tokenizer's size.
    pub vocab_size: Option<i64>,
    /// The transformers directory the weights come from (`[model] init_from`), recorded by
    /// the run; its weights are read when a new run starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

impl Default for TransformerLmConfig {
    fn default() -> Self {
        Self {
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            block_size: 64,
            dropout: 0.0,
            bias: false,
            positions: Positions::Learned,
            tie_weights: true,
            activation: Activation::Gelu,
            layer_norm_epsilon: LAYER_NORM_EPS,
            n_inner: None,
            vocab_size: None,
            init_from: None,
        }
    }
}

/// The embedding rows of a model whose config may give more rows than the tokenizer has tokens.
pub(crate) fn embedding_rows(vocab_size: Option<i64>, tokens: i64) -> Result<i64, ModelError> {
    match vocab_size {
        None => Ok(tokens),
        Some(rows) if rows >= tokens => Ok(rows),
        Some(rows) => Err(ModelError::InvalidConfig {
            key: "vocab_size",
            value: format!("{rows} (the tokenizer has {tokens} tokens)"),
            expected: "at least the tokenizer's vocabulary",
        }),
    }
}

#[typetag::serde(name = "transformer")]
impl ModelConfig for TransformerLmConfig {
    fn build(
        &self,
        path: &nn::Path,
        context: &BuildContext,
    ) -> Result<Box<dyn LanguageModel>, ModelError> {
        if context.seq_len > self.block_size {
            return Err(ModelError::InvalidConfig {
                key: "block_size",
                value: format!("{} (data.seq_len = {})", self.block_size, context.seq_len),
                expected: "at least data.seq_len: the model reads at most block_size tokens",
            });
        }
        let rows = embedding_rows(self.vocab_size, context.vocab_size)?;
        Ok(Box::new(TransformerLm::new(path, rows, self)?))
    }

    fn init_from(&self) -> Option<&std::path::Path> {
        self.init_from.as_deref()
    }

    fn hf_format(&self) -> Option<Box<dyn crate::hf::HfFormat>> {
        Some(Box::new(crate::hf::Gpt2Format(self.clone())))
    }
}

impl TransformerLmConfig {
    /// Checks every hyperparameter once, before any variable is made.
    fn validate(&self, vocab_size: i64) -> Result<(), ModelError> {
        let positive = crate::recurrent::check_positive;
        positive("vocab_size", vocab_size)?;
        positive("n_layer", self.n_layer)?;
        positive("n_head", self.n_head)?;
        positive("n_embd", self.n_embd)?;
        positive("block_size", self.block_size)?;
        if self.n_embd % self.n_head != 0 {
            return Err(ModelError::InvalidConfig {
                key: "n_embd",
                value: format!("{} (n_head = {})", self.n_embd, self.n_head),
                expected: "a multiple of n_head",
            });
        }
        let head_dim = self.n_embd / self.n_head;
        if self.positions == Positions::Rope && head_dim % 2 != 0 {
            return Err(ModelError::InvalidConfig {
                key: "positions",
                value: format!("\"rope\" (head size n_embd / n_head = {head_dim})"),
                expected: "an even head size for rotary positions",
            });
        }
        if let Some(inner) = self.n_inner {
            positive("n_inner", inner)?;
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            return Err(ModelError::InvalidConfig {
                key: "layer_norm_epsilon",
                value: self.layer_norm_epsilon.to_string(),
                expected: "a positive number",
            });
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::InvalidConfig {
                key: "dropout",
                value: self.dropout.to_string(),
                expected: "a probability in [0, 1)",
            });
        }
        Ok(())
    }
}

/// Standard deviation of GPT-2's initialisation (Radford et al. 2019; nanoGPT `_init_weights`).
const INIT_STD: f64 = 0.02;
/// `eps` of `torch.nn.LayerNorm`.
const LAYER_NORM_EPS: f64 = 1e-5;

/// `torch.nn.Linear` without its module: `y = x W^T + b`.
#[derive(Debug)]
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    /// `weight` `N(0, std)`, `bias` zero (GPT-2).
    pub(crate) fn new(path: nn::Path, inputs: i64, outputs: i64, std: f64, bias: bool) -> Self {
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        };
        Self {
            weight: path.var("weight", &[outputs, inputs], init),
            bias: bias.then(|| path.var("bias", &[outputs], nn::Init::Const(0.0))),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        x.f_linear(&self.weight, self.bias.as_ref())
    }
}

/// `torch.nn.LayerNorm(n_embd, bias=...)`: weight one, bias zero.
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    fn new(path: nn::Path, width: i64, bias: bool, eps: f64) -> Self {
        Self {
            weight: path.var("weight", &[width], nn::Init::Const(1.0)),
            bias: bias.then(|| path.var("bias", &[width], nn::Init::Const(0.0))),
            eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        let width = self.weight.size();
        x.f_layer_norm(
            width.as_slice(),
            Some(&self.weight),
            self.bias.as_ref(),
            self.eps,
            true,
        )
    }
}

/// The keys and values one layer has seen, `[batch, heads, positions, head_dim]`.
#[derive(Debug, Default)]
pub(crate) struct LayerCache {
    keys_values: Option<(Tensor, Tensor)>,
}

impl LayerCache {
    /// Appends the keys and values of new positions; returns all of them and how many positions
    /// were cached before.
    pub(crate) fn extend(
        &mut self,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor, i64), tch::TchError> {
        let (k, v, past) = match &self.keys_values {
            None => (k, v, 0),
            Some((pk, pv)) => (
                Tensor::f_cat(&[pk, &k], 2)?,
                Tensor::f_cat(&[pv, &v], 2)?,
                pk.size()[2],
            ),
        };
        self.keys_values = Some((k.shallow_clone(), v.shallow_clone()));
        Ok((k, v, past))
    }
}

/// What one forward pass over a window shares between its layers.
struct Pass<'a> {
    /// Rotary tables of the window's positions (`rotary::tables`), if `positions = "rope"`.
    rotary: Option<&'a (Tensor, Tensor)>,
    /// Dropout probability, 0 unless training.
    dropout: f64,
    train: bool,
}

/// One pre-LayerNorm block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Debug)]
struct Block {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc: Linear,
    fc_proj: Linear,
    n_head: i64,
    activation: Activation,
}

impl Block {
    fn new(path: nn::Path, c: &TransformerLmConfig) -> Self {
        let e = c.n_embd;
        // GPT-2: the projections into the residual stream are scaled by 1/sqrt(2 n_layer), one
        // per residual branch, so the stream's variance does not grow with depth.
        let residual_std = INIT_STD / ((2 * c.n_layer) as f64).sqrt();
        let (eps, inner) = (c.layer_norm_epsilon, c.n_inner.unwrap_or(4 * e));
        Self {
            ln1: LayerNorm::new(&path / "ln1", e, c.bias, eps),
            qkv: Linear::new(&path / "qkv", e, 3 * e, INIT_STD, c.bias),
            proj: Linear::new(&path / "proj", e, e, residual_std, c.bias),
            ln2: LayerNorm::new(&path / "ln2", e, c.bias, eps),
            fc: Linear::new(&path / "fc", e, inner, INIT_STD, c.bias),
            fc_proj: Linear::new(&path / "fc_proj", inner, e, residual_std, c.bias),
            n_head: c.n_head,
            activation: c.activation,
        }
    }

    /// `x`: `[batch, len, n_embd]` at the positions after those in `cache` (if any).
    fn forward(
        &self,
        x: &Tensor,
        pass: &Pass,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor, tch::TchError> {
        let (batch, len, width) = x.size3()?;
        let head_dim = width / self.n_head;
        let qkv = self.qkv.forward(&self.ln1.forward(x)?)?.f_split(width, 2)?;
        let heads = |t: &Tensor| {
            t.f_view([batch, len, self.n_head, head_dim])?
                .f_transpose(1, 2)
        };
        let (mut q, mut k, v) = (heads(&qkv[0])?, heads(&qkv[1])?, heads(&qkv[2])?);
        if let Some((cos, sin)) = pass.rotary {
            q = rotary::rotate(&q, cos, sin)?;
            k = rotary::rotate(&k, cos, sin)?;
        }
        let (k, v, past) = match cache {
            None => (k, v, 0),
            Some(cache) => cache.extend(k, v)?,
        };
        let a = attend(&q, &k, &v, past, pass.dropout, false)?
            .f_transpose(1, 2)?
            .f_contiguous()?
            .f_view([batch, len, width])?;
        let x = x.f_add(&self.proj.forward(&a)?.f_dropout(pass.dropout, pass.train)?)?;
        let mlp = self
            .fc_proj
            .forward(&self.fc.forward(&self.ln2.forward(&x)?)?.f_gelu(
                match self.activation {
                    Activation::Gelu => "none",
                    Activation::GeluNew => "tanh",
                },
            )?)?;
        x.f_add(&mlp.f_dropout(pass.dropout, pass.train)?)
    }
}

/// Causal attention of `q` (`len` new positions) over `k`, `v` (`past + len` positions) with
/// `torch.nn.functional.scaled_dot_product_attention`.
///
/// Its `is_causal` mask is aligned to the top left (query `i` sees keys `0..=i`), right only when
/// nothing is cached. One new query may see every key; several new queries after a cache get an
/// explicit boolean mask aligned to the bottom right (query `i` sees keys `0..=past + i`). A mask
/// is never passed together with `is_causal`. `gqa`: `k` and `v` have fewer heads than `q`,
/// each serving `heads / kv_heads` consecutive query heads (SDPA's `enable_gqa`).
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    past: i64,
    dropout: f64,
    gqa: bool,
) -> Result<Tensor, tch::TchError> {
    let len = q.size()[2];
    let sdpa = |mask: Option<&Tensor>, is_causal| {
        Tensor::f_scaled_dot_product_attention(q, k, v, mask, dropout, is_causal, None, gqa)
    };
    if past == 0 {
        sdpa(None, true)
    } else if len == 1 {
        sdpa(None, false)
    } else {
        let mask = Tensor::f_ones([len, past + len], (Kind::Bool, q.device()))?.f_tril(past)?;
        sdpa(Some(&mask), false)
    }
}

/// GPT-style decoder-only language model (Radford et al. 2019, GPT-2; nanoGPT):
/// `wte (+ wpe) -> n_layer × [x + attn(ln1(x)), x + mlp(ln2(x))] -> ln_f`, output head tied to
/// `wte` by default.
///
/// Attention is causal multi-head self-attention through libtorch's
/// `scaled_dot_product_attention`; the MLP is `fc_proj(gelu(fc(x)))`, 4× wide, exact (erf) GELU.
///
/// No padding (attention) mask is taken: every row of a batch is read whole, positions from 0,
/// and the causal mask (`is_causal`) is the only one, so the pitfalls of combining a padding
/// mask with `is_causal` (pytorch/pytorch#187801) and of fully masked query rows (NaN) cannot
/// arise. Right padding is harmless: a position never sees a later one, so the real positions'
/// logits are those of the unpadded row; give the padded positions' targets the loss's
/// `ignore_index`. Left padding is not masked: the real tokens would attend to the padding and
/// sit at later positions, so batch prompts of different lengths by decoding them apart.
/// Initialisation is GPT-2's: every Linear weight and embedding `N(0, 0.02)`, the residual
/// projections `proj` and `fc_proj` `N(0, 0.02 / sqrt(2 n_layer))`, biases zero, LayerNorm
/// weights one.
#[derive(Debug)]
pub struct TransformerLm {
    wte: Tensor,
    wpe: Option<Tensor>,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// `wte` itself (a shallow clone: same storage) when tied.
    head: Tensor,
    vocab_size: i64,
    config: TransformerLmConfig,
}

impl TransformerLm {
    /// Creates the variables under `path` with the reference's PyTorch names: `wte.weight`,
    /// `wpe.weight` (learned positions), `blocks.{i}.ln1.weight`, `blocks.{i}.qkv.weight`,
    /// `blocks.{i}.proj.weight`, `blocks.{i}.ln2.weight`, `blocks.{i}.fc.weight`,
    /// `blocks.{i}.fc_proj.weight` (and `.bias` of each with `bias = true`), `ln_f.weight`, and
    /// `head.weight` when untied. A tied model stores only `wte.weight`, as
    /// `safetensors.torch.save_model` does, so `safetensors.torch.load_model` reads a checkpoint
    /// into the reference's `GPT`.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for a non-positive size, `n_embd` not a multiple of
    /// `n_head`, an odd head size with rotary positions, or a dropout outside `[0, 1)`.
    pub fn new(
        path: &nn::Path,
        vocab_size: i64,
        config: &TransformerLmConfig,
    ) -> Result<Self, ModelError> {
        config.validate(vocab_size)?;
        let embedding = |name: &str, rows| {
            let init = nn::Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            };
            (path / name).var("weight", &[rows, config.n_embd], init)
        };
        let wte = embedding("wte", vocab_size);
        let wpe =
            (config.positions == Positions::Learned).then(|| embedding("wpe", config.block_size));
        let blocks = (0..config.n_layer)
            .map(|i| Block::new(path / "blocks" / i, config))
            .collect();
        let ln_f = LayerNorm::new(
            path / "ln_f",
            config.n_embd,
            config.bias,
            config.layer_norm_epsilon,
        );
        let head = if config.tie_weights {
            wte.shallow_clone()
        } else {
            embedding("head", vocab_size)
        };
        Ok(Self {
            wte,
            wpe,
            blocks,
            ln_f,
            head,
            vocab_size,
            config: config.clone(),
        })
    }

    /// The final hidden states `[batch, len, n_embd]` (after `ln_f`) of `input` read at positions
    /// `start .. start + len`, after the keys and values in `caches` (one per block, extended).
    fn hidden(
        &self,
        input: &Tensor,
        start: i64,
        caches: Option<&mut [LayerCache]>,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        check_input(input)?;
        let len = input.size()[1];
        if start + len > self.config.block_size {
            return Err(ModelError::BadInput {
                tensor: "input",
                actual: input.size(),
                kind: format!("{:?}", input.kind()),
                expected: format!(
                    "at most block_size = {} positions{}",
                    self.config.block_size,
                    if start > 0 {
                        format!(" ({start} already cached)")
                    } else {
                        String::new()
                    }
                ),
            });
        }
        let device = input.device();
        let dropout = if train { self.config.dropout } else { 0.0 };
        // The fallible form of `Embedding::forward`: an id outside the vocabulary is an error.
        let mut x = Tensor::f_embedding(&self.wte, input, -1, false, false)?;
        if let Some(wpe) = &self.wpe {
            let positions = Tensor::f_arange_start(start, start + len, (Kind::Int64, device))?;
            x = x.f_add(&Tensor::f_embedding(wpe, &positions, -1, false, false)?)?;
        }
        x = x.f_dropout(dropout, train)?;
        let tables = match self.config.positions {
            Positions::Rope => Some(rotary::tables(
                start,
                len,
                self.config.n_embd / self.config.n_head,
                self.wte.kind(),
                device,
            )?),
            Positions::Learned => None,
        };
        let pass = Pass {
            rotary: tables.as_ref(),
            dropout,
            train,
        };
        match caches {
            Some(caches) => {
                for (block, cache) in self.blocks.iter().zip(caches.iter_mut()) {
                    x = block.forward(&x, &pass, Some(cache))?;
                }
            }
            None => {
                for block in &self.blocks {
                    x = block.forward(&x, &pass, None)?;
                }
            }
        }
        Ok(self.ln_f.forward(&x)?)
    }

    fn output_head(&self) -> OutputHead {
        OutputHead {
            weight: self.head.shallow_clone(),
            bias: None,
        }
    }

    /// Parameters counted by nanoGPT's `get_num_params()`: all but the position table.
    fn non_embedding_params(&self) -> i64 {
        let numel = |t: &Tensor| t.size().iter().product::<i64>();
        let norm = |n: &LayerNorm| numel(&n.weight) + n.bias.as_ref().map_or(0, numel);
        let linear = |l: &Linear| numel(&l.weight) + l.bias.as_ref().map_or(0, numel);
        let blocks: i64 = self
            .blocks
            .iter()
            .map(|b| {
                norm(&b.ln1)
                    + linear(&b.qkv)
                    + linear(&b.proj)
                    + norm(&b.ln2)
                    + linear(&b.fc)
                    + linear(&b.fc_proj)
            })
            .sum();
        let head = if self.config.tie_weights {
            0
        } else {
            numel(&self.head)
        };
        numel(&self.wte) + blocks + norm(&self.ln_f) + head
    }
}

impl LanguageModel for TransformerLm {
    fn vocab_size(&self) -> i64 {
        self.vocab_size
    }

    /// nanoGPT's `estimate_mfu`: `6 N + 12 · n_layer · n_head · head_dim · block_size`, where `N`
    /// counts every parameter but the position table (the tied head once) and the second term
    /// is the attention scores and weighted sum at a full window of `block_size` (PaLM paper,
    /// appendix B). Reference CPU quick config with 65 characters (N = 795,904): 5.17 MFLOP per
    /// token.
    fn flops_per_token(&self) -> Option<f64> {
        let c = &self.config;
        let n = self.non_embedding_params() as f64;
        Some(6.0 * n + 12.0 * (c.n_layer * c.n_embd * c.block_size) as f64)
    }

    fn max_seq_len(&self) -> Option<i64> {
        Some(self.config.block_size)
    }

    /// No state: every window is read on its own.
    fn initial_state(&self, _batch_size: i64, _device: Device) -> HiddenState {
        HiddenState::none()
    }

    /// # Shapes
    /// `input` `[batch, seq]` int64 with `seq <= block_size`; `hidden` `[batch, seq, n_embd]`
    /// (after `ln_f`); `head.weight` `[vocab, n_embd]` (`wte` when tied), no bias; `state` empty.
    /// `state` is ignored.
    ///
    /// # Errors
    /// [`ModelError::BadInput`] for ids that are not int64 `[batch, seq]` or a window longer than
    /// `block_size`; libtorch errors (an id outside the vocabulary).
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
        Box::new(KvCacheDecoder {
            model: self,
            caches: Vec::new(),
            window: None,
        })
    }
}

/// Generation with a key/value cache: each block keeps the keys and values of the tokens read,
/// so a new token costs one position, not the whole window.
///
/// The window is the last `block_size` tokens, as nanoGPT's `generate` crops its context. When a
/// feed would pass `block_size`, the cache is dropped and the cropped window read again from
/// position 0 (a re-prefill): with learned positions every token's position changes, and with
/// either kind the first layer's output of every kept token changes when the oldest one leaves
/// its attention, so a cache cannot slide. Past `block_size` each token thus costs a full
/// window, like decoding without a cache; the logits are those of a full forward of the window.
struct KvCacheDecoder<'a> {
    model: &'a TransformerLm,
    caches: Vec<LayerCache>,
    /// The ids read so far, `[batch, <= block_size]`.
    window: Option<Tensor>,
}

impl Decoder for KvCacheDecoder<'_> {
    /// After an error the decoder starts over: the next feed is read from position 0.
    fn feed(&mut self, input: &Tensor) -> Result<Tensor, ModelError> {
        let result = self.extend(input);
        if result.is_err() {
            self.caches.clear();
            self.window = None;
        }
        result
    }
}

impl KvCacheDecoder<'_> {
    fn extend(&mut self, input: &Tensor) -> Result<Tensor, ModelError> {
        check_input(input)?;
        let block_size = self.model.config.block_size;
        let cached = self.window.as_ref().map_or(0, |w| w.size()[1]);
        let all = match &self.window {
            Some(w) => Tensor::f_cat(&[w, input], 1)?,
            None => input.shallow_clone(),
        };
        let total = all.size()[1];
        let model = self.model;
        let fresh = || model.blocks.iter().map(|_| LayerCache::default()).collect();
        let hidden = if total <= block_size {
            if self.caches.is_empty() {
                self.caches = fresh();
            }
            let hidden = self
                .model
                .hidden(input, cached, Some(&mut self.caches), false)?;
            self.window = Some(all);
            hidden
        } else {
            let window = all.f_narrow(1, total - block_size, block_size)?;
            self.caches = fresh();
            let hidden = self
                .model
                .hidden(&window, 0, Some(&mut self.caches), false)?;
            self.window = Some(window);
            hidden
        };
        self.logits(&hidden)
    }

    /// Float32 logits `[batch, vocab]` of the last position of `hidden`.
    fn logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        let last = hidden.f_select(1, -1)?;
        Ok(last
            .f_linear::<Tensor>(&self.model.head, None)?
            .f_to_kind(Kind::Float)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(config: TransformerLmConfig) -> String {
        let vs = nn::VarStore::new(Device::Cpu);
        config
            .build(&vs.root(), &BuildContext::new(65))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn out_of_range_hyperparameters_are_refused_with_key_and_value() {
        let base = TransformerLmConfig::default;
        let err = refused(TransformerLmConfig {
            n_head: 3,
            ..base()
        });
        assert!(err.contains("n_embd = 128 (n_head = 3)"), "{err}");
        let err = refused(TransformerLmConfig {
            n_layer: 0,
            ..base()
        });
        assert!(err.contains("n_layer = 0"), "{err}");
        let err = refused(TransformerLmConfig {
            block_size: -1,
            ..base()
        });
        assert!(err.contains("block_size = -1"), "{err}");
        let err = refused(TransformerLmConfig {
            dropout: 1.0,
            ..base()
        });
        assert!(err.contains("dropout = 1"), "{err}");
        let err = refused(TransformerLmConfig {
            n_embd: 12,
            n_head: 4,
            positions: Positions::Rope,
            ..base()
        });
        assert!(err.contains("positions") && err.contains("= 3"), "{err}");
    }

    #[test]
    fn an_empty_model_section_is_the_reference_quick_config() {
        let config: Box<dyn ModelConfig> =
            serde_json::from_str(r#"{"type": "transformer"}"#).unwrap();
        assert_eq!(
            format!("{config:?}"),
            format!("{:?}", TransformerLmConfig::default())
        );
        let rope: TransformerLmConfig = serde_json::from_str(r#"{"positions": "rope"}"#).unwrap();
        assert_eq!(rope.positions, Positions::Rope);
    }

    #[test]
    fn unknown_keys_and_position_kinds_are_refused() {
        let err = serde_json::from_str::<TransformerLmConfig>(r#"{"n_heads": 4}"#).unwrap_err();
        assert!(err.to_string().contains("n_heads"), "{err}");
        let err =
            serde_json::from_str::<TransformerLmConfig>(r#"{"positions": "rotary"}"#).unwrap_err();
        assert!(err.to_string().contains("learned"), "{err}");
    }

    #[test]
    fn flops_per_token_follow_nanogpts_estimate() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = TransformerLmConfig::default()
            .build(&vs.root(), &BuildContext::new(65))
            .unwrap();
        // N = 65·128 + 4·(2·128 + 12·128²) + 128 = 795,904 (no wpe); 6N + 12·4·128·64.
        assert_eq!(m.flops_per_token(), Some(6.0 * 795_904.0 + 393_216.0));
        let all: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
        assert_eq!(all - 64 * 128, 795_904);
        assert_eq!(m.max_seq_len(), Some(64));
    }
}
