//! `Embedding -> LSTM -> Linear` (`type = "lstm"`).
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::model::check_input;
use crate::recurrent::RecurrentSizes;
use crate::{
    BuildContext, HiddenState, LanguageModel, ModelConfig, ModelError, ModelOutput, OutputHead,
};

/// Configuration of [`LstmLm`] (`type = "lstm"`). Defaults are the GRU seed model's sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LstmLmConfig {
    /// Embedding width. Default 256.
    pub embedding_dim: i64,
    /// LSTM hidden (and cell) size. Default 512.
    pub hidden_size: i64,
    /// Stacked LSTM layers. Default 1.
    pub num_layers: i64,
    /// Dropout on the embeddings, between LSTM layers and on the LSTM output, in `[0, 1)`.
    /// Default 0.
    pub dropout: f64,
    /// The output head is the embedding (Press & Wolf 2017; `word_language_model --tied`): no
    /// `out.weight`, only `out.bias`. Needs `embedding_dim == hidden_size`. Default false.
    pub tie_weights: bool,
}

impl LstmLmConfig {
    /// The sizes the shared recurrent code builds from.
    fn sizes(&self, vocab_size: i64) -> RecurrentSizes {
        RecurrentSizes {
            vocab_size,
            embedding_dim: self.embedding_dim,
            hidden_size: self.hidden_size,
            num_layers: self.num_layers,
            dropout: self.dropout,
            tie_weights: self.tie_weights,
        }
    }
}

impl Default for LstmLmConfig {
    fn default() -> Self {
        Self {
            embedding_dim: 256,
            hidden_size: 512,
            num_layers: 1,
            dropout: 0.0,
            tie_weights: false,
        }
    }
}

#[typetag::serde(name = "lstm")]
impl ModelConfig for LstmLmConfig {
    fn build(
        &self,
        path: &nn::Path,
        context: &BuildContext,
    ) -> Result<Box<dyn LanguageModel>, ModelError> {
        Ok(Box::new(LstmLm::new(path, context.vocab_size, self)?))
    }
}

/// Word- or character-level LSTM language model (PyTorch `word_language_model`, LSTM variant):
/// `Embedding(V, E) -> LSTM(E -> H, layers) -> Linear(H -> V)`.
///
/// Initialisation is PyTorch's default, as for the GRU: embedding `N(0, 1)`; LSTM weights and
/// biases and the output layer `U(-1/sqrt(H), 1/sqrt(H))`.
#[derive(Debug)]
pub struct LstmLm {
    embedding: Tensor,
    lstm_weights: Vec<Tensor>,
    out_weight: Tensor,
    out_bias: Tensor,
    vocab_size: i64,
    config: LstmLmConfig,
}

impl LstmLm {
    /// Creates the variables under `path` with `nn.LSTM`'s names: `embedding.weight`,
    /// `lstm.weight_ih_l0` `[4H, in]`, `lstm.weight_hh_l0` `[4H, H]`, `lstm.bias_ih_l0`,
    /// `lstm.bias_hh_l0` (gates in PyTorch's order input, forget, cell, output) ...,
    /// `out.weight` (untied only), `out.bias`.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for a non-positive size, a dropout outside `[0, 1)`, or
    /// `tie_weights` with `embedding_dim != hidden_size`.
    pub fn new(
        path: &nn::Path,
        vocab_size: i64,
        config: &LstmLmConfig,
    ) -> Result<Self, ModelError> {
        let sizes = config.sizes(vocab_size);
        sizes.validate()?;
        let embedding = sizes.embedding(path);
        let lstm_weights = sizes.cell_weights(path, "lstm", 4);
        let (out_weight, out_bias) = sizes.head(path, &embedding);
        Ok(Self {
            embedding,
            lstm_weights,
            out_weight,
            out_bias,
            vocab_size,
            config: config.clone(),
        })
    }
}

impl LanguageModel for LstmLm {
    fn vocab_size(&self) -> i64 {
        self.vocab_size
    }

    /// `3 · [Σ_layers 2·4·(in·H + H·H) + 2·H·V]`: the four gate projections of the input
    /// (`in` = E for the first layer, H after) and of the state, and the output head, forward
    /// and backward.
    fn flops_per_token(&self) -> Option<f64> {
        Some(self.config.sizes(self.vocab_size).flops_per_token(4))
    }

    /// `h` and `c`, zeros `[layers, batch, hidden]` each.
    fn initial_state(&self, batch_size: i64, device: Device) -> HiddenState {
        let kind = self.out_bias.kind();
        let shape = [self.config.num_layers, batch_size, self.config.hidden_size];
        HiddenState(vec![
            Tensor::zeros(shape, (kind, device)),
            Tensor::zeros(shape, (kind, device)),
        ])
    }

    /// # Shapes
    /// `input` `[batch, seq]` int64; `state` `[h, c]`, each `[layers, batch, hidden]`; `hidden`
    /// `[batch, seq, hidden]`; `head.weight` `[vocab, hidden]` (the embedding when tied),
    /// `head.bias` `[vocab]`.
    ///
    /// # Errors
    /// [`ModelError::BadInput`] for ids that are not int64 `[batch, seq]` or a state that is not
    /// `[h, c]`; libtorch errors (an id outside the vocabulary, a state of the wrong shape).
    fn forward(
        &self,
        input: &Tensor,
        state: &HiddenState,
        train: bool,
    ) -> Result<ModelOutput, ModelError> {
        check_input(input)?;
        let [h0, c0] = state.0.as_slice() else {
            return Err(ModelError::BadInput {
                tensor: "state",
                actual: vec![state.0.len() as i64],
                kind: "tensors".into(),
                expected: "the LSTM state [h, c], each [layers, batch, hidden]".into(),
            });
        };
        let p = self.config.dropout;
        let emb =
            Tensor::f_embedding(&self.embedding, input, -1, false, false)?.f_dropout(p, train)?;
        let (hidden, h, c) = emb.f_lstm(
            &[h0.shallow_clone(), c0.shallow_clone()],
            &self.lstm_weights,
            true,
            self.config.num_layers,
            p,
            train,
            false,
            true,
        )?;
        let hidden = hidden.f_dropout(p, train)?;
        Ok(ModelOutput {
            hidden,
            head: OutputHead {
                weight: self.out_weight.shallow_clone(),
                bias: Some(self.out_bias.shallow_clone()),
            },
            state: HiddenState(vec![h, c]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn shapes_follow_the_config() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = LstmLmConfig {
            embedding_dim: 8,
            hidden_size: 16,
            num_layers: 2,
            ..Default::default()
        };
        let m = cfg.build(&vs.root(), &BuildContext::new(50)).unwrap();
        let x = Tensor::zeros([3, 5], (Kind::Int64, Device::Cpu));
        let out = m
            .forward(&x, &m.initial_state(3, Device::Cpu), false)
            .unwrap();
        assert_eq!(out.hidden.size(), [3, 5, 16]);
        assert_eq!(out.logits().size(), [3, 5, 50]);
        assert_eq!(out.state.0.len(), 2);
        assert_eq!(out.state.0[0].size(), [2, 3, 16]);
        assert_eq!(out.state.0[1].size(), [2, 3, 16]);
        assert_eq!(vs.variables()["lstm.weight_ih_l1"].size(), [64, 16]);
    }

    #[test]
    fn the_state_carries_over_windows() {
        // Two windows with the state carried read like one window of both.
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = LstmLmConfig {
            embedding_dim: 4,
            hidden_size: 8,
            ..Default::default()
        };
        let m = cfg.build(&vs.root(), &BuildContext::new(10)).unwrap();
        let x = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([1, 6]);
        let whole = m
            .forward(&x, &m.initial_state(1, Device::Cpu), false)
            .unwrap();
        let first = m
            .forward(&x.narrow(1, 0, 3), &m.initial_state(1, Device::Cpu), false)
            .unwrap();
        let second = m.forward(&x.narrow(1, 3, 3), &first.state, false).unwrap();
        assert!(second
            .hidden
            .allclose(&whole.hidden.narrow(1, 3, 3), 1e-6, 1e-6, false));
    }

    #[test]
    fn a_gru_state_is_a_clear_error() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = LstmLmConfig::default()
            .build(&vs.root(), &BuildContext::new(10))
            .unwrap();
        let x = Tensor::zeros([1, 2], (Kind::Int64, Device::Cpu));
        let gru_state = HiddenState(vec![Tensor::zeros([1, 1, 512], (Kind::Float, Device::Cpu))]);
        let err = m.forward(&x, &gru_state, false).unwrap_err().to_string();
        assert!(err.contains("[h, c]"), "{err}");
    }

    #[test]
    fn tying_different_widths_names_both() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = LstmLmConfig {
            embedding_dim: 8,
            hidden_size: 16,
            tie_weights: true,
            ..Default::default()
        };
        let err = cfg
            .build(&vs.root(), &BuildContext::new(10))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tie_weights")
                && err.contains("embedding_dim = 8")
                && err.contains("hidden_size = 16"),
            "{err}"
        );
    }
}
