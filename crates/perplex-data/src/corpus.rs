//! Corpus loading: files, splits, vocabulary and token ids.
use std::path::{Path, PathBuf};

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::batch::ids_to_tensor;
use crate::hf::HfTokenizer;
use crate::stream::TokenStream;
use crate::tokenizer::{CharTokenizer, Tokenizer, WhitespaceTokenizer, WordTokenizer};
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
    /// Runs of non-whitespace, `<eos>` at each line end, `<unk>` kept as the unknown token: the
    /// WikiText convention ([`WhitespaceTokenizer`]).
    Whitespace,
    /// A Hugging Face tokenizer ([`HfTokenizer`]): a byte-level BPE of `max_vocab_size` tokens
    /// trained on the training split, or the file `tokenizer_file`. Its ids are the model's.
    Bpe,
}

impl TokenizerKind {
    /// The rule-based tokenizer, or `None` for `bpe`, whose tokenizer is trained or loaded and
    /// travels with its vocabulary ([`TokenizerKind::for_vocab`]).
    pub fn tokenizer(self) -> Option<Box<dyn Tokenizer>> {
        match self {
            Self::Word => Some(Box::new(WordTokenizer::new())),
            Self::Char => Some(Box::new(CharTokenizer)),
            Self::Whitespace => Some(Box::new(WhitespaceTokenizer)),
            Self::Bpe => None,
        }
    }

    /// The tokenizer that gives `vocab`'s ids: the rule-based one, or `vocab`'s Hugging Face
    /// tokenizer for `bpe`.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] for `bpe` with a vocabulary that has no tokenizer (one
    /// built from counts).
    pub fn for_vocab(self, vocab: &Vocabulary) -> Result<Arc<dyn Tokenizer>, DataError> {
        if let Some(rules) = self.tokenizer() {
            return Ok(Arc::from(rules));
        }
        match vocab.hf_tokenizer() {
            Some(hf) => Ok(hf.clone() as Arc<dyn Tokenizer>),
            None => Err(DataError::InvalidConfig {
                key: "tokenizer",
                value: "bpe".into(),
                expected: "a vocabulary with its tokenizer.json (this one was built from word \
                           counts)"
                    .into(),
            }),
        }
    }

    /// The unit of a per-token score: `token` or `character`.
    pub fn unit(self) -> &'static str {
        match self {
            Self::Word | Self::Whitespace | Self::Bpe => "token",
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
    /// 1; the first is cut at `int(f · n)` as nanoGPT's `prepare.py` does and the last split is
    /// the rest. Default `[0.9, 0.1]`.
    pub splits: Vec<f64>,
    /// `word`, `char`, `whitespace` or `bpe`. Default `word`.
    pub tokenizer: TokenizerKind,
    /// A Hugging Face `tokenizer.json` to use instead of training one (needs
    /// `tokenizer = "bpe"`); copied into the run directory. Default none.
    pub tokenizer_file: Option<PathBuf>,
    /// `word`, `char`, `whitespace`: most frequent training tokens kept, `<unk>` not counted;
    /// 0 keeps all. `bpe`: the BPE vocabulary size (at least 257: the 256 byte tokens and
    /// `<|endoftext|>` count). Default 10000.
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
            tokenizer_file: None,
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
            || (self.splits.iter().sum::<f64>() - 1.0).abs() > 1e-9
        {
            return bad(
                "splits",
                format!("{:?}", self.splits),
                "2 or 3 fractions in (0, 1) summing to 1 (the last split is the rest of the \
                 stream), e.g. [0.9, 0.1] or [0.8, 0.1, 0.1]",
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
        if let (Some(file), false) = (&self.tokenizer_file, self.tokenizer == TokenizerKind::Bpe) {
            return bad(
                "tokenizer_file",
                file.display().to_string(),
                "a Hugging Face tokenizer, which needs tokenizer = \"bpe\"",
            );
        }
        if self.tokenizer == TokenizerKind::Bpe && self.tokenizer_file.is_none() {
            HfTokenizer::check_bpe_vocab_size(self.max_vocab_size)?;
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
    /// (unknown tokens become `<unk>`). For `tokenizer = "bpe"` the vocabulary carries the run's
    /// `tokenizer.json`, which is used as it is: never retrained.
    ///
    /// # Errors
    /// As [`LmData::load`].
    pub fn load_with_vocab(
        config: &DataConfig,
        vocab: Option<Vocabulary>,
    ) -> Result<Self, DataError> {
        config.validate()?;
        let source = Source::of(config)?;
        let encoded = match config.tokenizer.tokenizer() {
            Some(rules) => encode_rule_based(config, &source, rules.as_ref(), vocab)?,
            None => encode_hf(config, &source, vocab)?,
        };
        let Encoded {
            vocab,
            train,
            valid,
            test,
        } = encoded;
        let unk = vocab.unk_id();
        let valid_unk_rate =
            valid.iter().filter(|&&i| Some(i) == unk).count() as f64 / valid.len().max(1) as f64;
        let data = Self {
            train: ids_to_tensor(&train),
            valid: ids_to_tensor(&valid),
            test: test.map(|t| ids_to_tensor(&t)),
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
        let tokenizer = self
            .tokenizer
            .for_vocab(&self.vocab)
            .expect("loaded data has the tokenizer of its vocabulary");
        ids_to_tensor(&self.vocab.encode(&tokenizer.tokenize(text)))
    }
}

/// Where the text of a corpus is.
enum Source {
    /// Separate files per split.
    Files {
        train: PathBuf,
        valid: PathBuf,
        test: Option<PathBuf>,
    },
    /// One file cut by `splits`.
    One(PathBuf),
}

impl Source {
    /// The files `config` names, fetching a named corpus into `data_dir` when missing.
    fn of(config: &DataConfig) -> Result<Self, DataError> {
        if let Some(train) = &config.train {
            let valid = config
                .valid
                .clone()
                .expect("validated: valid is set with train");
            return Ok(Self::Files {
                train: train.clone(),
                valid,
                test: config.test.clone(),
            });
        }
        Ok(Self::One(match &config.path {
            Some(p) => p.clone(),
            None => {
                let name = config.corpus.as_deref().unwrap_or("tinyshakespeare");
                fetch::fetch_corpus(name, &config.data_dir)?
            }
        }))
    }
}

/// The ids of each split and the vocabulary they are in.
struct Encoded {
    vocab: Vocabulary,
    train: Vec<i64>,
    valid: Vec<i64>,
    test: Option<Vec<i64>>,
}

/// Word, whitespace and character level: the whole file tokenized (as interned ids, never one
/// `String` per token), the token stream cut by `splits`, the vocabulary ranked from the
/// training tokens' counts (unless given).
fn encode_rule_based(
    config: &DataConfig,
    source: &Source,
    tokenizer: &dyn Tokenizer,
    vocab: Option<Vocabulary>,
) -> Result<Encoded, DataError> {
    let mut stream = TokenStream::new();
    let mut read = |p: &Path| -> Result<std::ops::Range<usize>, DataError> {
        let range = stream.push_text(tokenizer, &read_text(p)?);
        if stream.all_are(range.clone(), WordTokenizer::EOS) {
            // A file of only newlines gives only <eos> tokens: as empty as an empty file.
            return Err(DataError::EmptyCorpus {
                path: p.to_path_buf(),
            });
        }
        Ok(range)
    };
    let (train, valid, test) = match source {
        Source::Files { train, valid, test } => {
            let train = read(train)?;
            let valid = read(valid)?;
            let test = test.as_deref().map(&mut read).transpose()?;
            (train, valid, test)
        }
        Source::One(path) => split(read(path)?, &config.splits),
    };
    let vocab = vocab.unwrap_or_else(|| {
        let cap = (config.max_vocab_size > 0).then_some(config.max_vocab_size);
        stream.vocabulary(train.clone(), cap)
    });
    Ok(Encoded {
        train: stream.encode(train, &vocab),
        valid: stream.encode(valid, &vocab),
        test: test.map(|t| stream.encode(t, &vocab)),
        vocab,
    })
}

/// A Hugging Face tokenizer: the text cut into splits first (one file is cut by characters, as
/// nanoGPT's `prepare.py` does, since the tokens are not known before the tokenizer is
/// trained), the tokenizer taken from `vocab`, read from `tokenizer_file`, or trained on the
/// training text only; then each split encoded, a chunk of lines at a time, into the
/// tokenizer's own ids.
fn encode_hf(
    config: &DataConfig,
    source: &Source,
    vocab: Option<Vocabulary>,
) -> Result<Encoded, DataError> {
    let read = |p: &Path| -> Result<String, DataError> {
        let text = read_text(p)?;
        if text.trim().is_empty() {
            return Err(DataError::EmptyCorpus {
                path: p.to_path_buf(),
            });
        }
        Ok(text)
    };
    // (file, text) per split; one file's text is held once and cut into slices of it.
    let whole;
    let files;
    let (train, valid, test): (Part, Part, Option<Part>) = match source {
        Source::Files { train, valid, test } => {
            let test_text = test.as_deref().map(read).transpose()?;
            files = (read(train)?, read(valid)?, test_text);
            (
                (train, files.0.as_str()),
                (valid, files.1.as_str()),
                test.as_deref().zip(files.2.as_deref()),
            )
        }
        Source::One(path) => {
            whole = read(path)?;
            let (a, b, c) = split_text(&whole, &config.splits);
            ((path, a), (path, b), c.map(|c| (path.as_path(), c)))
        }
    };
    let vocab = match vocab {
        Some(v) => {
            warn_if_tokenizer_file_differs(config, &v);
            v
        }
        None => Vocabulary::from_hf(Arc::new(hf_tokenizer(config, train.1)?))?,
    };
    let hf = vocab
        .hf_tokenizer()
        .ok_or_else(|| DataError::InvalidConfig {
            key: "tokenizer",
            value: "bpe".into(),
            expected: "a vocabulary with its tokenizer.json (the given one was built from word \
                       counts)"
                .into(),
        })?
        .clone();
    let encode = |(path, text): (&Path, &str)| -> Result<Vec<i64>, DataError> {
        let started = std::time::Instant::now();
        let ids: Vec<i64> = hf.encode(text)?.into_iter().map(i64::from).collect();
        let seconds = started.elapsed().as_secs_f64();
        tracing::debug!(
            file = %path.display(),
            tokens = ids.len(),
            tokens_per_second = format!("{:.0}", ids.len() as f64 / seconds.max(1e-9)),
            "encoded"
        );
        if ids.is_empty() {
            return Err(DataError::EmptyCorpus {
                path: path.to_path_buf(),
            });
        }
        Ok(ids)
    };
    Ok(Encoded {
        train: encode(train)?,
        valid: encode(valid)?,
        test: test.map(encode).transpose()?,
        vocab,
    })
}

/// A split's text and the file it comes from.
type Part<'a> = (&'a Path, &'a str);

/// The tokenizer of a new run: `tokenizer_file`, or a byte-level BPE of `max_vocab_size`
/// tokens trained on `train_text`.
fn hf_tokenizer(config: &DataConfig, train_text: &str) -> Result<HfTokenizer, DataError> {
    if let Some(file) = &config.tokenizer_file {
        if !file.is_file() {
            return Err(DataError::InvalidConfig {
                key: "tokenizer_file",
                value: file.display().to_string(),
                expected: "a Hugging Face tokenizer.json file (there is no such file; a relative \
                           path is read from the current directory)"
                    .into(),
            });
        }
        let hf = HfTokenizer::from_file(file)?;
        tracing::info!(file = %file.display(), vocab = hf.vocab_size(), "tokenizer loaded");
        return Ok(hf);
    }
    let started = std::time::Instant::now();
    let hf = HfTokenizer::train_byte_level_bpe(train_text, config.max_vocab_size)?;
    tracing::info!(
        vocab = hf.vocab_size(),
        max_vocab_size = config.max_vocab_size,
        train_bytes = train_text.len(),
        seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
        "byte-level BPE trained on the training split"
    );
    Ok(hf)
}

/// A resumed or evaluated run reads its own `tokenizer.json`; says so when `tokenizer_file`
/// now holds another tokenizer.
fn warn_if_tokenizer_file_differs(config: &DataConfig, vocab: &Vocabulary) {
    let (Some(file), Some(own)) = (&config.tokenizer_file, vocab.hf_tokenizer()) else {
        return;
    };
    if read_text(file).ok().as_deref() != Some(own.json()) {
        tracing::warn!(
            tokenizer_file = %file.display(),
            "data.tokenizer_file differs from the run's own tokenizer.json, which is used"
        );
    }
}

/// Cuts `text` by `fractions` of its characters (train, valid[, test]) at `int(f · n)`, as
/// nanoGPT's `prepare.py` cuts its text before encoding it with a BPE.
fn split_text<'t>(text: &'t str, fractions: &[f64]) -> (&'t str, &'t str, Option<&'t str>) {
    let n = text.chars().count();
    let byte_at = |k: usize| text.char_indices().nth(k).map_or(text.len(), |(b, _)| b);
    let (a, b, c) = split(0..n, fractions);
    let (a, b) = (byte_at(a.end), byte_at(b.end));
    let test = c.map(|_| &text[b..]);
    (&text[..a], &text[a..b], test)
}

/// Splits the token range `all` by `fractions` (train, valid[, test]), cutting at `int(f · n)` as
/// the reference (nanoGPT's prepare.py) does.
pub(crate) fn split(
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

    #[test]
    fn text_splits_cut_at_characters() {
        assert_eq!(
            split_text("abcdéfghij", &[0.5, 0.5]),
            ("abcdé", "fghij", None)
        );
        assert_eq!(
            split_text("日本語のテキストです", &[0.8, 0.1, 0.1]),
            ("日本語のテキスト", "で", Some("す"))
        );
    }
}
