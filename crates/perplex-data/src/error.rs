//! The errors of `perplex-data`.
use std::path::PathBuf;

/// Everything that can go wrong while reading, tokenizing or batching a corpus.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file does not exist.
    #[error("{path} does not exist")]
    NotFound {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// The file exists but could not be read or written.
    #[error("cannot access {path}: {}", io_reason(.source))]
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
    #[error("the {split} split has {tokens} tokens but needs at least {needed} ({rule}) to give one batch")]
    SplitTooSmall {
        /// `train`, `valid` or `test`.
        split: String,
        /// Tokens in the split.
        tokens: usize,
        /// Tokens needed for one batch.
        needed: usize,
        /// How `needed` follows from the configuration, e.g.
        /// `batch_size 12 x (seq_len 64 + 1)` or `seq_len 64 + 1: one window`.
        rule: String,
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
    /// A token file (`perplex data prepare`'s output) or its header is malformed.
    #[error("invalid token file {path}: {message}")]
    InvalidTokenFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A Hugging Face tokenizer could not be read, trained, or used.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The `tokenizer.json` file, or what was being done (`(training)`, `(encoding)`).
        path: PathBuf,
        /// What went wrong.
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
    #[error("libtorch error while batching: {}", tch_reason(.0))]
    Torch(#[from] tch::TchError),
}

/// The reason of an I/O error in words, without Rust's debug form or the OS error number:
/// `no space left on device`, `permission denied`, `read-only file system`.
pub fn io_reason(e: &std::io::Error) -> String {
    // Wrappers such as tempfile's add the path (named by the caller anyway) around the OS error.
    if e.raw_os_error().is_none() {
        let mut inner = e.get_ref().and_then(|r| r.source());
        while let Some(cause) = inner {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                return io_reason(io);
            }
            inner = cause.source();
        }
        // tempfile's wrapper hides its cause: "<reason> (os error N) at path ...".
        let text = e.to_string();
        if let Some(at) = text.find("(os error ") {
            let digits: String = text[at + 10..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(code) = digits.parse() {
                return io_reason(&std::io::Error::from_raw_os_error(code));
            }
        }
    }
    let text = match e.raw_os_error() {
        // The OS's own text (strerror) without the ` (os error N)` Rust appends.
        Some(code) => {
            let full = std::io::Error::from_raw_os_error(code).to_string();
            match full.rfind(" (os error ") {
                Some(at) => full[..at].to_string(),
                None => full,
            }
        }
        None => e.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        // "No such file or directory" -> "no such file or directory" (keep "EOF", "UTF-8").
        Some(first) if chars.clone().next().is_some_and(char::is_lowercase) => {
            first.to_lowercase().chain(chars).collect()
        }
        _ => text,
    }
}

/// The first meaningful lines of a libtorch error message: the C++ backtrace libtorch appends
/// (`Exception raised from ...`, `frame #0: ...`) is dropped.
pub fn torch_message(message: &str) -> &str {
    let cut = ["Exception raised from", "frame #"]
        .iter()
        .filter_map(|marker| message.find(marker))
        .min()
        .unwrap_or(message.len());
    message[..cut].trim_end()
}

/// A [`tch::TchError`] in words: an I/O error's reason ([`io_reason`]), a safetensors error
/// without Rust's debug form, a libtorch message without its C++ backtrace ([`torch_message`]).
pub fn tch_reason(e: &tch::TchError) -> String {
    match e {
        tch::TchError::Io(io) => io_reason(io),
        tch::TchError::Torch(message) => torch_message(message).to_string(),
        tch::TchError::SafeTensorError { err, .. } => safetensors_reason(err),
        other => torch_message(&other.to_string()).to_string(),
    }
}

fn safetensors_reason(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::IoError(io) => io_reason(io),
        E::TensorNotFound(name) => format!("the file has no tensor named `{name}`"),
        E::JsonError(json) => format!("not a safetensors file (its header is not JSON: {json})"),
        E::InvalidOffset(name) => {
            format!("not a valid safetensors file (the offsets of tensor `{name}` are invalid)")
        }
        E::InvalidTensorView(dtype, shape, len) => format!(
            "not a valid safetensors file ({len} bytes cannot hold a {dtype:?} tensor of shape \
             {shape:?})"
        ),
        E::HeaderTooLarge => "not a safetensors file (its header is too large)".into(),
        E::HeaderTooSmall | E::InvalidHeaderLength => {
            "not a safetensors file (too short or truncated header)".into()
        }
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization => {
            "not a safetensors file (invalid header)".into()
        }
        E::TensorInvalidInfo | E::MetadataIncompleteBuffer | E::ValidationOverflow => {
            "not a valid safetensors file (its header does not match its data; truncated?)".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_reasons_are_words() {
        let e = std::io::Error::from_raw_os_error(28);
        assert_eq!(io_reason(&e), "no space left on device");
        assert_eq!(
            io_reason(&std::io::Error::from_raw_os_error(13)),
            "permission denied"
        );
        assert_eq!(
            io_reason(&std::io::Error::from_raw_os_error(30)),
            "read-only file system"
        );
        let wrapped = tempfile::tempfile_in("/nonexistent/dir").unwrap_err();
        assert_eq!(io_reason(&wrapped), "no such file or directory");
        let custom = std::io::Error::other("EOF while parsing");
        assert_eq!(io_reason(&custom), "EOF while parsing");
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"));
        if let Err(e) = full {
            assert_eq!(io_reason(&e), "no space left on device");
        }
    }

    #[test]
    fn torch_messages_lose_their_backtrace() {
        let m = "gru.weight_hh_l0: The size of tensor a (32) must match the size of tensor b (24) \
                 at non-singleton dimension 1\nException raised from infer_size_impl at \
                 /pytorch/aten/src/ATen/ExpandUtils.cpp:31 (most recent call first):\nframe #0: \
                 c10::Error::Error(c10::SourceLocation) + 0x9d";
        let short = torch_message(m);
        assert!(short.ends_with("at non-singleton dimension 1"), "{short}");
        let e = tch::TchError::Torch(m.into());
        assert!(!tch_reason(&e).contains("frame #"));
        assert_eq!(torch_message("plain"), "plain");
    }

    #[test]
    fn safetensors_io_errors_are_words() {
        let e = tch::TchError::SafeTensorError {
            path: "x".into(),
            err: safetensors::SafeTensorError::IoError(std::io::Error::from_raw_os_error(28)),
        };
        assert_eq!(tch_reason(&e), "no space left on device");
        let e = DataError::Torch(tch::TchError::Io(std::io::Error::from_raw_os_error(2)));
        assert!(!e.to_string().contains("Os {"), "{e}");
    }
}
