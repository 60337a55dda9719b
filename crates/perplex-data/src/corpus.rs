//! Corpus loading: files, splits, vocabulary and token ids.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::batch::ids_to_tensor;
use crate::stream::TokenStream;
use crate::tokenizer::{CharTokenizer, Tokenizer, WordTokenizer};
use crate::{fetch, Batches, BpttBatches, DataError, LoaderKind, RandomWindows, Vocabulary};

/// Which tokenizer turns text into tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// Words, contractions and punctuation marks, `<eos>` at each line end ([`WordTokenizer`]).
    #[default]
    Word,
    /// Unicode characters ([`CharTokenizer`]).
    Char,
}

impl TokenizerKind {
    /// The tokenizer itself.
    pub fn tokenizer(self) -> Box<dyn Tokenizer> {
        match self {
            Self::Word => Box::new(WordTokenizer::new()),
            Self::Char => Box::new(CharTokenizer),
        }
    }

    /// The unit of a per-token score: `token` or `character`.
    pub fn unit(self) -> &'static str {
        match self {
            Self::Word => "token",
            Self::Char => "character",
        }
    }
}

/// The `[data]` section of a run config.
///
/// The corpus comes from exactly one of: separate `train`/`valid`(/`test`) files, one file `path`
/// cut by `splits`, or a named `corpus` fetched into `data_dir` (the default, Tiny Shakespeare).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A named corpus (`tinyshakespeare`), fetched into `data_dir` when missing. Default
    /// `tinyshakespeare`; ignored when `path` or `train` is set.
    pub corpus: Option<String>,
    /// Directory for fetched corpora. Default `data`.
    pub data_dir: PathBuf,
    /// One UTF-8 text file cut by `splits`. Default none.
    pub path: Option<PathBuf>,
    /// Training split file (with `valid`, optional `test`). Default none.
    pub train: Option<PathBuf>,
    /// Validation split file. Default none.
    pub valid: Option<PathBuf>,
    /// Test split file. Default none.
    pub test: Option<PathBuf>,
    /// Fractions of the token stream for train/valid(/test), in order: 2 or 3 numbers summing to
    /// at most 1. Default `[0.9, 0.1]`.
    pub splits: Vec<f64>,
    /// `word` or `char`. Default `word`.
    pub tokenizer: TokenizerKind,
    /// Most frequent training tokens kept, `<unk>` not counted; 0 keeps all. Default 10000.
    pub max_vocab_size: usize,
    /// Rows per batch (independent token streams). Default 64.
    pub batch_size: usize,
    /// BPTT window length in tokens. Default 35.
    pub seq_len: usize,
    /// Batch size for validation and test; default: `batch_size`.
    pub eval_batch_size: Option<usize>,
    /// How training batches are read: `bptt` (contiguous streams, a recurrent model's state
    /// carried across windows; [`crate::BpttBatches`]) or `random_windows` (windows at seeded
    /// random offsets, nothing carried; [`crate::RandomWindows`]). Validation and test are
    /// always read in order, every token once. Default `bptt`.
    pub loader: LoaderKind,
    /// A directory written by `perplex data prepare` (token files read memory-mapped, see
    /// [`crate::PreparedData`]); when set, the corpus options above are not read. Default none.
    pub prepared: Option<PathBuf>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            corpus: Some("tinyshakespeare".into()),
            data_dir: PathBuf::from("data"),
            path: None,
            train: None,
            valid: None,
            test: None,
            splits: vec![0.9, 0.1],
            tokenizer: TokenizerKind::Word,
            max_vocab_size: 10_000,
            batch_size: 64,
            seq_len: 35,
            eval_batch_size: None,
            loader: LoaderKind::Bptt,
            prepared: None,
        }
    }
}

impl DataConfig {
    /// Checks the options without reading any file: splits, sizes and the choice of source.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] naming the option.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |key, value: String, expected: &str| {
            Err(DataError::InvalidConfig {
                key,
                value,
                expected: expected.into(),
            })
        };
        if !(2..=3).contains(&self.splits.len())
            || self.splits.iter().any(|f| !(*f > 0.0 && *f < 1.0))
            || self.splits.iter().sum::<f64>() > 1.0 + 1e-9
        {
            return bad(
                "splits",
                format!("{:?}", self.splits),
                "2 or 3 fractions in (0, 1) summing to at most 1, e.g. [0.9, 0.1]",
            );
        }
        if self.batch_size == 0 {
            return bad("batch_size", "0".into(), "a positive integer");
        }
        if self.seq_len == 0 {
            return bad("seq_len", "0".into(), "a positive integer");
        }
        if self.eval_batch_size == Some(0) {
            return bad("eval_batch_size", "0".into(), "a positive integer");
        }
        if self.train.is_some() != self.valid.is_some() {
            return bad(
                "train/valid",
                "only one of them".into(),
                "both `train` and `valid` files, or neither",
            );
        }
        if let (Some(_), Some(path)) = (&self.train, &self.path) {
            return bad(
                "path",
                path.display().to_string(),
                "either `path` or `train`/`valid` files, not both",
            );
        }
        Ok(())
    }
}

/// A tokenized corpus: vocabulary and the id streams of each split.
#[derive(Debug)]
pub struct LmData {
    /// The vocabulary, built from the training split only.
    pub vocab: Vocabulary,
    /// The tokenizer used.
    pub tokenizer: TokenizerKind,
    /// Training ids, int64 `[n_train]`.
    pub train: Tensor,
    /// Validation ids, int64 `[n_valid]`.
    pub valid: Tensor,
    /// Test ids, int64 `[n_test]`, when the corpus has a test split.
    pub test: Option<Tensor>,
    /// Fraction of validation tokens that are `<unk>`.
    pub valid_unk_rate: f64,
    config: DataConfig,
}

impl LmData {
    /// Reads, tokenizes and splits the corpus that `config` names, fetching a named corpus first
    /// when it is not yet in `data_dir`.
    ///
    /// # Errors
    /// A missing file, invalid UTF-8 (with the byte offset), an empty corpus, a split too small
    /// for one batch, or an invalid config value, each naming the file or key.
    pub fn load(config: &DataConfig) -> Result<Self, DataError> {
        Self::load_with_vocab(config, None)
    }

    /// As [`LmData::load`], but with a given vocabulary instead of one built from the training
    /// split: a run's own `vocab.json` (the vocabulary is part of the model), so resuming or
    /// evaluating a run encodes the corpus exactly as training did, whatever the corpus now holds
    /// (unknown tokens become `<unk>`).
    ///
    /// # Errors
    /// As [`LmData::load`].
    pub fn load_with_vocab(
        config: &DataConfig,
        vocab: Option<Vocabulary>,
    ) -> Result<Self, DataError> {
        config.validate()?;
        let tokenizer = config.tokenizer.tokenizer();
        // Token ids, never one String per token: interned as read, ranked, then remapped.
        let mut stream = TokenStream::new();
        let mut read = |p: &Path| -> Result<std::ops::Range<usize>, DataError> {
            let range = stream.push_text(tokenizer.as_ref(), &read_text(p)?);
            if stream.all_are(range.clone(), WordTokenizer::EOS) {
                // A file of only newlines gives only <eos> tokens: as empty as an empty file.
                return Err(DataError::EmptyCorpus {
                    path: p.to_path_buf(),
                });
            }
            Ok(range)
        };
        let (train, valid, test) = if let Some(train) = &config.train {
            let valid = config
                .valid
                .as_ref()
                .expect("validated: valid is set with train");
            let train = read(train)?;
            let valid = read(valid)?;
            let test = config.test.as_deref().map(&mut read).transpose()?;
            (train, valid, test)
        } else {
            let path = match &config.path {
                Some(p) => p.clone(),
                None => {
                    let name = config.corpus.as_deref().unwrap_or("tinyshakespeare");
                    fetch::fetch_corpus(name, &config.data_dir)?
                }
            };
            split(read(&path)?, &config.splits)
        };
        let vocab = vocab.unwrap_or_else(|| {
            let cap = (config.max_vocab_size > 0).then_some(config.max_vocab_size);
            stream.vocabulary(train.clone(), cap)
        });
        let valid_ids = stream.encode(valid, &vocab);
        let valid_unk_rate =
            valid_ids.iter().filter(|&&i| i == 0).count() as f64 / valid_ids.len().max(1) as f64;
        let data = Self {
            train: ids_to_tensor(&stream.encode(train, &vocab)),
            valid: ids_to_tensor(&valid_ids),
            test: test.map(|t| ids_to_tensor(&stream.encode(t, &vocab))),
            vocab,
            tokenizer: config.tokenizer,
            valid_unk_rate,
            config: config.clone(),
        };
        // Fail now, naming the split, rather than mid-run.
        data.train_batches(Device::Cpu)?;
        data.train_loader(Device::Cpu, 0)?;
        data.valid_batches(Device::Cpu)?;
        data.test_batches(Device::Cpu).transpose()?;
        Ok(data)
    }

    /// Training windows (full windows only), on `device`.
    pub fn train_batches(&self, device: Device) -> Result<BpttBatches, DataError> {
        let c = &self.config;
        BpttBatches::new(&self.train, c.batch_size, c.seq_len, true, "train", device)
    }

    /// The training loader that `loader` names, on `device`; `seed` draws the offsets of
    /// random windows.
    ///
    /// # Errors
    /// [`DataError::SplitTooSmall`] and libtorch errors.
    pub fn train_loader(&self, device: Device, seed: u64) -> Result<Box<dyn Batches>, DataError> {
        let c = &self.config;
        Ok(match c.loader {
            LoaderKind::Bptt => Box::new(self.train_batches(device)?),
            LoaderKind::RandomWindows => {
                let ids = Vec::<i64>::try_from(&self.train)?;
                Box::new(RandomWindows::new(
                    std::sync::Arc::new(ids),
                    c.batch_size,
                    c.seq_len,
                    seed,
                    "train",
                    device,
                )?)
            }
        })
    }

    /// Validation windows (the last may be shorter), on `device`.
    pub fn valid_batches(&self, device: Device) -> Result<BpttBatches, DataError> {
        let c = &self.config;
        let bs = c.eval_batch_size.unwrap_or(c.batch_size);
        BpttBatches::new(&self.valid, bs, c.seq_len, false, "valid", device)
    }

    /// Test windows, when there is a test split.
    pub fn test_batches(&self, device: Device) -> Option<Result<BpttBatches, DataError>> {
        let c = &self.config;
        let bs = c.eval_batch_size.unwrap_or(c.batch_size);
        self.test
            .as_ref()
            .map(|t| BpttBatches::new(t, bs, c.seq_len, false, "test", device))
    }

    /// The config this data was loaded with.
    pub fn config(&self) -> &DataConfig {
        &self.config
    }

    /// Tokenizes and encodes a text (a prompt, a file to evaluate) with this corpus's tokenizer
    /// and vocabulary: int64 `[n]`.
    pub fn encode_text(&self, text: &str) -> Tensor {
        let toks = self.tokenizer.tokenizer().tokenize(text);
        ids_to_tensor(&self.vocab.encode(&toks))
    }
}

/// Splits the token range `all` by `fractions` (train, valid[, test]), cutting at `int(f · n)` as
/// the reference (nanoGPT's prepare.py) does.
fn split(
    all: std::ops::Range<usize>,
    fractions: &[f64],
) -> (
    std::ops::Range<usize>,
    std::ops::Range<usize>,
    Option<std::ops::Range<usize>>,
) {
    let n = all.len();
    let n_train = (fractions[0] * n as f64) as usize;
    let n_valid_end = if fractions.len() == 3 {
        ((fractions[0] + fractions[1]) * n as f64) as usize
    } else {
        n
    };
    let at = |k: usize| all.start + k;
    let train = all.start..at(n_train);
    let valid = at(n_train)..at(n_valid_end);
    let test = (fractions.len() == 3).then(|| at(n_valid_end)..all.end);
    (train, valid, test)
}

/// Reads a UTF-8 text file.
///
/// # Errors
/// [`DataError::NotFound`], [`DataError::Io`], [`DataError::InvalidUtf8`] with the byte offset.
pub fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = fetch::read_file(path)?;
    String::from_utf8(bytes).map_err(|e| DataError::InvalidUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_uses_floor_of_fraction() {
        let (a, b, c) = split(0..10, &[0.9, 0.1]);
        assert_eq!((a, b, c), (0..9, 9..10, None));
        let (a, b, c) = split(5..15, &[0.8, 0.1, 0.1]);
        assert_eq!((a, b, c), (5..13, 13..14, Some(14..15)));
    }
}
