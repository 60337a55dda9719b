//! The errors of `perplex-data`.
use std::path::PathBuf;

/// Everything that can go wrong while reading, tokenizing or batching a corpus.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file does not exist.
    #[error("corpus file {path} does not exist")]
    NotFound {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// The file exists but could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not valid UTF-8.
    #[error("{path} is not valid UTF-8: invalid byte at offset {offset}")]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// The corpus holds no token at all.
    #[error("corpus {path} is empty: it holds no token")]
    EmptyCorpus {
        /// The file.
        path: PathBuf,
    },
    /// A split is too small to give even one batch.
    #[error(
        "the {split} split has {tokens} tokens but needs at least {needed} \
         (batch_size {batch_size} x (seq_len {seq_len} + 1)) to give one batch"
    )]
    SplitTooSmall {
        /// `train`, `valid` or `test`.
        split: String,
        /// Tokens in the split.
        tokens: usize,
        /// Tokens needed for one batch.
        needed: usize,
        /// The configured batch size.
        batch_size: usize,
        /// The configured BPTT length.
        seq_len: usize,
    },
    /// A configuration value is out of its range.
    #[error("invalid data config: {key} = {value}: {expected}")]
    InvalidConfig {
        /// The key under `[data]`.
        key: &'static str,
        /// The value given.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A file's SHA-256 is not the published one.
    #[error("checksum mismatch for {path}: expected SHA-256 {expected}, got {actual}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The published digest.
        expected: String,
        /// The digest of the file on disk.
        actual: String,
    },
    /// A download failed.
    #[error("cannot download {url}: {message}")]
    Download {
        /// The address.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A vocabulary file is malformed.
    #[error("invalid vocabulary file {path}: {message}")]
    InvalidVocabulary {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A corpus name that perplex does not know.
    #[error("unknown corpus `{name}`; known corpora: {known}")]
    UnknownCorpus {
        /// The name given.
        name: String,
        /// The names perplex knows.
        known: String,
    },
    /// libtorch refused an operation (wrong device, out of memory).
    #[error("libtorch error while batching: {0}")]
    Torch(#[from] tch::TchError),
}
