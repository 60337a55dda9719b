//! The reference model: `Embedding -> GRU -> Linear`.
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::model::check_input;
use crate::{
    BuildContext, HiddenState, LanguageModel, ModelConfig, ModelError, ModelOutput, OutputHead,
};

/// Configuration of [`GruLm`] (`type = "gru"`). Defaults are the seed model's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GruLmConfig {
    /// Embedding width. Default 256.
    pub embedding_dim: i64,
    /// GRU hidden size. Default 512.
    pub hidden_size: i64,
    /// Stacked GRU layers. Default 1.
    pub num_layers: i64,
    /// Dropout on the embeddings, between GRU layers and on the GRU output, in `[0, 1)`.
    /// Default 0.
    pub dropout: f64,
}

impl Default for GruLmConfig {
    fn default() -> Self {
        Self {
            embedding_dim: 256,
            hidden_size: 512,
            num_layers: 1,
            dropout: 0.0,
        }
    }
}

#[typetag::serde(name = "gru")]
impl ModelConfig for GruLmConfig {
    fn build(
        &self,
        path: &nn::Path,
        context: &BuildContext,
    ) -> Result<Box<dyn LanguageModel>, ModelError> {
        Ok(Box::new(GruLm::new(path, context.vocab_size, self)?))
    }
}

/// Word- or character-level GRU language model (PyTorch `word_language_model`, GRU variant):
/// `Embedding(V, E) -> GRU(E -> H, layers) -> Linear(H -> V)`.
///
/// Initialisation is PyTorch's: embedding `N(0, 1)`; GRU weights and biases and the output
/// layer `U(-1/sqrt(fan), 1/sqrt(fan))` (`nn.GRU`, `nn.Linear` defaults), so a perplex run and the
/// PyTorch reference start from the same distribution.
#[derive(Debug)]
pub struct GruLm {
    embedding: nn::Embedding,
    gru_weights: Vec<Tensor>,
    out_weight: Tensor,
    out_bias: Tensor,
    vocab_size: i64,
    config: GruLmConfig,
}

impl GruLm {
    /// Creates the variables under `path`: `embedding.weight`, `gru.weight_ih_l0` ...,
    /// `out.weight`, `out.bias` (PyTorch's names, so checkpoints read like a state dict).
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for a non-positive size or a dropout outside `[0, 1)`.
    pub fn new(path: &nn::Path, vocab_size: i64, config: &GruLmConfig) -> Result<Self, ModelError> {
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
        positive("vocab_size", vocab_size)?;
        positive("embedding_dim", config.embedding_dim)?;
        positive("hidden_size", config.hidden_size)?;
        positive("num_layers", config.num_layers)?;
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(ModelError::InvalidConfig {
                key: "dropout",
                value: config.dropout.to_string(),
                expected: "a probability in [0, 1)",
            });
        }
        let (e, h) = (config.embedding_dim, config.hidden_size);
        let embedding = nn::embedding(
            path / "embedding",
            vocab_size,
            e,
            nn::EmbeddingConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
                ..Default::default()
            },
        );
        let uniform = |fan: i64| {
            let k = 1.0 / (fan as f64).sqrt();
            nn::Init::Uniform { lo: -k, up: k }
        };
        let g = path / "gru";
        let mut gru_weights = Vec::new();
        for layer in 0..config.num_layers {
            let input = if layer == 0 { e } else { h };
            gru_weights.push(g.var(&format!("weight_ih_l{layer}"), &[3 * h, input], uniform(h)));
            gru_weights.push(g.var(&format!("weight_hh_l{layer}"), &[3 * h, h], uniform(h)));
            gru_weights.push(g.var(&format!("bias_ih_l{layer}"), &[3 * h], uniform(h)));
            gru_weights.push(g.var(&format!("bias_hh_l{layer}"), &[3 * h], uniform(h)));
        }
        let o = path / "out";
        let out_weight = o.var("weight", &[vocab_size, h], uniform(h));
        let out_bias = o.var("bias", &[vocab_size], uniform(h));
        Ok(Self {
            embedding,
            gru_weights,
            out_weight,
            out_bias,
            vocab_size,
            config: config.clone(),
        })
    }
}

impl LanguageModel for GruLm {
    fn vocab_size(&self) -> i64 {
        self.vocab_size
    }

    /// `3 · [Σ_layers 2·3·(in·H + H·H) + 2·H·V]`: the three gate projections of the input
    /// (`in` = E for the first layer, H after) and of the state, and the output head, forward
    /// and backward. Seed word model (E 256, H 512, V 10001): 37.8 MFLOP per token.
    fn flops_per_token(&self) -> Option<f64> {
        let c = &self.config;
        let (e, h, v) = (
            c.embedding_dim as f64,
            c.hidden_size as f64,
            self.vocab_size as f64,
        );
        let gru: f64 = (0..c.num_layers)
            .map(|l| {
                let input = if l == 0 { e } else { h };
                2.0 * 3.0 * (input * h + h * h)
            })
            .sum();
        Some(3.0 * (gru + 2.0 * h * v))
    }

    fn initial_state(&self, batch_size: i64, device: Device) -> HiddenState {
        let kind = self.out_weight.kind();
        let shape = [self.config.num_layers, batch_size, self.config.hidden_size];
        HiddenState(vec![Tensor::zeros(shape, (kind, device))])
    }

    fn forward(
        &self,
        input: &Tensor,
        state: &HiddenState,
        train: bool,
    ) -> Result<ModelOutput, ModelError> {
        check_input(input)?;
        let h0 = state.0.first().ok_or_else(|| ModelError::BadInput {
            tensor: "state",
            actual: vec![],
            kind: "empty".into(),
            expected: "the GRU hidden state h [layers, batch, hidden]".into(),
        })?;
        let p = self.config.dropout;
        // The fallible form of `Embedding::forward` (built with the default padding_idx -1,
        // scale_grad_by_freq false, sparse false): an id outside the vocabulary is an error,
        // not a panic.
        let emb = Tensor::f_embedding(&self.embedding.ws, input, -1, false, false)?
            .f_dropout(p, train)?;
        let (hidden, h) = emb.f_gru(
            h0,
            &self.gru_weights,
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
            state: HiddenState(vec![h]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn flops_per_token_of_the_seed_word_model_match_the_benchmark_formula() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = GruLmConfig::default()
            .build(&vs.root(), &BuildContext::new(10001))
            .unwrap();
        // Per step of the seed batch: 15.9 + 68.8 = 84.7 GFLOP for 64 × 35 = 2240 tokens.
        let per_step = m.flops_per_token().unwrap() * 2240.0;
        assert!((per_step / 1e9 - 84.7).abs() < 0.05, "{per_step}");
    }

    #[test]
    fn shapes_follow_the_config() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = GruLmConfig {
            embedding_dim: 8,
            hidden_size: 16,
            num_layers: 2,
            dropout: 0.0,
        };
        let m = cfg.build(&vs.root(), &BuildContext::new(50)).unwrap();
        let x = Tensor::zeros([3, 5], (Kind::Int64, Device::Cpu));
        let out = m
            .forward(&x, &m.initial_state(3, Device::Cpu), false)
            .unwrap();
        assert_eq!(out.hidden.size(), [3, 5, 16]);
        assert_eq!(out.logits().size(), [3, 5, 50]);
        assert_eq!(out.state.0[0].size(), [2, 3, 16]);
    }

    #[test]
    fn float_input_is_a_clear_error() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = GruLmConfig::default()
            .build(&vs.root(), &BuildContext::new(10))
            .unwrap();
        let x = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let err = m
            .forward(&x, &m.initial_state(2, Device::Cpu), false)
            .unwrap_err();
        assert!(err.to_string().contains("int64 token ids"), "{err}");
    }

    #[test]
    fn an_id_outside_the_vocabulary_is_an_error_without_a_cpp_backtrace() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = GruLmConfig {
            embedding_dim: 4,
            hidden_size: 8,
            ..Default::default()
        };
        let m = cfg.build(&vs.root(), &BuildContext::new(10)).unwrap();
        let x = Tensor::from_slice(&[1i64, 10]).view([1, 2]);
        let err = m
            .forward(&x, &m.initial_state(1, Device::Cpu), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("index out of range"), "{err}");
        assert!(
            !err.contains("frame #") && !err.contains("Exception raised from"),
            "{err}"
        );
    }

    #[test]
    fn negative_hidden_size_is_rejected() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = GruLmConfig {
            hidden_size: -1,
            ..Default::default()
        };
        assert!(cfg
            .build(&vs.root(), &BuildContext::new(10))
            .unwrap_err()
            .to_string()
            .contains("hidden_size"));
    }
}
