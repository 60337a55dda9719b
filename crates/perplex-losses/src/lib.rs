//! Losses for language models: the objectives perplex trains with.
//!
//! Every loss implements [`Loss`], is registered with `typetag` under the snake_case name users
//! write in config (`[loss] type = "softmax_cross_entropy"`), and lists itself for
//! `perplex losses` through [`registry`]. A loss sees what the model produced ([`LossInput`]:
//! hidden states and output head, logits computed lazily) and returns a [`LossOutput`]: the loss,
//! the number of tokens it normalised by, and named metrics.
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
pub mod cross_entropy;
pub mod error;
pub mod input;
pub mod metrics;
pub mod nll;
pub mod output;
pub mod registry;
pub mod softmax_cross_entropy;

pub use cross_entropy::CrossEntropy;
pub use error::LossError;
pub use input::LossInput;
pub use nll::Nll;
pub use output::{LossOutput, Reduction};
pub use registry::{registered_losses, LossInfo};
pub use softmax_cross_entropy::SoftmaxCrossEntropy;

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
}
