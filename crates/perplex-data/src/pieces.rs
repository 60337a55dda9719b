//! A text file streamed in pieces for a Hugging Face tokenizer (`perplex data prepare` with
//! `tokenizer = "bpe"`): cut into splits at given character offsets (nanoGPT's cut of one file
//! into train/valid/test, as [`crate::LmData`] cuts it in memory), and each split into pieces
//! that end where the byte-level pre-tokenizer cuts anyway ([`crate::hf::chunks`]), so that
//! training on or encoding the pieces one by one gives what the whole split gives. Memory holds
//! one read block and the pieces cut from it, never the file.
use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::hf::{chunks, last_safe_cut};
use crate::DataError;

/// Bytes read from the file at a time.
pub(crate) const READ_BYTES: usize = 4 << 20;

/// The pieces of a text file, in order, each with the index of its split: `(split, text)`.
///
/// Split `k` holds the characters `cuts[k - 1]..cuts[k]` (`0..cuts[0]` for the first, the rest
/// of the file for the last). With `piece_bytes = Some(n)`, a split comes in pieces of about
/// `n` bytes cut at a line break between two characters that are not whitespace (a split
/// without such a line break is held whole); with `None`, each split comes whole (for a
/// tokenizer that must see the whole text). An empty split gives no piece.
pub(crate) struct TextPieces {
    path: PathBuf,
    /// `None` once the file has been read to its end (or failed).
    file: Option<File>,
    read: Vec<u8>,
    /// Bytes read but not yet decoded: the start of a character cut by the read.
    undecoded: Vec<u8>,
    /// File offset of `undecoded[0]`, for error messages.
    decoded_bytes: usize,
    /// Text of the current split not yet cut into pieces.
    text: String,
    /// Characters decoded so far (up to the end of `text`).
    chars: usize,
    split: usize,
    cuts: Vec<usize>,
    piece_bytes: Option<usize>,
    ready: VecDeque<(usize, String)>,
}

impl TextPieces {
    /// The pieces of `path` (see the type's documentation), read `read_bytes` at a time.
    ///
    /// # Errors
    /// [`DataError::NotFound`], [`DataError::Io`] naming the file.
    pub(crate) fn open(
        path: &Path,
        cuts: Vec<usize>,
        piece_bytes: Option<usize>,
        read_bytes: usize,
    ) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => DataError::NotFound {
                path: path.to_path_buf(),
            },
            _ => DataError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(file),
            read: vec![0; read_bytes.max(1)],
            undecoded: Vec::new(),
            decoded_bytes: 0,
            text: String::new(),
            chars: 0,
            split: 0,
            cuts,
            piece_bytes,
            ready: VecDeque::new(),
        })
    }

    /// Reads the next block and cuts what it completes into pieces.
    fn fill(&mut self) -> Result<(), DataError> {
        let file = self
            .file
            .as_mut()
            .expect("called before the end of the file");
        let n = file.read(&mut self.read).map_err(|source| DataError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.undecoded.extend_from_slice(&self.read[..n]);
        let valid = match std::str::from_utf8(&self.undecoded) {
            Ok(text) => text.len(),
            // A character cut by the read: decoded with the next block.
            Err(e) if n > 0 && e.error_len().is_none() => e.valid_up_to(),
            Err(e) => {
                return Err(DataError::InvalidUtf8 {
                    path: self.path.clone(),
                    offset: self.decoded_bytes + e.valid_up_to(),
                })
            }
        };
        let undecoded = std::mem::take(&mut self.undecoded);
        let new = std::str::from_utf8(&undecoded[..valid]).expect("checked above");
        self.append(new);
        self.decoded_bytes += valid;
        self.undecoded = undecoded[valid..].to_vec();
        if n == 0 {
            self.file = None;
            self.emit(self.text.len());
        } else if let Some(target) = self.piece_bytes {
            if self.text.len() >= target {
                if let Some(cut) = last_safe_cut(&self.text) {
                    self.emit(cut);
                }
            }
        }
        Ok(())
    }

    /// Appends decoded text, closing each split whose end it reaches.
    fn append(&mut self, mut new: &str) {
        while let Some(&cut) = self.cuts.get(self.split) {
            let left = cut.saturating_sub(self.chars);
            let Some((end, _)) = new.char_indices().nth(left) else {
                break;
            };
            self.text.push_str(&new[..end]);
            self.chars += left;
            self.emit(self.text.len());
            self.split += 1;
            new = &new[end..];
        }
        self.chars += new.chars().count();
        self.text.push_str(new);
    }

    /// Queues `text[..end]` (which ends at a safe cut or at the end of its split) as pieces.
    fn emit(&mut self, end: usize) {
        let done = &self.text[..end];
        match self.piece_bytes {
            Some(target) => self
                .ready
                .extend(chunks(done, target).map(|piece| (self.split, piece.to_string()))),
            None if !done.is_empty() => self.ready.push_back((self.split, done.to_string())),
            None => {}
        }
        self.text.drain(..end);
    }
}

impl Iterator for TextPieces {
    type Item = Result<(usize, String), DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(piece) = self.ready.pop_front() {
                return Some(Ok(piece));
            }
            self.file.as_ref()?;
            if let Err(e) = self.fill() {
                self.file = None;
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "Café déjà vu — naïve façade.\r\n\r\n  Tabs\there,\t\tand   runs.\n\
                        東京の天気は晴れです。\n🦀 Rust 🦀🦀 emoji 👩‍👩‍👧\n\n\n   \nend  \nx \nY\t\nZ\n";

    fn split_at_chars(text: &str, cuts: &[usize]) -> Vec<String> {
        let byte = |k: usize| text.char_indices().nth(k).map_or(text.len(), |(b, _)| b);
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().map(|&c| byte(c)));
        bounds.push(text.len());
        bounds
            .windows(2)
            .map(|w| text[w[0]..w[1]].to_string())
            .collect()
    }

    /// Whatever the read size (cutting characters in the middle), the pieces of each split
    /// concatenate to that split's text, and every piece ends at a safe cut or at its split's end.
    #[test]
    fn pieces_cover_each_split_and_end_at_safe_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        let text = TEXT.repeat(40);
        std::fs::write(&path, &text).unwrap();
        let n = text.chars().count();
        for cuts in [vec![], vec![n * 9 / 10], vec![n / 3, n / 3 + 7], vec![0, n]] {
            let want = split_at_chars(&text, &cuts);
            for (read, piece) in [(1, Some(1)), (7, Some(50)), (300, Some(64)), (4096, None)] {
                let mut got = vec![String::new(); cuts.len() + 1];
                for item in TextPieces::open(&path, cuts.clone(), piece, read).unwrap() {
                    let (split, p) = item.unwrap();
                    assert!(!p.is_empty());
                    let full = &want[split];
                    got[split].push_str(&p);
                    let end = got[split].len();
                    assert!(
                        end == full.len()
                            || (full.as_bytes()[end - 1] == b'\n'
                                && crate::hf::safe_cut(full, end - 1)),
                        "piece ends at {end} of split {split}: {p:?}"
                    );
                }
                assert_eq!(got, want, "cuts {cuts:?}, read {read}, piece {piece:?}");
            }
        }
    }

    #[test]
    fn invalid_utf8_names_the_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.txt");
        let mut bytes = "ab\ncd\n".repeat(10).into_bytes();
        bytes.extend_from_slice(&[b'x', 0xff, b'y']);
        std::fs::write(&path, &bytes).unwrap();
        let err = TextPieces::open(&path, vec![], Some(4), 5)
            .unwrap()
            .find_map(Result::err)
            .unwrap();
        let msg = err.to_string();
        assert!(msg.contains("bad.txt") && msg.contains("61"), "{msg}");
    }
}
