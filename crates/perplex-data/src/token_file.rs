//! Token files: a split tokenized once into a flat array of `u16` (vocabularies up to 65,536
//! tokens) or `u32` ids, little-endian (`train.bin`), with a small JSON header beside it
//! (`train.json`: vocabulary size, dtype, token count, tokenizer and, for `bpe`, its
//! `tokenizer.json`), the layout of nanoGPT's `prepare.py`. Training reads them memory-mapped
//! ([`MmapTokens`], a [`TokenIds`]), so a corpus of any size costs address space, not resident
//! memory.
//!
//! A file is written through [`TokenFileWriter`]: ids are streamed to a temporary file in the
//! same directory, and the file and its header are renamed into place only by
//! [`TokenFileWriter::finish`], so a `.bin` whose header exists is always complete.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{DataError, TokenIds};

/// The element type of a token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenDtype {
    /// 2 bytes per token: vocabularies of at most 65,536 tokens.
    U16,
    /// 4 bytes per token.
    U32,
}

impl TokenDtype {
    /// The smallest type that holds every id below `vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            Self::U16
        } else {
            Self::U32
        }
    }

    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }
}

/// The JSON header beside a token file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFileHeader {
    /// Format version, 1.
    pub version: u32,
    /// Size of the vocabulary the ids index (every id is below it).
    pub vocab_size: usize,
    /// `u16` or `u32`, little-endian.
    pub dtype: TokenDtype,
    /// Number of tokens in the `.bin` file.
    pub tokens: u64,
    /// The tokenizer that produced the ids: `word`, `char`, `whitespace` or `bpe`.
    pub tokenizer: String,
    /// For `bpe`, the Hugging Face tokenizer file that produced the ids, beside the token file
    /// (`tokenizer.json`); absent for the rule-based tokenizers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_file: Option<String>,
    /// The `data.max_vocab_size` the vocabulary was built or trained with (absent for a loaded
    /// `tokenizer_file`, and in files written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vocab_size: Option<usize>,
}

/// The header path of a token file: `train.bin` -> `train.json`.
pub fn header_path(bin: &Path) -> PathBuf {
    bin.with_extension("json")
}

/// Streams ids into a token file; nothing appears at the final path before [`Self::finish`].
#[derive(Debug)]
pub struct TokenFileWriter {
    path: PathBuf,
    tmp: tempfile::NamedTempFile,
    out: Option<BufWriter<File>>,
    dtype: TokenDtype,
    vocab_size: usize,
    tokens: u64,
    tokenizer: String,
    tokenizer_file: Option<String>,
    max_vocab_size: Option<usize>,
}

impl TokenFileWriter {
    /// A writer for `path` (a `.bin` file) of ids below `vocab_size`.
    ///
    /// # Errors
    /// [`DataError::Io`] naming the directory when the temporary file cannot be created.
    pub fn create(path: &Path, vocab_size: usize, tokenizer: &str) -> Result<Self, DataError> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".tokens-")
            .tempfile_in(dir)
            .map_err(|e| DataError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        let file = tmp.reopen().map_err(|e| DataError::Io {
            path: tmp.path().to_path_buf(),
            source: e,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            dtype: TokenDtype::for_vocab(vocab_size),
            vocab_size,
            tokens: 0,
            tokenizer: tokenizer.to_string(),
            tokenizer_file: None,
            max_vocab_size: None,
        })
    }

    /// Names the tokenizer file (beside the token file) in the header.
    pub fn with_tokenizer_file(mut self, file: &str) -> Self {
        self.tokenizer_file = Some(file.to_string());
        self
    }

    /// Records in the header the `data.max_vocab_size` the vocabulary was made with.
    pub fn with_max_vocab_size(mut self, max_vocab_size: usize) -> Self {
        self.max_vocab_size = Some(max_vocab_size);
        self
    }

    /// Appends `ids` (each below the vocabulary size).
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] for an id outside the vocabulary; [`DataError::Io`].
    pub fn write(&mut self, ids: &[u32]) -> Result<(), DataError> {
        let out = self.out.as_mut().expect("open until finish");
        let mut buf = Vec::with_capacity(ids.len() * self.dtype.width());
        for &id in ids {
            if id as usize >= self.vocab_size {
                return Err(DataError::InvalidConfig {
                    key: "token id",
                    value: id.to_string(),
                    expected: format!("an id below the vocabulary size {}", self.vocab_size),
                });
            }
            match self.dtype {
                TokenDtype::U16 => buf.extend_from_slice(&(id as u16).to_le_bytes()),
                TokenDtype::U32 => buf.extend_from_slice(&id.to_le_bytes()),
            }
        }
        out.write_all(&buf).map_err(|e| DataError::Io {
            path: self.path.clone(),
            source: e,
        })?;
        self.tokens += ids.len() as u64;
        Ok(())
    }

    /// Tokens written so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Flushes the ids, renames the file into place and writes its header (atomically too).
    ///
    /// # Errors
    /// [`DataError::Io`] naming the file.
    pub fn finish(mut self) -> Result<TokenFileHeader, DataError> {
        let io = |path: &Path, e: std::io::Error| DataError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let out = self.out.take().expect("open until finish");
        let file = out
            .into_inner()
            .map_err(|e| io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| io(&self.path, e))?;
        crate::fetch::readable_by_all(&file).map_err(|e| io(&self.path, e))?;
        let header = TokenFileHeader {
            version: 1,
            vocab_size: self.vocab_size,
            dtype: self.dtype,
            tokens: self.tokens,
            tokenizer: self.tokenizer.clone(),
            tokenizer_file: self.tokenizer_file.clone(),
            max_vocab_size: self.max_vocab_size,
        };
        self.tmp
            .persist(&self.path)
            .map_err(|e| io(&self.path, e.error))?;
        let json = serde_json::to_vec_pretty(&header).expect("a header serialises");
        crate::fetch::write_atomically(&header_path(&self.path), &json)?;
        Ok(header)
    }
}

/// A token file mapped into memory: ids are read in place, never loaded whole.
#[derive(Debug)]
pub struct MmapTokens {
    map: memmap2::Mmap,
    header: TokenFileHeader,
    path: PathBuf,
    /// Windows read since the mapped pages were last released (see [`RELEASE_EVERY`]).
    reads: std::sync::atomic::AtomicUsize,
}

/// Windows read between two releases of the mapped pages. A page fault on a file the page cache
/// holds in large folios maps the whole folio (up to megabytes) into the process, so random
/// windows would grow the resident set with the corpus; dropping the mappings now and then
/// (`MADV_DONTNEED`: the pages stay in the page cache, the next read maps them again) keeps it
/// bounded.
pub const RELEASE_EVERY: usize = 16;

impl MmapTokens {
    /// Maps `path` (a `.bin` file) after reading and checking its header.
    ///
    /// # Errors
    /// [`DataError::NotFound`]/[`DataError::Io`] naming the file or header; a header whose token
    /// count does not match the file's size.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let head = header_path(path);
        let text = crate::fetch::read_file(&head)?;
        let header: TokenFileHeader =
            serde_json::from_slice(&text).map_err(|e| DataError::InvalidTokenFile {
                path: head.clone(),
                message: format!("not a token-file header: {e}"),
            })?;
        let file = File::open(path).map_err(|e| DataError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        // SAFETY: the file is only read; token files are written to a temporary name and
        // renamed into place, never modified where they are (a user changing the file under a
        // running trainer is not supported, as with any memory-mapped dataset).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| DataError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        // Windows are read at scattered offsets: without this, each page fault reads ahead
        // (megabytes on some disks) and the resident set grows with the corpus.
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Random);
        let expected = header.tokens as usize * header.dtype.width();
        if map.len() != expected {
            return Err(DataError::InvalidTokenFile {
                path: path.to_path_buf(),
                message: format!(
                    "{} bytes, but its header {} says {} {:?} tokens ({expected} bytes): the file \
                     is truncated or not the header's",
                    map.len(),
                    head.display(),
                    header.tokens,
                    header.dtype
                ),
            });
        }
        check_ids(&file, &header, path)?;
        Ok(Self {
            map,
            header,
            path: path.to_path_buf(),
            reads: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The file's header.
    pub fn header(&self) -> &TokenFileHeader {
        &self.header
    }

    /// The mapped file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Refuses a file holding an id its header's vocabulary does not (an edited or foreign file),
/// naming the file, the id's position and the vocabulary size; the embedding would otherwise
/// fail mid-run with libtorch's "index out of range". Reads the file in 1 MiB blocks through the
/// page cache (not the mapping, so the resident set does not grow with the corpus): about a
/// second per gigabyte.
fn check_ids(file: &File, header: &TokenFileHeader, path: &Path) -> Result<(), DataError> {
    use std::io::Read;
    let w = header.dtype.width();
    let vocab = header.vocab_size as u64;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut block = vec![0u8; (1 << 20) / w * w];
    let mut position = 0u64;
    loop {
        let mut filled = 0;
        while filled < block.len() {
            let n = reader
                .read(&mut block[filled..])
                .map_err(|e| DataError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        for b in block[..filled - filled % w].chunks_exact(w) {
            let id = match header.dtype {
                TokenDtype::U16 => u64::from(u16::from_le_bytes([b[0], b[1]])),
                TokenDtype::U32 => u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            };
            if id >= vocab {
                return Err(DataError::InvalidTokenFile {
                    path: path.to_path_buf(),
                    message: format!(
                        "token {position} is id {id}, but the header's vocabulary has {vocab} \
                         ids (0..{vocab}): the file was changed or is not this header's; \
                         prepare the corpus again"
                    ),
                });
            }
            position += 1;
        }
        if filled < block.len() {
            return Ok(());
        }
    }
}

impl TokenIds for MmapTokens {
    fn len(&self) -> usize {
        self.header.tokens as usize
    }

    fn copy_window(&self, start: usize, out: &mut [i64]) {
        use std::sync::atomic::Ordering;
        if self.reads.fetch_add(1, Ordering::Relaxed) + 1 >= RELEASE_EVERY {
            self.reads.store(0, Ordering::Relaxed);
            // SAFETY: a read-only mapping of a file: after MADV_DONTNEED its pages are read again
            // from the file (the page cache) on the next access, with the same contents; no
            // reference into the mapping outlives this call's own reads below.
            #[cfg(unix)]
            let _ = unsafe {
                self.map
                    .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
            };
        }
        let w = self.header.dtype.width();
        let bytes = &self.map[start * w..(start + out.len()) * w];
        match self.header.dtype {
            TokenDtype::U16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = i64::from(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            TokenDtype::U32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(vocab: usize) {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("train.bin");
        let ids: Vec<u32> = (0..10_000u32).map(|i| (i * 7919) % vocab as u32).collect();
        let mut w = TokenFileWriter::create(&bin, vocab, "word").unwrap();
        assert!(!bin.exists(), "nothing at the final path before finish");
        for chunk in ids.chunks(777) {
            w.write(chunk).unwrap();
        }
        let header = w.finish().unwrap();
        assert_eq!(header.tokens, 10_000);
        assert_eq!(header.dtype, TokenDtype::for_vocab(vocab));
        let m = MmapTokens::open(&bin).unwrap();
        assert_eq!(m.len(), 10_000);
        let mut out = vec![0i64; 100];
        m.copy_window(4321, &mut out);
        let want: Vec<i64> = ids[4321..4421].iter().map(|&i| i64::from(i)).collect();
        assert_eq!(out, want);
        assert_eq!(
            std::fs::metadata(&bin).unwrap().len(),
            10_000 * header.dtype.width() as u64
        );
    }

    #[test]
    fn u16_and_u32_files_read_back_the_ids_written() {
        roundtrip(50_257);
        roundtrip(100_000);
    }

    /// BB2-15: u16 holds vocabularies of up to 65,536 ids (id 65,535 reads back as 65,535, not
    /// widened for nothing), u32 from 65,537 (id 65,536 reads back as 65,536, never wrapped to
    /// 0, nor 70,000 to 4,464); the header records the dtype, and a raw read of the bytes as the
    /// header says gives the ids too.
    #[test]
    fn bb2_15_u16_up_to_65536_ids_and_u32_above_never_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        for (vocab, dtype) in [
            (65_535, TokenDtype::U16),
            (65_536, TokenDtype::U16),
            (65_537, TokenDtype::U32),
            (70_001, TokenDtype::U32),
        ] {
            assert_eq!(TokenDtype::for_vocab(vocab), dtype, "{vocab}");
            let top = vocab as u32 - 1;
            let ids = [0, top, 65_535.min(top), top / 2, 1];
            let bin = dir.path().join(format!("v{vocab}.bin"));
            let mut w = TokenFileWriter::create(&bin, vocab, "bpe").unwrap();
            w.write(&ids).unwrap();
            let header = w.finish().unwrap();
            assert_eq!(header.dtype, dtype);
            let on_disk: TokenFileHeader =
                serde_json::from_slice(&std::fs::read(header_path(&bin)).unwrap()).unwrap();
            assert_eq!(on_disk, header);
            let want: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
            let m = MmapTokens::open(&bin).unwrap();
            let mut got = vec![0i64; ids.len()];
            m.copy_window(0, &mut got);
            assert_eq!(got, want, "{vocab}");
            let bytes = std::fs::read(&bin).unwrap();
            let raw: Vec<i64> = match dtype {
                TokenDtype::U16 => bytes
                    .chunks_exact(2)
                    .map(|b| i64::from(u16::from_le_bytes([b[0], b[1]])))
                    .collect(),
                TokenDtype::U32 => bytes
                    .chunks_exact(4)
                    .map(|b| i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect(),
            };
            assert_eq!(raw, want, "{vocab}");
        }
        // An id the vocabulary does not hold is refused, not truncated into another id.
        let mut w = TokenFileWriter::create(&dir.path().join("x.bin"), 65_536, "bpe").unwrap();
        let msg = w.write(&[65_536]).unwrap_err().to_string();
        assert!(msg.contains("65536") && msg.contains("below"), "{msg}");
    }

    #[test]
    fn an_id_outside_the_vocabulary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TokenFileWriter::create(&dir.path().join("x.bin"), 10, "char").unwrap();
        let msg = w.write(&[3, 10]).unwrap_err().to_string();
        assert!(msg.contains("10"), "{msg}");
    }

    #[test]
    fn a_truncated_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("valid.bin");
        let mut w = TokenFileWriter::create(&bin, 300, "char").unwrap();
        w.write(&[1, 2, 3, 4]).unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&bin).unwrap();
        std::fs::write(&bin, &bytes[..5]).unwrap();
        let msg = MmapTokens::open(&bin).unwrap_err().to_string();
        assert!(
            msg.contains("valid.bin") && msg.contains("truncated"),
            "{msg}"
        );
    }

    #[test]
    fn an_out_of_range_id_in_a_file_is_named_when_it_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("train.bin");
        let mut w = TokenFileWriter::create(&bin, 2048, "bpe").unwrap();
        w.write(&(0..3000u32).map(|i| i % 2048).collect::<Vec<_>>())
            .unwrap();
        w.finish().unwrap();
        assert!(MmapTokens::open(&bin).is_ok());
        let mut bytes = std::fs::read(&bin).unwrap();
        bytes[2 * 2500..2 * 2500 + 2].copy_from_slice(&0xFFFFu16.to_le_bytes());
        std::fs::write(&bin, &bytes).unwrap();
        let msg = MmapTokens::open(&bin).unwrap_err().to_string();
        assert!(
            msg.contains("train.bin")
                && msg.contains("token 2500 is id 65535")
                && msg.contains("2048"),
            "{msg}"
        );
    }

    #[test]
    fn random_windows_read_a_mapped_file() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("train.bin");
        let mut w = TokenFileWriter::create(&bin, 70_000, "bpe").unwrap();
        w.write(&(0..5_000u32).collect::<Vec<_>>()).unwrap();
        w.finish().unwrap();
        let m = std::sync::Arc::new(MmapTokens::open(&bin).unwrap());
        let r = crate::RandomWindows::new(m, 4, 16, 3, "train", tch::Device::Cpu).unwrap();
        for (inputs, targets) in crate::collect_epoch(&r, 1).unwrap() {
            assert_eq!(inputs[0] + 1, targets[0]);
        }
    }
}
