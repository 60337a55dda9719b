//! What the recurrent models (GRU, LSTM) share: the checks of their config, the embedding and
//! the output head, with PyTorch's initialisation (`word_language_model`).
use tch::{nn, Tensor};

use crate::ModelError;

/// The sizes every recurrent language model is built from.
pub(crate) struct RecurrentSizes {
    pub vocab_size: i64,
    pub embedding_dim: i64,
    pub hidden_size: i64,
    pub num_layers: i64,
    pub dropout: f64,
    pub tie_weights: bool,
}

impl RecurrentSizes {
    /// Checks the sizes once, before any variable is made.
    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        let positive = |key, v: i64| {
            if v > 0 {
                Ok(())
            } else {
                Err(ModelError::InvalidConfig {
                    key,
                    value: v.to_string(),
                    expected: "a positive integer",
                })
            }
        };
        positive("vocab_size", self.vocab_size)?;
        positive("embedding_dim", self.embedding_dim)?;
        positive("hidden_size", self.hidden_size)?;
        positive("num_layers", self.num_layers)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::InvalidConfig {
                key: "dropout",
                value: self.dropout.to_string(),
                expected: "a probability in [0, 1)",
            });
        }
        if self.tie_weights && self.embedding_dim != self.hidden_size {
            return Err(ModelError::InvalidConfig {
                key: "tie_weights",
                value: format!(
                    "true with embedding_dim = {} and hidden_size = {}",
                    self.embedding_dim, self.hidden_size
                ),
                expected: "embedding_dim equal to hidden_size (the head is the embedding)",
            });
        }
        Ok(())
    }

    /// `embedding.weight` `[vocab, embedding_dim]`, `N(0, 1)` (`nn.Embedding`'s default).
    pub(crate) fn embedding(&self, path: &nn::Path) -> Tensor {
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        };
        (path / "embedding").var("weight", &[self.vocab_size, self.embedding_dim], init)
    }

    /// `out.weight` `[vocab, hidden]` (or `embedding` itself when tied: a shallow clone, same
    /// storage) and `out.bias` `[vocab]`, `U(-1/sqrt(hidden), 1/sqrt(hidden))` (`nn.Linear`).
    pub(crate) fn head(&self, path: &nn::Path, embedding: &Tensor) -> (Tensor, Tensor) {
        let o = path / "out";
        let init = uniform(self.hidden_size);
        let weight = if self.tie_weights {
            embedding.shallow_clone()
        } else {
            o.var("weight", &[self.vocab_size, self.hidden_size], init)
        };
        (weight, o.var("bias", &[self.vocab_size], init))
    }
}

/// `U(-1/sqrt(fan), 1/sqrt(fan))`: the init of `nn.GRU`, `nn.LSTM` and `nn.Linear`'s bias.
pub(crate) fn uniform(fan: i64) -> nn::Init {
    let k = 1.0 / (fan as f64).sqrt();
    nn::Init::Uniform { lo: -k, up: k }
}
