//! Hugging Face tokenizers: a byte-level BPE trained on the training split, or any
//! `tokenizer.json` file, through the [`tokenizers`] crate.
//!
//! The ids are the tokenizer's own, so a model trained here reads the same ids as Python's
//! `tokenizers.Tokenizer.from_file("tokenizer.json").encode(text, add_special_tokens=False).ids`.
//! The run's [`Vocabulary`](crate::Vocabulary) is the tokenizer's vocabulary in id order
//! ([`crate::Vocabulary::from_hf`]).
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

use crate::{DataError, Tokenizer};

/// Bytes of text encoded per call of the underlying tokenizer: a call holds a `String` per
/// token of its chunk (HF's `Encoding`), so a corpus is encoded a chunk at a time.
pub(crate) const CHUNK_BYTES: usize = 1 << 16;

/// A Hugging Face tokenizer and the JSON it was built from (what `tokenizer.json` holds).
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    json: String,
    /// Whether text may be encoded in [`chunks`] with the ids of the whole: no normaliser and
    /// the byte-level pre-tokenizer without prefix space (perplex's BPE, GPT-2's). Other
    /// tokenizers (a Metaspace pre-tokenizer prepends `▁` to every call) get the whole text.
    chunked: bool,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish_non_exhaustive()
    }
}

impl PartialEq for HfTokenizer {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

impl HfTokenizer {
    /// The file name of a run's tokenizer, beside `vocab.json`.
    pub const FILE: &'static str = "tokenizer.json";

    /// The document separator of a trained byte-level BPE, a special token (GPT-2's): the
    /// literal text `<|endoftext|>` always encodes as its one id, in training data and prompts
    /// alike, and decodes back to the literal.
    pub const END_OF_TEXT: &'static str = "<|endoftext|>";

    /// The smallest byte-level BPE: [`HfTokenizer::END_OF_TEXT`] and the 256 byte tokens, no
    /// merge.
    pub const MIN_BPE_VOCAB: usize = 257;

    /// Trains a byte-level BPE (GPT-2's: the byte-level pre-tokenizer and its regex, no prefix
    /// space, no normaliser, the ByteLevel decoder) of at most `vocab_size` tokens on `text`:
    /// the special token [`HfTokenizer::END_OF_TEXT`] (id 0), the 256 byte tokens, then the
    /// merges. Every byte has a token, so any text encodes without an unknown token and
    /// `decode(encode(x)) == x`. Deterministic: the same text and size give the same JSON,
    /// byte for byte. Fewer than `vocab_size` tokens when the text offers no more pairs to
    /// merge.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] naming `max_vocab_size` when `vocab_size` is below
    /// [`HfTokenizer::MIN_BPE_VOCAB`].
    pub fn train_byte_level_bpe(text: &str, vocab_size: usize) -> Result<Self, DataError> {
        Self::train_byte_level_bpe_on(chunks(text, CHUNK_BYTES), vocab_size)
    }

    /// As [`HfTokenizer::train_byte_level_bpe`], on a text given as the pieces `pieces` (read
    /// from a file a piece at a time: the trainer keeps one count per distinct pre-token, never
    /// the text). The result equals training on the pieces' concatenation when each piece ends
    /// where the byte-level pre-tokenizer cuts anyway: at a line break between two characters
    /// that are not whitespace (as [`chunks`] and `perplex data prepare` cut), or at the end.
    ///
    /// # Errors
    /// As [`HfTokenizer::train_byte_level_bpe`].
    pub fn train_byte_level_bpe_on<I, S>(pieces: I, vocab_size: usize) -> Result<Self, DataError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        Self::check_bpe_vocab_size(vocab_size)?;
        let err = |e: tokenizers::Error| DataError::Tokenizer {
            path: PathBuf::from("(training)"),
            message: e.to_string(),
        };
        let byte_level = ByteLevel::new(false, true, true);
        let mut tokenizer = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None::<tokenizers::NormalizerWrapper>)
            .with_pre_tokenizer(Some(byte_level))
            .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
            .with_decoder(Some(byte_level))
            .build()
            .map_err(err)?;
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(0)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(Self::END_OF_TEXT, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        tokenizer.train(&mut trainer, pieces).map_err(err)?;
        let json = tokenizer.to_string(false).map_err(err)?;
        Self::from_json(json, Path::new("(trained tokenizer)"))
    }

    /// Checks `max_vocab_size` for a byte-level BPE: at least [`HfTokenizer::MIN_BPE_VOCAB`].
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] naming `max_vocab_size`.
    pub fn check_bpe_vocab_size(vocab_size: usize) -> Result<(), DataError> {
        if vocab_size >= Self::MIN_BPE_VOCAB {
            return Ok(());
        }
        Err(DataError::InvalidConfig {
            key: "max_vocab_size",
            value: vocab_size.to_string(),
            expected: format!(
                "at least {} for tokenizer = \"bpe\" (the BPE vocabulary size, its 256 byte \
                 tokens and {} included)",
                Self::MIN_BPE_VOCAB,
                Self::END_OF_TEXT
            ),
        })
    }

    /// Loads a Hugging Face `tokenizer.json` (any model: BPE, WordPiece, Unigram, WordLevel).
    ///
    /// # Errors
    /// [`DataError::NotFound`], [`DataError::Io`], [`DataError::InvalidUtf8`], and
    /// [`DataError::Tokenizer`] naming the file when it is not a tokenizer or its ids have gaps.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let json = crate::corpus::read_text(path)?;
        Self::from_json(json, path)
    }

    /// A tokenizer from the JSON of a `tokenizer.json`; `origin` names it in errors.
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] when the JSON is not a tokenizer or its ids are not `0..n`.
    pub fn from_json(json: String, origin: &Path) -> Result<Self, DataError> {
        let inner = tokenizers::Tokenizer::from_str(&json).map_err(|e| DataError::Tokenizer {
            path: origin.to_path_buf(),
            message: format!("not a Hugging Face tokenizer file: {e}"),
        })?;
        let chunked = chunk_safe(&json);
        let tokenizer = Self {
            inner,
            json,
            chunked,
        };
        tokenizer.tokens_by_id(origin)?;
        Ok(tokenizer)
    }

    /// The JSON of `tokenizer.json`.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Writes `tokenizer.json` to `path`, atomically (temporary file, then rename).
    ///
    /// # Errors
    /// [`DataError::Io`] naming the path.
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        crate::fetch::write_atomically(path, self.json.as_bytes())
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Every token by id (`0..vocab_size`).
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] naming `origin` when an id in `0..n` has no token.
    pub fn tokens_by_id(&self, origin: &Path) -> Result<Vec<String>, DataError> {
        (0..self.vocab_size() as u32)
            .map(|id| {
                self.inner
                    .id_to_token(id)
                    .ok_or_else(|| DataError::Tokenizer {
                        path: origin.to_path_buf(),
                        message: format!(
                            "id {id} has no token: perplex needs the ids 0..{} without gaps",
                            self.vocab_size()
                        ),
                    })
            })
            .collect()
    }

    /// The id of the model's unknown token (`model.unk_token` of BPE, WordPiece and WordLevel,
    /// `model.unk_id` of Unigram), if it has one. A byte-level BPE has none: it never meets an
    /// unknown byte.
    pub fn unk_id(&self) -> Option<u32> {
        let value: serde_json::Value = serde_json::from_str(&self.json).ok()?;
        let model = value.get("model")?;
        if let Some(id) = model.get("unk_id").and_then(serde_json::Value::as_u64) {
            return u32::try_from(id).ok();
        }
        let token = model.get("unk_token")?.as_str()?;
        self.inner.token_to_id(token)
    }

    /// The ids of `text` (no special tokens added), as encoding it whole gives them. A
    /// byte-level BPE encodes it a chunk of lines at a time (see [`chunks`]), so that a corpus
    /// never holds one `String` per token; other tokenizers encode it whole.
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] when the tokenizer fails (only a model without an unknown token
    /// meeting text it cannot cover).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        self.encode_in_chunks(text, CHUNK_BYTES)
    }

    pub(crate) fn encode_in_chunks(
        &self,
        text: &str,
        chunk_bytes: usize,
    ) -> Result<Vec<u32>, DataError> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        for chunk in self.pieces(text, chunk_bytes) {
            let encoding =
                self.inner
                    .encode_fast(chunk, false)
                    .map_err(|e| DataError::Tokenizer {
                        path: PathBuf::from("(encoding)"),
                        message: e.to_string(),
                    })?;
            ids.extend_from_slice(encoding.get_ids());
        }
        Ok(ids)
    }

    /// The size of the pieces text may be encoded in with the ids of the whole
    /// ([`CHUNK_BYTES`], cut as [`chunks`] cuts), or `None` when this tokenizer needs each text
    /// whole (see [`HfTokenizer::encode`]).
    pub(crate) fn piece_bytes(&self) -> Option<usize> {
        self.chunked.then_some(CHUNK_BYTES)
    }

    /// The ids of each of `pieces` (no special tokens added), encoded in parallel (the
    /// tokenizer's `encode_batch_fast`, on its thread pool): each piece as [`HfTokenizer::encode`]
    /// encodes it whole, so pieces cut as [`HfTokenizer::piece_bytes`] allows give the ids of
    /// their concatenation.
    ///
    /// # Errors
    /// As [`HfTokenizer::encode`].
    pub(crate) fn encode_batch(&self, pieces: &[String]) -> Result<Vec<Vec<u32>>, DataError> {
        let inputs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let encodings =
            self.inner
                .encode_batch_fast(inputs, false)
                .map_err(|e| DataError::Tokenizer {
                    path: PathBuf::from("(encoding)"),
                    message: e.to_string(),
                })?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// `text` in the pieces it is encoded in: chunks of about `chunk_bytes`, or the whole.
    fn pieces<'t>(&self, text: &'t str, chunk_bytes: usize) -> impl Iterator<Item = &'t str> {
        chunks(
            text,
            if self.chunked {
                chunk_bytes
            } else {
                usize::MAX
            },
        )
    }

    /// The text of `ids` (special tokens kept), through the tokenizer's decoder: byte-level
    /// decoding for a byte-level BPE, so `decode(encode(x)) == x`.
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] when the decoder fails.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| DataError::Tokenizer {
                path: PathBuf::from("(decoding)"),
                message: e.to_string(),
            })
    }
}

impl Tokenizer for HfTokenizer {
    /// The tokens of `text` as the tokenizer spells them (`Ġthe` for ` the` in a byte-level
    /// BPE), whose ids in the vocabulary are the tokenizer's. A chunk the tokenizer cannot encode
    /// (see [`HfTokenizer::encode`]; never with a byte-level BPE) is logged and skipped.
    fn for_each_token(&self, text: &str, f: &mut dyn FnMut(&str)) {
        for chunk in self.pieces(text, CHUNK_BYTES) {
            match self.inner.encode_fast(chunk, false) {
                // `encode_fast` leaves the tokens' strings out: spell each id.
                Ok(encoding) => encoding
                    .get_ids()
                    .iter()
                    .filter_map(|&id| self.inner.id_to_token(id))
                    .for_each(|t| f(&t)),
                Err(e) => tracing::error!("the tokenizer cannot encode {chunk:?}: {e}"),
            }
        }
    }

    fn detokenize(&self, tokens: &[&str]) -> String {
        let ids: Vec<u32> = tokens
            .iter()
            .filter_map(|t| self.inner.token_to_id(t))
            .collect();
        self.decode(&ids).unwrap_or_else(|e| {
            tracing::error!("{e}");
            tokens.concat()
        })
    }
}

/// Whether the tokenizer of `json` may encode text in [`chunks`]: no normaliser, the
/// byte-level pre-tokenizer with its regex and without prefix space, and no added token that a
/// cut could change (one that spans a line break, or strips the whitespace on its left, which
/// may be a cut line break).
fn chunk_safe(json: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return false;
    };
    let pre = &value["pre_tokenizer"];
    let added_safe = |t: &serde_json::Value| {
        t["lstrip"] != true && t["content"].as_str().is_some_and(|c| !c.contains('\n'))
    };
    value["normalizer"].is_null()
        && pre["type"] == "ByteLevel"
        && pre["add_prefix_space"] == false
        && pre["use_regex"] != false
        && value["added_tokens"]
            .as_array()
            .is_none_or(|tokens| tokens.iter().all(added_safe))
}

/// `text` cut into pieces of about `target` bytes, each ending at a newline that stands
/// between two characters that are not whitespace (`x\nY`, see [`safe_cut`]), or at the end of
/// the text. The byte-level pre-tokenizer's pieces never span such a newline, nor does its regex
/// look past it (`\s+(?!\S)` would join `" \n"` at the end of a piece but not before `Y`), so
/// encoding the pieces one by one gives the ids of the whole text.
pub(crate) fn chunks(text: &str, target: usize) -> impl Iterator<Item = &str> + Send {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = rest.len();
        let mut at = target.clamp(1, rest.len());
        while let Some(k) = rest.as_bytes()[at..].iter().position(|&b| b == b'\n') {
            let newline = at + k;
            if safe_cut(rest, newline) {
                cut = newline + 1;
                break;
            }
            at = newline + 1;
        }
        let (chunk, tail) = rest.split_at(cut);
        rest = tail;
        Some(chunk)
    })
}

/// Whether `text` may be cut after its line break at byte `newline` without changing the
/// byte-level pre-tokenizer's pieces: the characters on both sides are not whitespace.
pub(crate) fn safe_cut(text: &str, newline: usize) -> bool {
    let solid = |c: Option<char>| c.is_some_and(|c| !c.is_whitespace());
    solid(text[..newline].chars().next_back()) && solid(text[newline + 1..].chars().next())
}

/// The end (the byte after the line break) of the last place where `text` may be cut (see
/// [`safe_cut`]), if it has one.
pub(crate) fn last_safe_cut(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut end = bytes.len();
    while let Some(newline) = bytes[..end].iter().rposition(|&b| b == b'\n') {
        if safe_cut(text, newline) {
            return Some(newline + 1);
        }
        end = newline;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "Café déjà vu — naïve façade.\n\n  Tabs\there,\t\tand   runs   of spaces.\n\
                        東京の天気は晴れです。\n🦀 Rust 🦀🦀 emoji 👩‍👩‍👧\n\n\n   \nend  \nx \nY\t\nZ\n  \n";

    #[test]
    fn chunks_cut_only_before_non_whitespace_and_cover_the_text() {
        let text = "ab\n\n cd\nef\n  \ngh \nij\nk";
        let pieces: Vec<&str> = chunks(text, 1).collect();
        assert_eq!(pieces.concat(), text);
        assert_eq!(pieces, ["ab\n\n cd\n", "ef\n  \ngh \nij\n", "k"]);
        assert_eq!(chunks("", 4).count(), 0);
    }

    #[test]
    fn byte_level_bpe_round_trips_unicode_tabs_and_runs_of_whitespace() {
        let corpus = TEXT.repeat(20);
        let t = HfTokenizer::train_byte_level_bpe(&corpus, 300).unwrap();
        assert_eq!(t.vocab_size(), 300);
        assert_eq!(t.unk_id(), None);
        // Text never seen in training, bytes included.
        for text in [
            TEXT,
            "Ünïcödé ½ ∑ 𝔘 \u{0}\u{7f} ẞ\r\n\t \t",
            "",
            "\n",
            "   ",
        ] {
            let ids = t.encode(text).unwrap();
            assert_eq!(t.decode(&ids).unwrap(), text);
            let tokens = t.tokenize(text);
            let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
            assert_eq!(t.detokenize(&refs), text);
        }
    }

    #[test]
    fn chunked_encoding_equals_encoding_at_once() {
        let corpus = TEXT.repeat(50);
        let t = HfTokenizer::train_byte_level_bpe(&corpus, 400).unwrap();
        assert!(t.chunked);
        let whole = t.inner.encode_fast(corpus.as_str(), false).unwrap();
        for size in [1, 7, 100, 1 << 20] {
            assert_eq!(t.encode_in_chunks(&corpus, size).unwrap(), whole.get_ids());
        }
    }

    #[test]
    fn training_is_deterministic() {
        let corpus = TEXT.repeat(30);
        let a = HfTokenizer::train_byte_level_bpe(&corpus, 350).unwrap();
        let b = HfTokenizer::train_byte_level_bpe(&corpus, 350).unwrap();
        assert_eq!(a.json(), b.json());
    }

    #[test]
    fn a_vocabulary_below_257_names_the_key() {
        let e = HfTokenizer::train_byte_level_bpe(TEXT, 255)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_vocab_size = 255") && e.contains("at least 257"),
            "{e}"
        );
    }
}
