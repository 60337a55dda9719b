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
}

/// A model's configuration: the `[model]` section, picked by `type`.
///
/// Register a new model in any crate with `#[typetag::serde(name = "my_model")] impl ModelConfig`.
#[typetag::serde(tag = "type")]
pub trait ModelConfig: Debug + Send + Sync {
    /// Creates the model's variables under `path` and returns the model.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for an out-of-range hyperparameter.
    fn build(&self, path: &nn::Path, vocab_size: i64)
        -> Result<Box<dyn LanguageModel>, ModelError>;
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
