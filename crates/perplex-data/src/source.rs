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

    /// Tokens in the train, valid and test splits (0 without a test split), for the log.
    fn split_tokens(&self) -> [usize; 3];
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

    fn split_tokens(&self) -> [usize; 3] {
        let n = |t: &tch::Tensor| t.size().first().copied().unwrap_or(0) as usize;
        [
            n(&self.train),
            n(&self.valid),
            self.test.as_ref().map_or(0, n),
        ]
    }
}

/// The data source that `config` describes: the token files of `config.prepared`
/// ([`crate::PreparedData`]), else the corpus read and tokenized in memory ([`LmData`]).
/// `vocab` (a run's own, when resuming or evaluating) is used instead of one built from the
/// training split; prepared files must have been made with that same vocabulary.
///
/// # Errors
/// As [`LmData::load_with_vocab`] and [`crate::PreparedData::open`]; a `vocab` that is not the
/// prepared files'.
pub fn open_source(
    config: &crate::DataConfig,
    vocab: Option<Vocabulary>,
) -> Result<Box<dyn DataSource>, DataError> {
    if config.prepared.is_none() {
        return Ok(Box::new(LmData::load_with_vocab(config, vocab)?));
    }
    let data = crate::PreparedData::open_with(config, vocab.is_none())?;
    if let Some(v) = vocab.filter(|v| *v != data.vocab) {
        let dir = config
            .prepared
            .as_deref()
            .unwrap_or(std::path::Path::new("."));
        return Err(DataError::InvalidVocabulary {
            path: dir.join("vocab.json"),
            message: format!(
                "the run's vocabulary ({} tokens) is not the one these token files were made \
                 with ({} tokens)",
                v.len(),
                data.vocab.len()
            ),
        });
    }
    Ok(Box::new(data))
}
