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
        let positive = check_positive;
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

    /// The cell's variables under `path / cell` in PyTorch's order and names
    /// (`weight_ih_l{k}` `[gates·H, in]`, `weight_hh_l{k}` `[gates·H, H]`, `bias_ih_l{k}`,
    /// `bias_hh_l{k}` `[gates·H]`; `in` = E for the first layer, H after), all
    /// `U(-1/sqrt(H), 1/sqrt(H))`: `gates` is 3 for `nn.GRU`, 4 for `nn.LSTM`.
    pub(crate) fn cell_weights(&self, path: &nn::Path, cell: &str, gates: i64) -> Vec<Tensor> {
        let (e, h) = (self.embedding_dim, self.hidden_size);
        let p = path / cell;
        let mut weights = Vec::with_capacity(4 * self.num_layers as usize);
        for layer in 0..self.num_layers {
            let input = if layer == 0 { e } else { h };
            let g = gates * h;
            weights.push(p.var(&format!("weight_ih_l{layer}"), &[g, input], uniform(h)));
            weights.push(p.var(&format!("weight_hh_l{layer}"), &[g, h], uniform(h)));
            weights.push(p.var(&format!("bias_ih_l{layer}"), &[g], uniform(h)));
            weights.push(p.var(&format!("bias_hh_l{layer}"), &[g], uniform(h)));
        }
        weights
    }

    /// Training FLOPs per token, `3 · [Σ_layers 2·gates·(in·H + H·H) + 2·H·V]`: the gate
    /// projections of the input (`in` = E for the first layer, H after) and of the state, and
    /// the output head, forward and backward (3×, multiply-add = 2).
    pub(crate) fn flops_per_token(&self, gates: i64) -> f64 {
        let (e, h, v) = (
            self.embedding_dim as f64,
            self.hidden_size as f64,
            self.vocab_size as f64,
        );
        let cell: f64 = (0..self.num_layers)
            .map(|l| {
                let input = if l == 0 { e } else { h };
                2.0 * gates as f64 * (input * h + h * h)
            })
            .sum();
        3.0 * (cell + 2.0 * h * v)
    }

    /// `embedding.weight` `[vocab, embedding_dim]`: `N(0, 1)` (`nn.Embedding`'s default, as the
    /// seed reference `pytorch_gru_lm.py`), or `U(-0.1, 0.1)` when tied (`word_language_model`'s
    /// `init_weights`). Tied, the same matrix is the output head: `N(0, 1)` rows would give
    /// logits of standard deviation about `sqrt(hidden) / 2` (~11 for 512) and a first loss near
    /// 40 nats instead of `ln(vocab)`.
    pub(crate) fn embedding(&self, path: &nn::Path) -> Tensor {
        let init = if self.tie_weights {
            nn::Init::Uniform {
                lo: -TIED_INIT_RANGE,
                up: TIED_INIT_RANGE,
            }
        } else {
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            }
        };
        (path / "embedding").var("weight", &[self.vocab_size, self.embedding_dim], init)
    }

    /// `out.weight` `[vocab, hidden]` (or `embedding` itself when tied: a shallow clone, same
    /// storage) and `out.bias` `[vocab]`, `U(-1/sqrt(hidden), 1/sqrt(hidden))` (`nn.Linear`);
    /// tied, the bias starts at 0 (`word_language_model`'s `init_weights`).
    pub(crate) fn head(&self, path: &nn::Path, embedding: &Tensor) -> (Tensor, Tensor) {
        let o = path / "out";
        let init = uniform(self.hidden_size);
        if self.tie_weights {
            let bias = o.var("bias", &[self.vocab_size], nn::Init::Const(0.0));
            return (embedding.shallow_clone(), bias);
        }
        let weight = o.var("weight", &[self.vocab_size, self.hidden_size], init);
        (weight, o.var("bias", &[self.vocab_size], init))
    }
}

/// The tied embedding's init range, `U(-0.1, 0.1)`: PyTorch `word_language_model`'s
/// `initrange`.
const TIED_INIT_RANGE: f64 = 0.1;

/// [`ModelError::InvalidConfig`] naming `key` unless `value > 0`.
pub(crate) fn check_positive(key: &'static str, value: i64) -> Result<(), ModelError> {
    if value > 0 {
        return Ok(());
    }
    Err(ModelError::InvalidConfig {
        key,
        value: value.to_string(),
        expected: "a positive integer",
    })
}

/// `U(-1/sqrt(fan), 1/sqrt(fan))`: the init of `nn.GRU`, `nn.LSTM` and `nn.Linear`'s bias.
pub(crate) fn uniform(fan: i64) -> nn::Init {
    let k = 1.0 / (fan as f64).sqrt();
    nn::Init::Uniform { lo: -k, up: k }
}
