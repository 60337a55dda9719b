//! The `DataSource` trait: what a trainer needs from a corpus.
use tch::Device;

use crate::{BpttBatches, DataError, LmData, TokenizerKind, Vocabulary};

/// A source of training, validation and (optionally) test batches.
///
/// The trainer talks to data only through this trait, so a user can train on any token stream.
pub trait DataSource: std::fmt::Debug + Send {
    /// The vocabulary the ids refer to.
    fn vocab(&self) -> &Vocabulary;

    /// How text is tokenized (for reports: bits per token or per character).
    fn tokenizer(&self) -> TokenizerKind;

    /// Training windows, int64 `[batch, seq_len]` each, on `device`.
    ///
    /// # Errors
    /// [`DataError::SplitTooSmall`] and libtorch errors.
    fn train_batches(&self, device: Device) -> Result<BpttBatches, DataError>;

    /// Validation windows on `device`.
    ///
    /// # Errors
    /// As [`DataSource::train_batches`].
    fn valid_batches(&self, device: Device) -> Result<BpttBatches, DataError>;

    /// Test windows on `device`, when there is a test split.
    fn test_batches(&self, device: Device) -> Option<Result<BpttBatches, DataError>>;
}

impl DataSource for LmData {
    fn vocab(&self) -> &Vocabulary {
        &self.vocab
    }

    fn tokenizer(&self) -> TokenizerKind {
        self.tokenizer
    }

    fn train_batches(&self, device: Device) -> Result<BpttBatches, DataError> {
        LmData::train_batches(self, device)
    }

    fn valid_batches(&self, device: Device) -> Result<BpttBatches, DataError> {
        LmData::valid_batches(self, device)
    }

    fn test_batches(&self, device: Device) -> Option<Result<BpttBatches, DataError>> {
        LmData::test_batches(self, device)
    }
}
