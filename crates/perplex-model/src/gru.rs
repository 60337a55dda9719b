//! The reference model: `Embedding -> GRU -> Linear`.
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::model::check_input;
use crate::recurrent::RecurrentSizes;
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
    /// The output head is the embedding (Press & Wolf 2017; `word_language_model --tied`): no
    /// `out.weight`, only `out.bias`. Needs `embedding_dim == hidden_size`. Default false.
    pub tie_weights: bool,
}

impl GruLmConfig {
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

impl Default for GruLmConfig {
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
    embedding: Tensor,
    gru_weights: Vec<Tensor>,
    out_weight: Tensor,
    out_bias: Tensor,
    vocab_size: i64,
    config: GruLmConfig,
}

impl GruLm {
    /// Creates the variables under `path`: `embedding.weight`, `gru.weight_ih_l0` ...,
    /// `out.weight` (untied only), `out.bias` (PyTorch's names, so checkpoints read like a state
    /// dict).
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for a non-positive size, a dropout outside `[0, 1)`, or
    /// `tie_weights` with `embedding_dim != hidden_size`.
    pub fn new(path: &nn::Path, vocab_size: i64, config: &GruLmConfig) -> Result<Self, ModelError> {
        let sizes = config.sizes(vocab_size);
        sizes.validate()?;
        // Variables are drawn in this order (embedding, GRU, head): an untied model starts from
        // the same numbers for a given seed as before `tie_weights` existed.
        let embedding = sizes.embedding(path);
        let gru_weights = sizes.cell_weights(path, "gru", 3);
        let (out_weight, out_bias) = sizes.head(path, &embedding);
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
        Some(self.config.sizes(self.vocab_size).flops_per_token(3))
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
        let emb =
            Tensor::f_embedding(&self.embedding, input, -1, false, false)?.f_dropout(p, train)?;
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
            ..Default::default()
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

    fn tiny(tie_weights: bool) -> GruLmConfig {
        GruLmConfig {
            embedding_dim: 6,
            hidden_size: 6,
            num_layers: 2,
            tie_weights,
            ..Default::default()
        }
    }

    #[test]
    fn a_config_written_before_tie_weights_still_loads_untied() {
        let old = r#"{"type": "gru", "embedding_dim": 8, "hidden_size": 16, "num_layers": 1, "dropout": 0.0}"#;
        let cfg: Box<dyn ModelConfig> = serde_json::from_str(old).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        cfg.build(&vs.root(), &BuildContext::new(10)).unwrap();
        assert!(vs.variables().contains_key("out.weight"));
    }

    #[test]
    fn a_tied_head_is_the_embedding_and_only_out_bias_is_added() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = tiny(true)
            .build(&vs.root(), &BuildContext::new(11))
            .unwrap();
        let names = vs.variables();
        assert!(!names.contains_key("out.weight") && names.contains_key("out.bias"));
        let x = Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]);
        let out = m
            .forward(&x, &m.initial_state(1, Device::Cpu), false)
            .unwrap();
        assert_eq!(
            out.head.weight.data_ptr(),
            names["embedding.weight"].data_ptr()
        );
    }

    /// Tied, the head is the embedding: initialised `U(-0.1, 0.1)` (`word_language_model`),
    /// the first loss of the seed-sized GRU and LSTM is `ln(vocab)` give or take the small
    /// logits, not the ~40 nats that `nn.Embedding`'s `N(0, 1)` rows would give as a head.
    #[test]
    fn a_tied_model_starts_near_the_uniform_loss() {
        let vocab = 10_001;
        let configs: [Box<dyn ModelConfig>; 2] = [
            Box::new(GruLmConfig {
                embedding_dim: 512,
                tie_weights: true,
                ..Default::default()
            }),
            Box::new(crate::LstmLmConfig {
                embedding_dim: 512,
                hidden_size: 512,
                tie_weights: true,
                ..Default::default()
            }),
        ];
        for cfg in configs {
            tch::manual_seed(0);
            let vs = nn::VarStore::new(Device::Cpu);
            let m = cfg.build(&vs.root(), &BuildContext::new(vocab)).unwrap();
            let x = Tensor::randint(vocab, [8, 35], (Kind::Int64, Device::Cpu));
            let y = Tensor::randint(vocab, [8, 35], (Kind::Int64, Device::Cpu));
            let out = m
                .forward(&x, &m.initial_state(8, Device::Cpu), false)
                .unwrap();
            let logits = out.hidden.linear(&out.head.weight, out.head.bias.as_ref());
            let loss = logits
                .view([-1, vocab])
                .cross_entropy_for_logits(&y.view([-1]))
                .double_value(&[]);
            let uniform = (vocab as f64).ln();
            assert!(
                (loss - uniform).abs() < 0.5,
                "{cfg:?}: first loss {loss} vs ln V {uniform}"
            );
            let bias = &vs.variables()["out.bias"];
            assert_eq!(bias.abs().sum(Kind::Double).double_value(&[]), 0.0);
        }
    }

    #[test]
    fn tying_different_widths_names_both() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = GruLmConfig {
            tie_weights: true,
            ..Default::default()
        };
        let err = cfg
            .build(&vs.root(), &BuildContext::new(10))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tie_weights")
                && err.contains("embedding_dim = 256")
                && err.contains("hidden_size = 512"),
            "{err}"
        );
    }
}
