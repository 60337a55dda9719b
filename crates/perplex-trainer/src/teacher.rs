//! A frozen teacher model whose logits feed distillation losses.
use std::path::Path;

use tch::{Device, Tensor};

use perplex_data::Vocabulary;
use perplex_model::HiddenState;

use crate::inference::LoadedModel;
use crate::TrainerError;

/// A teacher: a trained model loaded from a run or checkpoint directory, run without gradients.
#[derive(Debug)]
pub struct Teacher {
    loaded: LoadedModel,
}

impl Teacher {
    /// Loads the teacher in `dir` (a run directory or one of its checkpoints) onto `device`,
    /// checking that its vocabulary is `vocab`.
    ///
    /// # Errors
    /// The errors of [`LoadedModel::load`], and [`TrainerError::Config`] when the vocabularies
    /// differ.
    pub fn load(dir: &Path, vocab: &Vocabulary, device: Device) -> Result<Self, TrainerError> {
        let mut loaded = LoadedModel::load(dir, device)?;
        if loaded.vocab != *vocab {
            return Err(TrainerError::Config {
                source_name: "trainer.teacher".into(),
                message: format!(
                    "the teacher in {} has a vocabulary of {} tokens that differs from the data's ({} tokens)",
                    dir.display(),
                    loaded.vocab.len(),
                    vocab.len()
                ),
            });
        }
        loaded.vs.freeze();
        Ok(Self { loaded })
    }

    /// The teacher's initial state for `batch_size` streams.
    pub fn initial_state(&self, batch_size: i64, device: Device) -> HiddenState {
        self.loaded.model.initial_state(batch_size, device)
    }

    /// Teacher logits `[batch, seq, vocab]` (no gradient) and the next state.
    ///
    /// # Errors
    /// Model errors.
    pub fn logits(
        &self,
        input: &Tensor,
        state: &HiddenState,
    ) -> Result<(Tensor, HiddenState), TrainerError> {
        tch::no_grad(|| {
            let out = self.loaded.model.forward(input, state, false)?;
            Ok((out.logits(), out.state))
        })
    }
}
