//! Losses for language models: the objectives perplex trains with.
//!
//! Every loss implements [`Loss`], is registered with `typetag` under the snake_case name users
//! write in config (`[loss] type = "softmax_cross_entropy"`), and lists itself for
//! `perplex losses` through [`registry`]. A loss sees what the model produced ([`LossInput`]:
//! hidden states and output head, logits computed lazily) and returns a [`LossOutput`]: the loss,
//! the number of tokens it normalised by, and named metrics. [`Loss::normalizer`] reports the
//! denominator of its `mean` for any targets, so that gradient accumulation and data-parallel
//! training divide once by the whole step's denominator ([`normalizer`]).
//!
//! # Losses
//!
//! | `type` | config | computes |
//! |---|---|---|
//! | `softmax_cross_entropy` | [`SoftmaxCrossEntropy`] | `F.cross_entropy` on logits: weights, label smoothing, soft targets |
//! | `cross_entropy` | [`CrossEntropy`] | `-Σ p log clamp(q, eps)` on probabilities |
//! | `nll` | [`Nll`] | `F.nll_loss` on log-probabilities |
//! | `linear_cross_entropy` | [`LinearCrossEntropy`] | output projection + cross-entropy (+ z-loss) in token chunks, exact gradients |
//! | `z_loss` | [`ZLoss`] | `coefficient · logsumexp(z)²` (PaLM) |
//! | `focal` | [`Focal`] | `-α_t (1 - p_t)^γ log p_t` (Lin et al. 2017) |
//! | `distillation_kl` | [`DistillationKl`] | `T² · KL(softmax(t/T) ‖ softmax(z/T))` (Hinton et al. 2015) |
//! | `unlikelihood` | [`Unlikelihood`] | CE + `α Σ -log(1 - p_c)` over earlier targets (Welleck et al. 2019) |
//! | `banned_tokens` | [`BannedTokens`] | CE + `α Σ -log(1 - p_b)` over configured ids |
//! | `weighted_sum` | [`WeightedSum`] | `Σ weight_i · loss_i`, each term logged as a metric |
//!
//! Conventions shared by all: positions whose target is `ignore_index` are not counted; `mean`
//! divides by the counted tokens (or [`LossInput::normalizer`]) and gives 0.0 with zero gradient
//! when nothing is counted; bf16/f16 predictions give a float32 loss.
//!
//! ```
//! use perplex_losses::{Loss, LossInput, SoftmaxCrossEntropy};
//! use tch::{Device, Kind, Tensor};
//!
//! let logits = Tensor::randn([2, 3, 10], (Kind::Float, Device::Cpu)); // [batch, seq, vocab]
//! let targets = Tensor::from_slice(&[1i64, 2, -100, 4, 5, 6]).view([2, 3]);
//! let loss: Box<dyn Loss> = Box::new(SoftmaxCrossEntropy::default());
//! let out = loss.forward(&LossInput::from_logits(&logits, &targets))?;
//! assert_eq!(out.count.int64_value(&[]), 5); // the ignored position is not counted
//! # Ok::<(), perplex_losses::LossError>(())
//! ```
#![warn(missing_docs)]

mod common;
pub mod error;
pub mod input;
pub mod metrics;
pub mod normalizer;
pub mod output;
pub mod probe;
pub mod registry;
pub mod testing;

// Losses, one module each (`type` name in brackets).
pub mod banned_tokens; // [banned_tokens] cross-entropy + penalty on configured token ids
pub mod cross_entropy; // [cross_entropy] H(p, q) on probabilities
pub mod distillation_kl; // [distillation_kl] T^2 KL(teacher || student) (Hinton et al. 2015)
pub mod focal; // [focal] -(1 - p_t)^gamma log p_t (Lin et al. 2017)
pub mod linear_cross_entropy; // [linear_cross_entropy] output projection + CE in token chunks
pub mod nll; // [nll] negative log-likelihood on log-probabilities
pub mod softmax_cross_entropy; // [softmax_cross_entropy] torch F.cross_entropy on logits
pub mod unlikelihood; // [unlikelihood] CE + penalty on earlier targets (Welleck et al. 2019)
pub mod weighted_sum; // [weighted_sum] Σ weight_i · loss_i
pub mod z_loss; // [z_loss] coefficient · logsumexp(logits)^2 (PaLM)

pub use banned_tokens::BannedTokens;
pub use cross_entropy::CrossEntropy;
pub use distillation_kl::DistillationKl;
pub use error::LossError;
pub use focal::Focal;
pub use input::LossInput;
pub use linear_cross_entropy::LinearCrossEntropy;
pub use nll::Nll;
pub use normalizer::counted_normalizer;
pub use output::{LossOutput, Reduction};
pub use probe::probe;
pub use registry::{registered_losses, LossInfo};
pub use softmax_cross_entropy::SoftmaxCrossEntropy;
pub use unlikelihood::Unlikelihood;
pub use weighted_sum::{Term, WeightedSum};
pub use z_loss::ZLoss;

/// Re-exported so plugin crates register their [`LossInfo`] with the same `inventory`.
pub use inventory;

/// A training objective for language models.
///
/// Register an implementation with `#[typetag::serde(name = "my_loss")]` on the `impl` block and
/// `inventory::submit! { LossInfo { name: "my_loss", description: "..." } }`; the trainer then
/// finds it by name in `[loss] type = "my_loss"` without naming it.
#[typetag::serde(tag = "type")]
pub trait Loss: std::fmt::Debug + Send + Sync {
    /// Computes the loss.
    ///
    /// # Errors
    /// [`LossError`] for inputs of the wrong shape, dtype or range, and for bad options.
    fn forward(&self, input: &LossInput) -> Result<LossOutput, LossError>;

    /// The denominators this loss's `mean` divides by for `targets` (int64 `[batch, seq]`, or
    /// probabilities `[batch, seq, vocab]`): float64 `[normalizer_terms()]` on the targets'
    /// device, each a sum over positions (counted tokens, or the sum of the targets' class
    /// weights; see [`counted_normalizer`]).
    ///
    /// Gradient accumulation sums it over the micro-batches of a step (data-parallel training
    /// also over ranks) and gives the sum back with [`LossInput::with_normalizer`], so the summed
    /// micro-batch losses and gradients equal those of the whole batch in one piece.
    ///
    /// # Errors
    /// libtorch errors.
    fn normalizer(&self, targets: &tch::Tensor) -> Result<tch::Tensor, LossError>;

    /// How many denominators [`Loss::normalizer`] returns: 1, or one per term of a composite loss.
    fn normalizer_terms(&self) -> usize {
        1
    }

    /// The target value this loss does not count (`ignore_index`); evaluation skips the same
    /// positions. Default -100, PyTorch's.
    fn ignore_index(&self) -> i64 {
        -100
    }
}
