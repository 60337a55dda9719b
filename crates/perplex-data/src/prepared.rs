//! `perplex data prepare`: a corpus tokenized once into token files, streaming with bounded
//! memory, and the data source that trains from them memory-mapped.
//!
//! [`prepare`] reads the corpus a block at a time, so its memory holds one block and the
//! vocabulary's counts (word level) or the BPE trainer's counts of distinct pre-tokens (`bpe`),
//! never the corpus; it writes `train.bin`, `valid.bin` (and `test.bin`) with their JSON headers
//! and `vocab.json` (with `tokenizer.json` for `bpe`) into one directory. The ids equal those
//! [`crate::LmData::load`] gives for the same `[data]` options, split for split, and a `bpe`
//! tokenizer trained here equals the one a `bpe` run trains from the text.
//!
//! [`PreparedData`] (`data.prepared = "dir"`) maps those files ([`MmapTokens`]): the training
//! split is read by the configured loader (random windows or BPTT streams), validation and test
//! in BPTT order, every token once. Its vocabulary is `dir/vocab.json` (and `dir/tokenizer.json`),
//! which a run copies into its own directory, so `perplex generate` and `perplex eval` encode
//! and decode with the tokenizer that made the files.
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tch::{Device, Tensor};

use crate::pieces::TextPieces;
use crate::token_file::{MmapTokens, TokenFileWriter};
use crate::{
    fetch, Batch, Batches, Cursor, DataConfig, DataError, DataSource, HfTokenizer, LoaderKind,
    RandomWindows, TokenIds, TokenizerKind, Vocabulary,
};

/// Bytes of text tokenized at a time.
const CHUNK_BYTES: usize = 4 << 20;

/// Calls `f` with the text of `path` in chunks of whole lines, such that tokenizing the chunks
/// one by one gives the tokens of the whole text. A line-based tokenizer (`word`: `<eos>` per
/// line, as Python's `split('\n')`) gets chunks cut at a line break that is left out (`keep_newline
/// = false`); a tokenizer that reads the line break as a token (`char`) gets it at the end of
/// the chunk.
///
/// # Errors
/// [`DataError::NotFound`]/[`DataError::Io`], [`DataError::InvalidUtf8`] with the byte offset.
pub fn for_each_chunk(
    path: &Path,
    keep_newline: bool,
    f: &mut dyn FnMut(&str) -> Result<(), DataError>,
) -> Result<(), DataError> {
    chunks_of(path, keep_newline, CHUNK_BYTES, f)
}

fn chunks_of(
    path: &Path,
    keep_newline: bool,
    chunk_bytes: usize,
    f: &mut dyn FnMut(&str) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let mut file = std::fs::File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::NotFound {
            path: path.to_path_buf(),
        },
        _ => DataError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let mut pending: Vec<u8> = Vec::with_capacity(chunk_bytes * 2);
    let mut offset = 0usize;
    let mut buf = vec![0u8; chunk_bytes];
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        pending.extend_from_slice(&buf[..n]);
        let cut = if n == 0 {
            None
        } else {
            pending.iter().rposition(|&b| b == b'\n')
        };
        let (chunk_end, next_start) = match cut {
            Some(i) if keep_newline => (i + 1, i + 1),
            Some(i) => (i, i + 1),
            None if n == 0 => (pending.len(), pending.len()),
            None => continue,
        };
        let text =
            std::str::from_utf8(&pending[..chunk_end]).map_err(|e| DataError::InvalidUtf8 {
                path: path.to_path_buf(),
                offset: offset + e.valid_up_to(),
            })?;
        f(text)?;
        offset += next_start;
        pending.drain(..next_start);
        if n == 0 {
            return Ok(());
        }
    }
}

/// Where each split's tokens come from.
enum Sources {
    /// One file cut at token fractions.
    One(PathBuf),
    /// Separate files.
    Files {
        train: PathBuf,
        valid: PathBuf,
        test: Option<PathBuf>,
    },
}

impl Sources {
    /// Whether the corpus has a test split.
    fn has_test(&self, config: &DataConfig) -> bool {
        match self {
            Self::One(_) => config.splits.len() == 3,
            Self::Files { test, .. } => test.is_some(),
        }
    }
}

fn sources(config: &DataConfig) -> Result<Sources, DataError> {
    config.validate()?;
    if let Some(train) = &config.train {
        return Ok(Sources::Files {
            train: train.clone(),
            valid: config
                .valid
                .clone()
                .expect("validated: valid is set with train"),
            test: config.test.clone(),
        });
    }
    Ok(Sources::One(match &config.path {
        Some(p) => p.clone(),
        None => fetch::fetch_corpus(
            config.corpus.as_deref().unwrap_or("tinyshakespeare"),
            &config.data_dir,
        )?,
    }))
}

/// What [`prepare`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct PrepareReport {
    /// The output directory.
    pub dir: PathBuf,
    /// Vocabulary size (with `<unk>` for a vocabulary built from counts; a Hugging Face
    /// tokenizer's own size for `bpe`).
    pub vocab_size: usize,
    /// Tokens per split: train, valid, test.
    pub tokens: [u64; 3],
    /// Seconds taken.
    pub seconds: f64,
}

/// Tokenizes the corpus of `config` into token files in `out` (created if missing): see the
/// module documentation. Existing files of the same names are replaced only once their
/// replacements are complete.
///
/// `word`, `char` and `whitespace` read the corpus three times (count tokens, rank the
/// training range's vocabulary, encode). `bpe` cuts the text into splits as
/// [`crate::LmData::load`] does (one file at `int(f · n)` characters), takes the tokenizer from
/// `tokenizer_file` or trains a byte-level BPE of `max_vocab_size` tokens on the training
/// split streamed in pieces ([`HfTokenizer::train_byte_level_bpe_on`]: the same tokenizer, byte
/// for byte, as training on the whole split in memory), writes it as `tokenizer.json` beside
/// `vocab.json`, and encodes each split a piece at a time into its ids. Memory holds a read
/// block and, for `bpe` training, one count per distinct pre-token; never the corpus (except
/// with a `tokenizer_file` that cannot encode text in pieces, see
/// [`HfTokenizer::encode`], which gets each split whole).
///
/// # Errors
/// What [`crate::LmData::load`] returns for the same options (missing file, invalid UTF-8, an
/// empty corpus or split, a bad tokenizer file), and write errors naming the file.
pub fn prepare(config: &DataConfig, out: &Path) -> Result<PrepareReport, DataError> {
    prepare_reading(config, out, crate::pieces::READ_BYTES)
}

/// [`prepare`], reading a `bpe` corpus `read_bytes` at a time.
fn prepare_reading(
    config: &DataConfig,
    out: &Path,
    read_bytes: usize,
) -> Result<PrepareReport, DataError> {
    let started = std::time::Instant::now();
    let replacing = check_output_dir(out)?;
    let src = sources(config)?;
    // Everything is written into a staging directory beside `out` and renamed into place at the
    // end: a failed or interrupted prepare leaves `out` as it was, and a replaced set of token
    // files leaves no file of the old set behind (a stale `tokenizer.json` or `test.bin`).
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let staging = tempfile::Builder::new()
        .prefix(".prepare-")
        .tempdir_in(parent)
        .map_err(io(parent))?;
    let dir = staging.path();
    let (vocab, tokens) = match config.tokenizer.tokenizer() {
        Some(rules) => prepare_rule_based(config, &src, rules.as_ref(), dir)?,
        None => prepare_hf(config, &src, dir, read_bytes)?,
    };
    // Also writes `tokenizer.json` for a Hugging Face tokenizer's vocabulary.
    vocab.save(&dir.join("vocab.json"))?;
    // The staging directory was made 0700: give it a directory's usual mode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io(dir))?;
    }
    if replacing {
        tracing::warn!(dir = %out.display(), "replacing the token files prepared there before");
        let old = tempfile::Builder::new()
            .prefix(".prepare-old-")
            .tempdir_in(parent)
            .map_err(io(parent))?;
        let old_set = old.path().join("set");
        std::fs::rename(out, &old_set).map_err(io(out))?;
        if let Err(source) = std::fs::rename(dir, out) {
            // Put the old set back: `out` is never left missing.
            let _ = std::fs::rename(&old_set, out);
            return Err(DataError::Io {
                path: out.to_path_buf(),
                source,
            });
        }
        drop(old);
    } else {
        // `out` is absent or an empty directory (which a rename replaces).
        std::fs::rename(dir, out).map_err(io(out))?;
    }
    // The staging directory is `out` now: nothing left to remove.
    let _ = staging.keep();
    Ok(PrepareReport {
        dir: out.to_path_buf(),
        vocab_size: vocab.len(),
        tokens,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The warning for a config whose `data.max_vocab_size` is not the one token file `m` was
/// prepared with: the vocabulary is the file's, so the config's value is not used (and the
/// run's `config.toml` would record a size it did not train with). `None` when they agree, for
/// a loaded `tokenizer_file`, and for files that do not record it.
fn unused_max_vocab_size(m: &MmapTokens, config: &DataConfig) -> Option<String> {
    let made = m.header().max_vocab_size?;
    (config.tokenizer_file.is_none() && made != config.max_vocab_size).then(|| {
        format!(
            "data.max_vocab_size = {} is not used: {} was prepared with {made} (its vocabulary \
             has {} tokens); set data.max_vocab_size = {made} to match, or prepare the corpus \
             again for another size",
            config.max_vocab_size,
            m.path().display(),
            m.header().vocab_size
        )
    })
}

/// The files `perplex data prepare` writes in its output directory.
const PREPARED_FILES: [&str; 8] = [
    "train.bin",
    "train.json",
    "valid.bin",
    "valid.json",
    "test.bin",
    "test.json",
    "vocab.json",
    HfTokenizer::FILE,
];

/// Checks `out` before any work: absent or empty (`false`), or holding only the files of an
/// earlier prepare (`true`: they will be replaced as a set). Anything else there is refused, so
/// a mistyped `--out` cannot replace a directory of other files.
fn check_output_dir(out: &Path) -> Result<bool, DataError> {
    let entries = match std::fs::read_dir(out) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(DataError::Io {
                path: out.to_path_buf(),
                source,
            })
        }
    };
    let mut any = false;
    for entry in entries {
        let entry = entry.map_err(|source| DataError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        if !PREPARED_FILES.iter().any(|f| name == *f) {
            return Err(DataError::InvalidConfig {
                key: "prepare --out",
                value: out.display().to_string(),
                expected: format!(
                    "a new or empty directory, or one that holds only token files of an earlier \
                     prepare (it holds {})",
                    Path::new(&name).display()
                ),
            });
        }
        any = true;
    }
    Ok(any)
}

/// The token files of the splits, written side by side.
struct SplitWriters {
    writers: Vec<TokenFileWriter>,
}

impl SplitWriters {
    const NAMES: [&'static str; 3] = ["train", "valid", "test"];

    /// Writers for `train.bin`, `valid.bin` (and `test.bin`) in `out`.
    fn create(
        out: &Path,
        vocab_size: usize,
        tokenizer: &str,
        tokenizer_file: Option<&str>,
        max_vocab_size: Option<usize>,
        has_test: bool,
    ) -> Result<Self, DataError> {
        let splits = if has_test { 3 } else { 2 };
        let writers = Self::NAMES[..splits]
            .iter()
            .map(|split| {
                let path = out.join(format!("{split}.bin"));
                let writer = TokenFileWriter::create(&path, vocab_size, tokenizer)?;
                let writer = match tokenizer_file {
                    Some(file) => writer.with_tokenizer_file(file),
                    None => writer,
                };
                Ok(match max_vocab_size {
                    Some(m) => writer.with_max_vocab_size(m),
                    None => writer,
                })
            })
            .collect::<Result<_, DataError>>()?;
        Ok(Self { writers })
    }

    fn len(&self) -> usize {
        self.writers.len()
    }

    /// Appends `ids` to split `split` (0 train, 1 valid, 2 test).
    fn write(&mut self, split: usize, ids: &[u32]) -> Result<(), DataError> {
        self.writers[split].write(ids)
    }

    /// Renames the files into place: the tokens per split.
    ///
    /// # Errors
    /// [`DataError::SplitTooSmall`] for a split without a token, before any file is renamed.
    fn finish(self, config: &DataConfig) -> Result<[u64; 3], DataError> {
        if let Some(i) = self.writers.iter().position(|w| w.tokens() == 0) {
            return Err(DataError::SplitTooSmall {
                split: Self::NAMES[i].into(),
                tokens: 0,
                needed: config.seq_len + 1,
                rule: format!("seq_len {} + 1: one window", config.seq_len),
            });
        }
        let mut tokens = [0u64; 3];
        for (i, w) in self.writers.into_iter().enumerate() {
            tokens[i] = w.finish()?.tokens;
        }
        Ok(tokens)
    }
}

/// `word`, `char`, `whitespace`: count, rank the training range's vocabulary, encode.
fn prepare_rule_based(
    config: &DataConfig,
    src: &Sources,
    tokenizer: &dyn crate::Tokenizer,
    out: &Path,
) -> Result<(Vocabulary, [u64; 3]), DataError> {
    // `word` reads lines as Python's `split('\n')` (a trailing empty line has its `<eos>`): its
    // chunks leave the cut line break out; `char` and `whitespace` keep it.
    let keep_newline = config.tokenizer != TokenizerKind::Word;
    let each = |path: &Path, f: &mut dyn FnMut(&str)| -> Result<(), DataError> {
        for_each_chunk(path, keep_newline, &mut |text| {
            tokenizer.for_each_token(text, f);
            Ok(())
        })
    };
    // (count, first position) per token of the training range, ranked by `Vocabulary::from_counts`.
    let mut stats: HashMap<String, (usize, usize)> = HashMap::new();
    let mut count_train = |t: &str, pos: usize| match stats.get_mut(t) {
        Some(s) => s.0 += 1,
        None => {
            stats.insert(t.to_string(), (1, pos));
        }
    };
    let train_end: Option<(usize, usize)> = match src {
        Sources::One(path) => {
            let mut n = 0usize;
            each(path, &mut |_| n += 1)?;
            let (train, valid, _) = crate::corpus::split(0..n, &config.splits);
            let mut pos = 0usize;
            each(path, &mut |t| {
                if pos < train.end {
                    count_train(t, pos);
                }
                pos += 1;
            })?;
            Some((train.end, valid.end))
        }
        Sources::Files { train, .. } => {
            let mut pos = 0usize;
            each(train, &mut |t| {
                count_train(t, pos);
                pos += 1;
            })?;
            None
        }
    };
    let cap = (config.max_vocab_size > 0).then_some(config.max_vocab_size);
    let vocab = Vocabulary::from_counts(
        stats.iter().map(|(t, &(n, first))| (t.as_str(), n, first)),
        cap,
    );
    drop(stats);
    let name = format!("{:?}", config.tokenizer).to_lowercase();
    let mut writers = SplitWriters::create(
        out,
        vocab.len(),
        &name,
        None,
        Some(config.max_vocab_size),
        src.has_test(config),
    )?;
    let mut failed: Option<DataError> = None;
    let mut buffers: Vec<Vec<u32>> = vec![Vec::with_capacity(1 << 16); writers.len()];
    let mut push = |split: usize, t: &str, writers: &mut SplitWriters| {
        buffers[split].push(vocab.id(t) as u32);
        if buffers[split].len() == buffers[split].capacity() {
            if let Err(e) = writers.write(split, &buffers[split]) {
                failed.get_or_insert(e);
            }
            buffers[split].clear();
        }
    };
    match src {
        Sources::One(path) => {
            let (n_train, n_valid_end) = train_end.expect("one file has split points");
            let mut pos = 0usize;
            each(path, &mut |t| {
                let split = if pos < n_train {
                    0
                } else if pos < n_valid_end {
                    1
                } else {
                    2
                };
                push(split, t, &mut writers);
                pos += 1;
            })?;
        }
        Sources::Files { train, valid, test } => {
            each(train, &mut |t| push(0, t, &mut writers))?;
            each(valid, &mut |t| push(1, t, &mut writers))?;
            if let Some(test) = test {
                each(test, &mut |t| push(2, t, &mut writers))?;
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    for (split, rest) in buffers.iter().enumerate() {
        writers.write(split, rest)?;
    }
    Ok((vocab, writers.finish(config)?))
}

/// Pieces of text (of [`crate::hf::CHUNK_BYTES`]) encoded in parallel at a time: a megabyte,
/// whose HF encodings (a `String` per token among others) take some tens of megabytes.
const ENCODE_BATCH: usize = 16;

/// `bpe`: the text cut into splits, the tokenizer loaded or trained on the training split,
/// each split encoded a piece at a time (see [`prepare`]).
fn prepare_hf(
    config: &DataConfig,
    src: &Sources,
    out: &Path,
    read_bytes: usize,
) -> Result<(Vocabulary, [u64; 3]), DataError> {
    // (file, character offsets that cut it into splits, index of its first split)
    let parts: Vec<(&Path, Vec<usize>, usize)> = match src {
        Sources::One(path) => {
            let (train, valid, test) = crate::corpus::split(0..text_chars(path)?, &config.splits);
            let mut cuts = vec![train.end];
            cuts.extend(test.map(|_| valid.end));
            vec![(path.as_path(), cuts, 0)]
        }
        Sources::Files { train, valid, test } => {
            let files = [Some(train), Some(valid), test.as_ref()];
            let mut parts = Vec::new();
            for (split, path) in files.into_iter().enumerate() {
                if let Some(path) = path {
                    text_chars(path)?;
                    parts.push((path.as_path(), Vec::new(), split));
                }
            }
            parts
        }
    };
    let hf = Arc::new(match &config.tokenizer_file {
        Some(file) => {
            let hf = HfTokenizer::from_file(file)?;
            tracing::info!(file = %file.display(), vocab = hf.vocab_size(), "tokenizer loaded");
            hf
        }
        None => {
            let (path, cuts, _) = &parts[0];
            train_bpe(path, cuts, config.max_vocab_size, read_bytes)?
        }
    });
    if hf.piece_bytes().is_none() {
        tracing::warn!(
            "this tokenizer cannot encode text in pieces with the ids of the whole (a normaliser, \
                    or a pre-tokenizer other than the byte-level one without prefix space): each split \
                    is held in memory whole"
        );
    }
    let vocab = Vocabulary::from_hf(hf.clone())?;
    let mut writers = SplitWriters::create(
        out,
        vocab.len(),
        "bpe",
        Some(HfTokenizer::FILE),
        config
            .tokenizer_file
            .is_none()
            .then_some(config.max_vocab_size),
        src.has_test(config),
    )?;
    let started = std::time::Instant::now();
    // Pieces of one split, encoded together in parallel.
    let mut batch: (usize, Vec<String>) = (0, Vec::with_capacity(ENCODE_BATCH));
    let flush = |batch: &mut (usize, Vec<String>), writers: &mut SplitWriters| {
        for ids in hf.encode_batch(&batch.1)? {
            writers.write(batch.0, &ids)?;
        }
        batch.1.clear();
        Ok::<(), DataError>(())
    };
    for (path, cuts, first_split) in &parts {
        for item in TextPieces::open(path, cuts.clone(), hf.piece_bytes(), read_bytes)? {
            let (split, piece) = item?;
            let split = first_split + split;
            if split != batch.0 || batch.1.len() == ENCODE_BATCH {
                flush(&mut batch, &mut writers)?;
                batch.0 = split;
            }
            batch.1.push(piece);
        }
    }
    flush(&mut batch, &mut writers)?;
    let tokens = writers.finish(config)?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        tokens = tokens.iter().sum::<u64>(),
        seconds = format!("{seconds:.2}"),
        tokens_per_second = format!(
            "{:.0}",
            tokens.iter().sum::<u64>() as f64 / seconds.max(1e-9)
        ),
        "encoded"
    );
    Ok((vocab, tokens))
}

/// A byte-level BPE of `vocab_size` tokens trained on split 0 of `path` cut at `cuts`,
/// streamed in pieces.
fn train_bpe(
    path: &Path,
    cuts: &[usize],
    vocab_size: usize,
    read_bytes: usize,
) -> Result<HfTokenizer, DataError> {
    let started = std::time::Instant::now();
    let pieces = TextPieces::open(
        path,
        cuts.to_vec(),
        Some(crate::hf::CHUNK_BYTES),
        read_bytes,
    )?;
    let mut failed: Option<DataError> = None;
    let mut train_bytes = 0usize;
    let training = pieces.map_while(|item| match item {
        Ok((0, piece)) => {
            train_bytes += piece.len();
            Some(piece)
        }
        Ok(_) => None,
        Err(e) => {
            failed = Some(e);
            None
        }
    });
    let hf = HfTokenizer::train_byte_level_bpe_on(training, vocab_size);
    if let Some(e) = failed {
        return Err(e);
    }
    let hf = hf?;
    tracing::info!(
        vocab = hf.vocab_size(),
        max_vocab_size = vocab_size,
        train_bytes,
        seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
        "byte-level BPE trained on the training split"
    );
    Ok(hf)
}

/// The number of characters of a text file.
///
/// # Errors
/// [`DataError::EmptyCorpus`] for a file of only whitespace (as [`crate::LmData::load`] says),
/// and the errors of [`for_each_chunk`].
fn text_chars(path: &Path) -> Result<usize, DataError> {
    let (mut chars, mut has_text) = (0usize, false);
    for_each_chunk(path, true, &mut |text| {
        chars += text.chars().count();
        has_text |= !text.trim().is_empty();
        Ok(())
    })?;
    if !has_text {
        return Err(DataError::EmptyCorpus {
            path: path.to_path_buf(),
        });
    }
    Ok(chars)
}

/// BPTT windows read from token ids in place (no tensor of the whole split): the layout of
/// [`crate::BpttBatches`] (row `b` holds tokens `b·n .. (b+1)·n`, window `i` columns
/// `i·seq_len ..`), each batch copied out of the ids when asked for. The recurrent state is
/// carried across windows.
#[derive(Debug, Clone)]
pub struct StreamWindows {
    ids: Arc<dyn TokenIds>,
    rows: std::ops::Range<usize>,
    columns: usize,
    seq_len: usize,
    windows: usize,
    device: Device,
}

impl StreamWindows {
    /// As [`crate::BpttBatches::new`], over `ids`.
    ///
    /// # Errors
    /// [`DataError::SplitTooSmall`] naming `split`.
    pub fn new(
        ids: Arc<dyn TokenIds>,
        batch_size: usize,
        seq_len: usize,
        drop_last: bool,
        split: &str,
        device: Device,
    ) -> Result<Self, DataError> {
        let (columns, windows) =
            crate::batch::bptt_layout(ids.len(), batch_size, seq_len, drop_last, split)?;
        Ok(Self {
            ids,
            rows: 0..batch_size,
            columns,
            seq_len,
            windows,
            device,
        })
    }

    fn window_len(&self, index: usize) -> usize {
        self.seq_len.min(self.columns - 1 - index * self.seq_len)
    }
}

impl Batches for StreamWindows {
    fn len(&self) -> usize {
        self.windows
    }

    fn batch_size(&self) -> i64 {
        self.rows.len() as i64
    }

    fn seq_len(&self) -> i64 {
        self.seq_len as i64
    }

    fn carries_state(&self) -> bool {
        true
    }

    fn tokens_per_pass(&self) -> usize {
        (0..self.windows).map(|i| self.window_len(i)).sum::<usize>() * self.rows.len()
    }

    fn get(&self, cursor: Cursor) -> Result<Option<Batch>, DataError> {
        if cursor.index >= self.windows {
            return Ok(None);
        }
        let len = self.window_len(cursor.index);
        let width = len + 1;
        let mut buf = vec![0i64; self.rows.len() * width];
        for (row, out) in self.rows.clone().zip(buf.chunks_exact_mut(width)) {
            self.ids
                .copy_window(row * self.columns + cursor.index * self.seq_len, out);
        }
        let w = Tensor::f_from_slice(&buf)?
            .f_view([self.rows.len() as i64, width as i64])?
            .f_to_device(self.device)?;
        Ok(Some(Batch {
            inputs: w.f_narrow(1, 0, len as i64)?,
            targets: w.f_narrow(1, 1, len as i64)?,
            index: cursor.index,
        }))
    }

    fn shard(&self, rank: usize, world_size: usize) -> Result<Box<dyn Batches>, DataError> {
        let local = crate::batches::shard_rows(self.rows.len(), rank, world_size)?;
        let mut s = self.clone();
        s.rows = self.rows.start + local.start..self.rows.start + local.end;
        Ok(Box::new(s))
    }
}

/// A corpus prepared by [`prepare`], read memory-mapped (`data.prepared = "dir"`).
#[derive(Debug)]
pub struct PreparedData {
    /// The vocabulary of the token files (`dir/vocab.json`).
    pub vocab: Vocabulary,
    train: Arc<MmapTokens>,
    valid: Arc<MmapTokens>,
    test: Option<Arc<MmapTokens>>,
    config: DataConfig,
}

impl PreparedData {
    /// Maps the token files of `config.prepared`.
    ///
    /// # Errors
    /// Missing or malformed files, named; a header whose tokenizer or vocabulary size is not the
    /// config's or `vocab.json`'s; a split too small for one batch. A header prepared with
    /// another `data.max_vocab_size` than the config's is used with a warning (the vocabulary is
    /// the files').
    pub fn open(config: &DataConfig) -> Result<Self, DataError> {
        Self::open_with(config, true)
    }

    /// [`PreparedData::open`]; `warn_max_vocab_size = false` leaves out the warning about a
    /// `data.max_vocab_size` other than the files' (a run that is resumed or evaluated was
    /// warned when it started, and its own vocabulary is compared with the files' after).
    pub(crate) fn open_with(
        config: &DataConfig,
        warn_max_vocab_size: bool,
    ) -> Result<Self, DataError> {
        let dir = config.prepared.as_deref().ok_or(DataError::InvalidConfig {
            key: "prepared",
            value: "(unset)".into(),
            expected: "the directory `perplex data prepare` wrote".into(),
        })?;
        if !dir.is_dir() {
            return Err(DataError::InvalidConfig {
                key: "prepared",
                value: dir.display().to_string(),
                expected: "the directory `perplex data prepare` wrote (there is no such \
                           directory; a relative path is read from the current directory)"
                    .into(),
            });
        }
        let vocab = Vocabulary::load(&dir.join("vocab.json"))?;
        if config.tokenizer == TokenizerKind::Bpe && vocab.hf_tokenizer().is_none() {
            return Err(DataError::InvalidVocabulary {
                path: dir.join("vocab.json"),
                message: format!(
                    "data.tokenizer is `bpe` but this vocabulary names no {}: prepare the corpus \
                     again with tokenizer = \"bpe\"",
                    HfTokenizer::FILE
                ),
            });
        }
        let open = |split: &str| -> Result<Arc<MmapTokens>, DataError> {
            let m = MmapTokens::open(&dir.join(format!("{split}.bin")))?;
            let h = m.header();
            let name = format!("{:?}", config.tokenizer).to_lowercase();
            if h.vocab_size != vocab.len() || h.tokenizer != name {
                return Err(DataError::InvalidTokenFile {
                    path: m.path().to_path_buf(),
                    message: format!(
                        "made by the `{}` tokenizer for {} tokens, but data.tokenizer is `{name}` \
                         and vocab.json has {} tokens: {}",
                        h.tokenizer,
                        h.vocab_size,
                        vocab.len(),
                        if h.tokenizer != name && h.vocab_size == vocab.len() {
                            format!(
                                "set data.tokenizer = \"{}\" to train from these files, or \
                                 prepare the corpus again with `{name}`",
                                h.tokenizer
                            )
                        } else {
                            "prepare the corpus again".to_string()
                        }
                    ),
                });
            }
            if let Some(warning) = unused_max_vocab_size(&m, config).filter(|_| warn_max_vocab_size)
            {
                tracing::warn!("{warning}");
            }
            Ok(Arc::new(m))
        };
        let data = Self {
            train: open("train")?,
            valid: open("valid")?,
            test: if dir.join("test.bin").exists() {
                Some(open("test")?)
            } else {
                None
            },
            vocab,
            config: config.clone(),
        };
        data.train_batches(Device::Cpu, 0)?;
        data.valid_batches(Device::Cpu)?;
        Ok(data)
    }

    /// Tokens per split: train, valid, test (0 without a test split).
    pub fn tokens(&self) -> [usize; 3] {
        [
            self.train.len(),
            self.valid.len(),
            self.test.as_ref().map_or(0, |t| t.len()),
        ]
    }

    /// The ids of `split` (`valid` or `test`) as int64 `[n]` (for scoring one split); `None`
    /// for an unknown split or a missing test split.
    ///
    /// # Errors
    /// libtorch errors.
    pub fn split_ids(&self, split: &str) -> Option<Result<Tensor, DataError>> {
        let m = match split {
            "valid" => &self.valid,
            "test" => self.test.as_ref()?,
            _ => return None,
        };
        let mut ids = vec![0i64; m.len()];
        m.copy_window(0, &mut ids);
        Some(Tensor::f_from_slice(&ids).map_err(DataError::from))
    }

    fn eval(
        &self,
        ids: &Arc<MmapTokens>,
        split: &str,
        device: Device,
    ) -> Result<StreamWindows, DataError> {
        let c = &self.config;
        let ids: Arc<dyn TokenIds> = ids.clone();
        StreamWindows::new(
            ids,
            c.eval_batch_size.unwrap_or(c.batch_size),
            c.seq_len,
            false,
            split,
            device,
        )
    }
}

impl DataSource for PreparedData {
    fn vocab(&self) -> &Vocabulary {
        &self.vocab
    }

    fn tokenizer(&self) -> TokenizerKind {
        self.config.tokenizer
    }

    fn train_batches(&self, device: Device, seed: u64) -> Result<Box<dyn Batches>, DataError> {
        let c = &self.config;
        let ids: Arc<dyn TokenIds> = self.train.clone();
        Ok(match c.loader {
            LoaderKind::Bptt => Box::new(StreamWindows::new(
                ids,
                c.batch_size,
                c.seq_len,
                true,
                "train",
                device,
            )?),
            LoaderKind::RandomWindows => Box::new(RandomWindows::new(
                ids,
                c.batch_size,
                c.seq_len,
                seed,
                "train",
                device,
            )?),
        })
    }

    fn valid_batches(&self, device: Device) -> Result<Box<dyn Batches>, DataError> {
        Ok(Box::new(self.eval(&self.valid, "valid", device)?))
    }

    fn split_tokens(&self) -> [usize; 3] {
        self.tokens()
    }

    fn test_batches(&self, device: Device) -> Option<Result<Box<dyn Batches>, DataError>> {
        self.test.as_ref().map(|t| {
            self.eval(t, "test", device)
                .map(|b| Box::new(b) as Box<dyn Batches>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{collect_epoch, LmData};

    fn corpus(dir: &Path) -> PathBuf {
        let text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, \
                    speak.\n\u{e9}t\u{e9} <unk> caf\u{e9}\n"
            .repeat(60);
        let p = dir.join("c.txt");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Every split of a prepared corpus holds exactly the ids `LmData::load` gives, and the
    /// loaders read the same batches from the mapped files as from the in-memory tensors.
    /// For `bpe` too: the BPE trained from the streamed training split is the one trained on
    /// the whole split in memory (the same `tokenizer.json`), read in blocks of 997 bytes that
    /// cut lines and characters.
    #[test]
    fn prepared_ids_equal_in_memory_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = corpus(dir.path());
        let saved = dir.path().join("saved-tokenizer.json");
        let text = std::fs::read_to_string(&path).unwrap();
        HfTokenizer::train_byte_level_bpe(&text, 280)
            .unwrap()
            .save(&saved)
            .unwrap();
        for (tokenizer, cap, splits, file) in [
            (TokenizerKind::Word, 0, vec![0.8, 0.1, 0.1], None),
            (TokenizerKind::Char, 0, vec![0.9, 0.1], None),
            (TokenizerKind::Word, 5, vec![0.9, 0.1], None),
            (TokenizerKind::Whitespace, 0, vec![0.9, 0.1], None),
            (TokenizerKind::Bpe, 300, vec![0.9, 0.1], None),
            (TokenizerKind::Bpe, 320, vec![0.8, 0.1, 0.1], None),
            (
                TokenizerKind::Bpe,
                0,
                vec![0.8, 0.1, 0.1],
                Some(saved.clone()),
            ),
        ] {
            let mut config = DataConfig {
                path: Some(path.clone()),
                tokenizer,
                tokenizer_file: file.clone(),
                max_vocab_size: cap,
                splits,
                batch_size: 4,
                seq_len: 8,
                ..DataConfig::default()
            };
            let out = dir.path().join(format!("prep-{tokenizer:?}-{cap}"));
            let report = prepare_reading(&config, &out, 997).unwrap();
            if tokenizer == TokenizerKind::Bpe {
                let header: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(out.join("valid.json")).unwrap())
                        .unwrap();
                assert_eq!(header["tokenizer"], "bpe");
                assert_eq!(header["tokenizer_file"], "tokenizer.json");
            }
            if let Some(file) = &file {
                assert_eq!(
                    std::fs::read(out.join("tokenizer.json")).unwrap(),
                    std::fs::read(file).unwrap(),
                    "the given tokenizer file is copied beside the token files"
                );
            }
            let mem = LmData::load(&config).unwrap();
            config.prepared = Some(out.clone());
            let prep = PreparedData::open(&config).unwrap();
            assert_eq!(prep.vocab, mem.vocab);
            assert_eq!(report.vocab_size, mem.vocab.len());
            let want = |t: &Tensor| Vec::<i64>::try_from(t).unwrap();
            let got = |m: &Arc<MmapTokens>| {
                let mut v = vec![0i64; m.len()];
                m.copy_window(0, &mut v);
                v
            };
            assert_eq!(got(&prep.train), want(&mem.train), "{tokenizer:?} train");
            assert_eq!(got(&prep.valid), want(&mem.valid), "{tokenizer:?} valid");
            if let Some(t) = &mem.test {
                assert_eq!(got(prep.test.as_ref().unwrap()), want(t));
            }
            let a = collect_epoch(mem.train_loader(Device::Cpu, 3).unwrap().as_ref(), 1).unwrap();
            let b = collect_epoch(prep.train_batches(Device::Cpu, 3).unwrap().as_ref(), 1).unwrap();
            assert_eq!(a, b, "{tokenizer:?} bptt train batches");
            let a = collect_epoch(&mem.valid_batches(Device::Cpu).unwrap(), 1).unwrap();
            let b = collect_epoch(prep.valid_batches(Device::Cpu).unwrap().as_ref(), 1).unwrap();
            assert_eq!(a, b, "{tokenizer:?} valid batches");
        }
    }

    /// BB2-12: `<|endoftext|>` in the corpus (trusted text) is the trained BPE's special token:
    /// three documents give exactly three of its id in the prepared file, as in memory, never
    /// the pieces `<|`, `endoftext`, `|>`; it decodes back to the literal, and a prompt's
    /// literal encodes to the same one id.
    #[test]
    fn bb2_12_end_of_text_in_the_corpus_is_one_token() {
        let dir = tempfile::tempdir().unwrap();
        let filler = std::fs::read_to_string(corpus(dir.path())).unwrap();
        let train = dir.path().join("train.txt");
        let valid = dir.path().join("valid.txt");
        let docs = "one<|endoftext|>two<|endoftext|>three<|endoftext|>";
        std::fs::write(
            &train,
            format!(
                "{filler}{docs}
{filler}"
            ),
        )
        .unwrap();
        std::fs::write(&valid, &filler).unwrap();
        let mut config = DataConfig {
            train: Some(train.clone()),
            valid: Some(valid),
            tokenizer: TokenizerKind::Bpe,
            max_vocab_size: 300,
            batch_size: 4,
            seq_len: 8,
            ..DataConfig::default()
        };
        let out = dir.path().join("p");
        prepare(&config, &out).unwrap();
        let mem = LmData::load(&config).unwrap();
        config.prepared = Some(out);
        let prep = PreparedData::open(&config).unwrap();
        assert_eq!(prep.vocab, mem.vocab);
        let hf = prep.vocab.hf_tokenizer().unwrap();
        let eot = prep.vocab.id(HfTokenizer::END_OF_TEXT);
        assert_eq!(prep.vocab.token(eot), Some(HfTokenizer::END_OF_TEXT));
        let mut ids = vec![0i64; prep.train.len()];
        prep.train.copy_window(0, &mut ids);
        assert_eq!(ids, Vec::<i64>::try_from(&mem.train).unwrap());
        assert_eq!(ids.iter().filter(|&&i| i == eot).count(), 3);
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        assert_eq!(
            hf.decode(&ids).unwrap(),
            std::fs::read_to_string(&train).unwrap()
        );
        assert_eq!(hf.decode(&[eot as u32]).unwrap(), HfTokenizer::END_OF_TEXT);
        let prompt = hf.encode("a<|endoftext|>b").unwrap();
        assert_eq!(prompt.len(), 3, "{prompt:?}");
        assert_eq!(i64::from(prompt[1]), eot);
    }

    #[test]
    fn chunks_cut_at_line_breaks_tokenize_as_the_whole_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.txt");
        let text = "a b\n\nc, d\n\u{e9}\n".repeat(3_000);
        std::fs::write(&p, &text).unwrap();
        for kind in [
            TokenizerKind::Word,
            TokenizerKind::Char,
            TokenizerKind::Whitespace,
        ] {
            let tok = kind.tokenizer().unwrap();
            let whole = tok.tokenize(&text);
            let mut parts = Vec::new();
            let mut chunks = 0;
            chunks_of(&p, kind != TokenizerKind::Word, 1000, &mut |c| {
                chunks += 1;
                tok.tokenize_into(c, &mut parts);
                Ok(())
            })
            .unwrap();
            assert!(chunks > 30, "{chunks}");
            assert_eq!(parts, whole, "{kind:?}");
        }
    }

    #[test]
    fn a_header_of_another_tokenizer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = DataConfig {
            path: Some(corpus(dir.path())),
            tokenizer: TokenizerKind::Char,
            batch_size: 2,
            seq_len: 4,
            ..DataConfig::default()
        };
        let out = dir.path().join("p");
        prepare(&config, &out).unwrap();
        config.prepared = Some(out);
        config.tokenizer = TokenizerKind::Word;
        let msg = PreparedData::open(&config).unwrap_err().to_string();
        assert!(
            msg.contains("`char` tokenizer") && msg.contains("prepare"),
            "{msg}"
        );
    }

    /// A `data.max_vocab_size` other than the one the files were prepared with is not used:
    /// the files' vocabulary is, with a warning naming the file, both sizes and the fix (not
    /// silently).
    #[test]
    fn a_max_vocab_size_other_than_the_prepared_one_is_warned_of() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = DataConfig {
            path: Some(corpus(dir.path())),
            tokenizer: TokenizerKind::Word,
            max_vocab_size: 8,
            batch_size: 2,
            seq_len: 4,
            ..DataConfig::default()
        };
        let out = dir.path().join("p");
        prepare(&config, &out).unwrap();
        config.prepared = Some(out);
        let same = PreparedData::open(&config).unwrap();
        assert_eq!(unused_max_vocab_size(&same.train, &config), None);
        config.max_vocab_size = 300;
        let other = PreparedData::open(&config).unwrap();
        assert_eq!(other.vocab, same.vocab);
        let msg = unused_max_vocab_size(&other.train, &config).unwrap();
        assert!(
            msg.contains("train.bin")
                && msg.contains("data.max_vocab_size = 300 is not used")
                && msg.contains("prepared with 8"),
            "{msg}"
        );
    }

    /// Preparing into a directory of earlier token files replaces them as a set (no stale
    /// `tokenizer.json` or `test.bin` of the old set is left); a directory holding anything
    /// else is refused before any work, unchanged; no staging directory is left behind.
    #[test]
    fn prepare_replaces_an_earlier_set_whole_and_refuses_other_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = corpus(dir.path());
        let out = dir.path().join("tokens");
        let bpe = DataConfig {
            path: Some(path.clone()),
            tokenizer: TokenizerKind::Bpe,
            max_vocab_size: 300,
            splits: vec![0.8, 0.1, 0.1],
            batch_size: 2,
            seq_len: 4,
            ..DataConfig::default()
        };
        prepare(&bpe, &out).unwrap();
        assert!(out.join(HfTokenizer::FILE).exists() && out.join("test.bin").exists());
        let word = DataConfig {
            tokenizer: TokenizerKind::Word,
            splits: vec![0.9, 0.1],
            ..bpe.clone()
        };
        prepare(&word, &out).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "train.bin",
                "train.json",
                "valid.bin",
                "valid.json",
                "vocab.json"
            ]
        );
        let config = DataConfig {
            prepared: Some(out.clone()),
            ..word.clone()
        };
        assert!(PreparedData::open(&config).is_ok());

        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("notes.txt"), "mine").unwrap();
        let msg = prepare(&word, &other).unwrap_err().to_string();
        assert!(
            msg.contains("notes.txt") && msg.contains("prepare --out"),
            "{msg}"
        );
        assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".prepare"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
