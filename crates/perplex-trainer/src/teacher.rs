//! A frozen teacher model whose logits feed distillation losses.
use std::path::{Path, PathBuf};

use tch::{nn, Device, Tensor};

use perplex_data::Vocabulary;
use perplex_model::{HiddenState, LanguageModel};

use crate::run_dir::files;
use crate::{RunConfig, TrainerError};

/// A teacher: a trained model loaded from a run or checkpoint directory, run without gradients.
#[derive(Debug)]
pub struct Teacher {
    _vs: nn::VarStore,
    model: Box<dyn LanguageModel>,
}

/// Finds `name` in `dir` or up to two parent directories (a checkpoint inside a run).
pub fn find_upwards(dir: &Path, name: &str) -> Option<PathBuf> {
    dir.ancestors()
        .take(3)
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

impl Teacher {
    /// Loads the teacher in `dir` (a run directory or one of its checkpoints) onto `device`,
    /// checking that its vocabulary is `vocab`.
    ///
    /// # Errors
    /// [`TrainerError::Io`] for missing files, [`TrainerError::Config`] when the vocabularies
    /// differ.
    pub fn load(dir: &Path, vocab: &Vocabulary, device: Device) -> Result<Self, TrainerError> {
        let missing = |name: &str| TrainerError::Io {
            path: dir.join(name),
            message: format!("teacher directory has no {name} (here or in its parents)"),
        };
        let config_path = find_upwards(dir, files::CONFIG).ok_or_else(|| missing(files::CONFIG))?;
        let vocab_path = find_upwards(dir, files::VOCAB).ok_or_else(|| missing(files::VOCAB))?;
        let teacher_vocab = Vocabulary::load(&vocab_path)?;
        if teacher_vocab != *vocab {
            return Err(TrainerError::Config {
                source_name: "trainer.teacher".into(),
                message: format!(
                    "the teacher's vocabulary ({} tokens, {}) differs from the data's ({} tokens)",
                    teacher_vocab.len(),
                    vocab_path.display(),
                    vocab.len()
                ),
            });
        }
        let config = RunConfig::load(Some(&config_path), &[])?;
        let mut vs = nn::VarStore::new(device);
        let model = config.model.build(&vs.root(), vocab.len() as i64)?;
        let weights = dir.join(files::WEIGHTS);
        vs.load(&weights)
            .map_err(|e| TrainerError::io(&weights, e))?;
        vs.freeze();
        Ok(Self { _vs: vs, model })
    }

    /// The teacher's initial state for `batch_size` streams.
    pub fn initial_state(&self, batch_size: i64, device: Device) -> HiddenState {
        self.model.initial_state(batch_size, device)
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
            let out = self.model.forward(input, state, false)?;
            Ok((out.logits(), out.state))
        })
    }
}
