//! The `DataSource` trait: what a trainer needs from a corpus.
use tch::Device;

use crate::{Batches, DataError, LmData, TokenizerKind, Vocabulary};

/// A source of training, validation and (optionally) test batches.
///
/// The trainer talks to data only through this trait, so a user can train on any token stream.
pub trait DataSource: std::fmt::Debug + Send {
    /// The vocabulary the ids refer to.
    fn vocab(&self) -> &Vocabulary;

    /// How text is tokenized (for reports: bits per token or per character).
    fn tokenizer(&self) -> TokenizerKind;

    /// The training loader: batches of int64 `[batch, seq_len]` on `device`; `seed` is the run's
    /// (a loader that draws, such as random windows, draws from it).
    ///
    /// # Errors
    /// [`DataError::SplitTooSmall`] and libtorch errors.
    fn train_batches(&self, device: Device, seed: u64) -> Result<Box<dyn Batches>, DataError>;

    /// Validation windows on `device`.
    ///
    /// # Errors
    /// As [`DataSource::train_batches`].
    fn valid_batches(&self, device: Device) -> Result<Box<dyn Batches>, DataError>;

    /// Test windows on `device`, when there is a test split.
    fn test_batches(&self, device: Device) -> Option<Result<Box<dyn Batches>, DataError>>;
}

impl DataSource for LmData {
    fn vocab(&self) -> &Vocabulary {
        &self.vocab
    }

    fn tokenizer(&self) -> TokenizerKind {
        self.tokenizer
    }

    fn train_batches(&self, device: Device, seed: u64) -> Result<Box<dyn Batches>, DataError> {
        LmData::train_loader(self, device, seed)
    }

    fn valid_batches(&self, device: Device) -> Result<Box<dyn Batches>, DataError> {
        Ok(Box::new(LmData::valid_batches(self, device)?))
    }

    fn test_batches(&self, device: Device) -> Option<Result<Box<dyn Batches>, DataError>> {
        LmData::test_batches(self, device).map(|r| r.map(|b| Box::new(b) as Box<dyn Batches>))
    }
}
