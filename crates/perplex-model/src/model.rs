//! The `LanguageModel` trait and what it returns.
use std::fmt::Debug;

use tch::{nn, Device, Tensor};

use crate::ModelError;

/// The recurrent state a model carries from one BPTT window to the next (for a GRU, `h` of shape
/// `[layers, batch, hidden]`). Opaque to the trainer, which detaches, splits and joins it.
///
/// Convention (PyTorch's for `h` and `c`): the batch is dimension 1 of every tensor.
#[derive(Debug)]
pub struct HiddenState(pub Vec<Tensor>);

impl HiddenState {
    /// Splits the batch (dimension 1 of every tensor, `[layers, batch, hidden]` for the GRU)
    /// into `parts` slices of `batch / parts` rows, for gradient accumulation over
    /// micro-batches. `parts` must divide the batch size (the trainer checks `accumulate`);
    /// otherwise libtorch's `chunk` gives fewer, unequal slices.
    pub fn chunk(&self, parts: i64) -> Vec<HiddenState> {
        let mut out: Vec<Vec<Tensor>> = (0..parts).map(|_| Vec::new()).collect();
        for t in &self.0 {
            for (i, c) in t.chunk(parts, 1).into_iter().enumerate() {
                out[i].push(c);
            }
        }
        out.into_iter().map(HiddenState).collect()
    }

    /// Joins slices made by [`HiddenState::chunk`] back along the batch (dimension 1). One part
    /// is returned as is (shallow clones, no copy).
    ///
    /// # Panics
    /// If the parts hold different numbers of tensors, or shapes that do not concatenate.
    pub fn cat(parts: &[HiddenState]) -> HiddenState {
        if let [one] = parts {
            return HiddenState(one.0.iter().map(Tensor::shallow_clone).collect());
        }
        let n = parts.first().map(|p| p.0.len()).unwrap_or(0);
        HiddenState(
            (0..n)
                .map(|i| Tensor::cat(&parts.iter().map(|p| &p.0[i]).collect::<Vec<_>>(), 1))
                .collect(),
        )
    }

    /// The same state cut from the autograd graph (truncated BPTT).
    pub fn detach(&self) -> Self {
        Self(self.0.iter().map(Tensor::detach).collect())
    }

    /// A stateless model's state.
    pub fn none() -> Self {
        Self(Vec::new())
    }
}

/// The output projection of a language model: `logits = hidden @ weight^T + bias`.
#[derive(Debug)]
pub struct OutputHead {
    /// `[vocab, hidden]`, the model's own variable (gradients flow into it).
    pub weight: Tensor,
    /// `[vocab]`, if the head has a bias.
    pub bias: Option<Tensor>,
}

/// What a forward pass produced.
#[derive(Debug)]
pub struct ModelOutput {
    /// Final hidden states, `[batch, seq, hidden]`, in the model's dtype.
    pub hidden: Tensor,
    /// The output head that maps `hidden` to vocabulary logits.
    pub head: OutputHead,
    /// The state after the last position, to feed to the next window.
    pub state: HiddenState,
}

impl ModelOutput {
    /// Materialises the logits `[batch, seq, vocab]` (`torch.nn.functional.linear`).
    pub fn logits(&self) -> Tensor {
        self.hidden
            .linear(&self.head.weight, self.head.bias.as_ref())
    }
}

/// A next-token language model.
///
/// Modelled on tch's `RNN` trait: the state is explicit, so the caller decides where to carry it
/// and where to detach it.
pub trait LanguageModel: Debug + Send {
    /// Size of the vocabulary the head predicts over.
    fn vocab_size(&self) -> i64;

    /// The state for the start of `batch_size` independent streams (zeros for a GRU).
    fn initial_state(&self, batch_size: i64, device: Device) -> HiddenState;

    /// Runs the model on `input` (int64 ids `[batch, seq]`) from `state`.
    ///
    /// `train` enables dropout.
    ///
    /// # Errors
    /// [`ModelError::BadInput`] when `input` is not a 2-D int64 tensor, or libtorch errors.
    fn forward(
        &self,
        input: &Tensor,
        state: &HiddenState,
        train: bool,
    ) -> Result<ModelOutput, ModelError>;

    /// Training FLOPs per target token: forward and backward (≈ 3 × forward), a multiply-add
    /// counted as 2, element-wise work left out (the convention of nanoGPT's `estimate_mfu` and
    /// the PaLM paper's model FLOP utilisation). With tokens/s it gives achieved FLOP/s; `None`
    /// when the model does not say.
    fn flops_per_token(&self) -> Option<f64> {
        None
    }

    /// The longest window the model can read (a Transformer's `block_size`); `None` when any
    /// length will do (a recurrent model).
    fn max_seq_len(&self) -> Option<i64> {
        None
    }

    /// A decoder for generation over `batch_size` streams: it is fed the prompt, then each
    /// sampled token, and returns the next token's logits. The default carries the recurrent
    /// state from one call of [`LanguageModel::forward`] to the next (right for a recurrent
    /// model); an attention model returns one with a key/value cache or a cropped window.
    fn decoder<'a>(&'a self, batch_size: i64, device: Device) -> Box<dyn Decoder + 'a> {
        Box::new(RecurrentDecoder {
            state: self.initial_state(batch_size, device),
            model: self,
        })
    }
}

/// Incremental decoding for generation (see [`LanguageModel::decoder`]).
pub trait Decoder {
    /// Reads `input` (int64 ids `[batch, n]`, `n >= 1`: the prompt first, then one token at a
    /// time) after everything fed before, and returns the logits of the token that follows,
    /// float32 `[batch, vocab]`. Run it under `tch::no_grad`.
    ///
    /// # Errors
    /// [`ModelError::BadInput`] for ids that are not int64 `[batch, n]`, and libtorch errors.
    fn feed(&mut self, input: &Tensor) -> Result<Tensor, ModelError>;
}

/// The default decoder: the model's recurrent state carried from one window to the next.
struct RecurrentDecoder<'a, M: LanguageModel + ?Sized> {
    model: &'a M,
    state: HiddenState,
}

impl<M: LanguageModel + ?Sized> Decoder for RecurrentDecoder<'_, M> {
    fn feed(&mut self, input: &Tensor) -> Result<Tensor, ModelError> {
        let out = self.model.forward(input, &self.state, false)?;
        let last = out.hidden.f_select(1, -1)?;
        let logits = last
            .f_linear(&out.head.weight, out.head.bias.as_ref())?
            .f_to_kind(tch::Kind::Float)?;
        self.state = out.state;
        Ok(logits)
    }
}

/// What a model is built for: known only once the data is loaded and the device chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuildContext {
    /// Size of the vocabulary the head predicts over.
    pub vocab_size: i64,
    /// The longest window the model will be trained on (`data.seq_len`); a model with a bounded
    /// context (a Transformer's `block_size`) refuses a longer one. 0 when unknown.
    pub seq_len: i64,
    /// Where the variables live.
    pub device: Device,
}

impl BuildContext {
    /// A context for `vocab_size` tokens on the CPU, with no window length.
    pub fn new(vocab_size: i64) -> Self {
        Self {
            vocab_size,
            seq_len: 0,
            device: Device::Cpu,
        }
    }

    /// The same context with training windows of `seq_len` tokens.
    pub fn with_seq_len(mut self, seq_len: i64) -> Self {
        self.seq_len = seq_len;
        self
    }

    /// The same context on `device`.
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }
}

/// A model's configuration: the `[model]` section, picked by `type`.
///
/// Register a new model in any crate with `#[typetag::serde(name = "my_model")] impl ModelConfig`.
#[typetag::serde(tag = "type")]
pub trait ModelConfig: Debug + Send + Sync {
    /// Creates the model's variables under `path` (on `path`'s device) for the vocabulary and
    /// window length of `context`, and returns the model.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for an out-of-range hyperparameter, or a `seq_len` the model
    /// cannot read.
    fn build(
        &self,
        path: &nn::Path,
        context: &BuildContext,
    ) -> Result<Box<dyn LanguageModel>, ModelError>;

    /// The transformers directory whose weights a new run starts from (`[model] init_from`),
    /// read by [`crate::hf::load_weights`] after the model is built. Default none.
    fn init_from(&self) -> Option<&std::path::Path> {
        None
    }

    /// This model in transformers' format (checkpoint names and layouts, `config.json`), for
    /// `init_from` and `perplex export --format hf`; `None` when it has none (the recurrent
    /// models).
    fn hf_format(&self) -> Option<Box<dyn crate::hf::HfFormat>> {
        None
    }

    /// The concrete config this one stands for: `[model] init_from = DIR` alone reads `DIR`'s
    /// `config.json` ([`crate::hf::resolve`]). `None` for a config that is concrete already.
    ///
    /// # Errors
    /// [`ModelError::Pretrained`] when the directory's config cannot be used, naming the key.
    fn resolve(&self) -> Result<Option<Box<dyn ModelConfig>>, ModelError> {
        Ok(None)
    }
}

pub(crate) fn check_input(input: &Tensor) -> Result<(), ModelError> {
    if input.dim() != 2 || input.kind() != tch::Kind::Int64 {
        return Err(ModelError::BadInput {
            tensor: "input",
            actual: input.size(),
            kind: format!("{:?}", input.kind()),
            expected: "int64 token ids [batch, seq]".into(),
        });
    }
    Ok(())
}
