//! Language models for perplex.
//!
//! A model maps input ids `[batch, seq]` and a recurrent state to final hidden states
//! `[batch, seq, hidden]` plus its output head (weight `[vocab, hidden]`, optional bias `[vocab]`).
//! It does not compute logits itself: the loss decides whether to materialise
//! `[batch, seq, vocab]` logits or to fuse the projection (see `perplex-losses`).
//!
//! Models are built from config through the [`ModelConfig`] trait, registered with `typetag`
//! by the `type` users write under `[model]`, so a plugin crate can add one without touching the
//! trainer:
//!
//! | `type`          | config                  | model                                            |
//! |-----------------|-------------------------|--------------------------------------------------|
//! | `"gru"`         | [`GruLmConfig`]         | [`GruLm`]: `Embedding -> GRU -> Linear` (the seed model) |
//! | `"lstm"`        | [`LstmLmConfig`]        | [`LstmLm`]: `Embedding -> LSTM -> Linear`        |
//! | `"transformer"` | [`TransformerLmConfig`] | [`TransformerLm`]: GPT-style decoder, learned or rotary positions (GPT-2) |
//! | `"llama"`       | [`LlamaLmConfig`]       | [`LlamaLm`]: Llama-family decoder (RMSNorm, SwiGLU, GQA, rotary; Qwen2, Mistral) |
//!
//! `[model] init_from = "DIR"` alone ([`PretrainedConfig`]) reads a transformers directory's
//! `config.json` into one of these and its weights into the model ([`hf`]).
//!
//! Variables carry the PyTorch peers' state-dict names (`gru.weight_ih_l0`,
//! `blocks.0.qkv.weight`, ...), so a `model.safetensors` reads like a PyTorch checkpoint.
//! Generation goes through [`LanguageModel::decoder`]: the recurrent models carry their state,
//! the Transformer keeps a key/value cache.
//!
//! ```no_run
//! use perplex_model::{BuildContext, GruLmConfig, ModelConfig};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let model = GruLmConfig::default().build(&vs.root(), &BuildContext::new(10_001))?;
//! let input = Tensor::zeros([64, 35], (Kind::Int64, Device::Cpu));
//! let state = model.initial_state(64, Device::Cpu);
//! let out = model.forward(&input, &state, true)?;
//! assert_eq!(out.hidden.size(), [64, 35, 512]);
//! let logits = out.logits(); // [64, 35, 10001]
//! # Ok::<(), perplex_model::ModelError>(())
//! ```
//!
//! A Transformer generating: the decoder reads the prompt, then one token at a time.
//!
//! ```
//! use perplex_model::{BuildContext, ModelConfig, TransformerLmConfig};
//! use tch::{nn, Device, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let context = BuildContext::new(65).with_seq_len(64); // refused beyond block_size (64)
//! let model = TransformerLmConfig::default().build(&vs.root(), &context)?;
//! let mut decoder = model.decoder(1, Device::Cpu);
//! let prompt = Tensor::from_slice(&[20i64, 43, 50]).view([1, 3]);
//! let logits = tch::no_grad(|| decoder.feed(&prompt))?; // [1, 65], float32
//! let next = logits.argmax(-1, true); // [1, 1]: feed it back
//! let logits = tch::no_grad(|| decoder.feed(&next))?;
//! assert_eq!(logits.size(), [1, 65]);
//! # Ok::<(), perplex_model::ModelError>(())
//! ```
#![warn(missing_docs)]

pub mod error;
pub mod gru;
pub mod hf;
pub mod llama;
pub mod lstm;
pub mod model;
pub mod pretrained;
mod recurrent;
mod rotary;
pub mod transformer;

pub use error::ModelError;
pub use gru::{GruLm, GruLmConfig};
pub use llama::{LlamaLm, LlamaLmConfig, RopeScaling};
pub use lstm::{LstmLm, LstmLmConfig};
pub use model::{
    BuildContext, Decoder, HiddenState, LanguageModel, ModelConfig, ModelOutput, OutputHead,
};
pub use pretrained::PretrainedConfig;
pub use transformer::{Activation, Positions, TransformerLm, TransformerLmConfig};
