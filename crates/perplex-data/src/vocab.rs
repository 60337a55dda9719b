//! Vocabulary: the map between tokens and integer ids.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::hf::HfTokenizer;
use crate::DataError;

/// A token <-> id map: the ids a model reads and predicts.
///
/// Two kinds, told apart by [`Vocabulary::hf_tokenizer`]:
/// - **built from counts** (the `word`, `whitespace` and `char` tokenizers): id 0 is always
///   `<unk>`, the unknown token (a `<unk>` in the text, as WikiText writes it, maps to it too);
///   the other tokens follow by decreasing frequency in the text the vocabulary was built from,
///   ties broken by first occurrence (as Python's `Counter.most_common`, which the PyTorch
///   reference uses). `vocab.json` holds `{"tokens": [...]}`.
/// - **a Hugging Face tokenizer's** ([`Vocabulary::from_hf`]): the tokenizer's tokens in its id
///   order, so every id is the tokenizer's own and nothing is shifted to make room for an
///   `<unk>`. The unknown id is the tokenizer model's unknown token, if it has one (a byte-level
///   BPE has none: every byte has a token). `vocab.json` holds
///   `{"tokens": [...], "tokenizer": "tokenizer.json"}` and [`Vocabulary::save`] writes the
///   tokenizer to that file beside it; [`Vocabulary::load`] reads it back, never retraining.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    itos: Vec<String>,
    stoi: HashMap<String, i64>,
    /// The unknown token's id: 0 for a vocabulary built from counts.
    unk: Option<i64>,
    /// The Hugging Face tokenizer this vocabulary is the vocabulary of.
    hf: Option<Arc<HfTokenizer>>,
}

impl PartialEq for Vocabulary {
    fn eq(&self, other: &Self) -> bool {
        self.itos == other.itos && self.unk == other.unk && self.hf == other.hf
    }
}

impl Eq for Vocabulary {}

/// What `vocab.json` holds.
#[derive(Serialize, Deserialize)]
struct VocabularyFile {
    tokens: Vec<String>,
    /// The Hugging Face tokenizer file beside `vocab.json`, for a tokenizer's vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tokenizer: Option<String>,
}

impl Vocabulary {
    /// The unknown token, always id 0.
    pub const UNK: &'static str = "<unk>";

    /// `<unk>` followed by `ranked` (in that order; a repeated token or `<unk>` is skipped).
    pub fn from_ranked<'a>(ranked: impl IntoIterator<Item = &'a str>) -> Self {
        let mut itos = vec![Self::UNK.to_string()];
        let mut stoi = HashMap::from([(Self::UNK.to_string(), 0i64)]);
        for t in ranked {
            if !stoi.contains_key(t) {
                stoi.insert(t.to_string(), itos.len() as i64);
                itos.push(t.to_string());
            }
        }
        Self {
            itos,
            stoi,
            unk: Some(0),
            hf: None,
        }
    }

    /// The vocabulary of a Hugging Face tokenizer: its tokens in id order, its unknown token
    /// (if any) as the unknown id. The vocabulary keeps the tokenizer
    /// ([`Vocabulary::hf_tokenizer`]).
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] when the tokenizer's ids have gaps.
    pub fn from_hf(tokenizer: Arc<HfTokenizer>) -> Result<Self, DataError> {
        let itos = tokenizer.tokens_by_id(Path::new(HfTokenizer::FILE))?;
        let stoi = itos
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as i64))
            .collect();
        Ok(Self {
            itos,
            stoi,
            unk: tokenizer.unk_id().map(i64::from),
            hf: Some(tokenizer),
        })
    }

    /// The Hugging Face tokenizer whose vocabulary this is, if it is one.
    pub fn hf_tokenizer(&self) -> Option<&Arc<HfTokenizer>> {
        self.hf.as_ref()
    }

    /// The id of the unknown token: 0 (`<unk>`) for a vocabulary built from counts; the
    /// tokenizer's for a Hugging Face tokenizer's, `None` when it has none.
    pub fn unk_id(&self) -> Option<i64> {
        self.unk
    }

    /// Builds a vocabulary from `tokens`: `<unk>` plus the `max_size` most frequent tokens
    /// (`max_size = None` keeps all).
    pub fn build<S: AsRef<str>>(tokens: &[S], max_size: Option<usize>) -> Self {
        let mut stats: HashMap<&str, (usize, usize)> = HashMap::new();
        for (pos, t) in tokens.iter().enumerate() {
            stats.entry(t.as_ref()).or_insert((0, pos)).0 += 1;
        }
        Self::from_counts(
            stats.into_iter().map(|(t, (n, first))| (t, n, first)),
            max_size,
        )
    }

    /// The vocabulary of a split from its tokens' statistics `(token, count, first position)`:
    /// `<unk>`, then by decreasing count, ties by first position (deterministic), at most
    /// `max_size` (`None`: all). The one ranking rule of [`Vocabulary::build`],
    /// [`crate::TokenStream::vocabulary`] and `perplex data prepare`.
    pub fn from_counts<'a>(
        stats: impl IntoIterator<Item = (&'a str, usize, usize)>,
        max_size: Option<usize>,
    ) -> Self {
        let mut ranked: Vec<(&str, usize, usize)> = stats
            .into_iter()
            .filter(|&(t, n, _)| n > 0 && t != Self::UNK)
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
        if let Some(cap) = max_size {
            ranked.truncate(cap);
        }
        Self::from_ranked(ranked.into_iter().map(|(t, _, _)| t))
    }

    /// Number of tokens, `<unk>` included.
    pub fn len(&self) -> usize {
        self.itos.len()
    }

    /// Always false: a vocabulary holds at least one token.
    pub fn is_empty(&self) -> bool {
        self.itos.is_empty()
    }

    /// The id of `token`, or the unknown id ([`Vocabulary::unk_id`]; 0 for a tokenizer's
    /// vocabulary without an unknown token, whose tokenizer only gives tokens it has).
    pub fn id(&self, token: &str) -> i64 {
        self.stoi
            .get(token)
            .copied()
            .unwrap_or(self.unk.unwrap_or(0))
    }

    /// Whether `token` has an id of its own.
    pub fn contains(&self, token: &str) -> bool {
        self.stoi.contains_key(token)
    }

    /// The token of `id`, if `0 <= id < len`.
    pub fn token(&self, id: i64) -> Option<&str> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.itos.get(i))
            .map(String::as_str)
    }

    /// All tokens, by id.
    pub fn tokens(&self) -> &[String] {
        &self.itos
    }

    /// The ids of `tokens`.
    pub fn encode<S: AsRef<str>>(&self, tokens: &[S]) -> Vec<i64> {
        tokens.iter().map(|t| self.id(t.as_ref())).collect()
    }

    /// Writes the vocabulary as JSON (`{"tokens": [...]}`), atomically (temporary file, then
    /// rename). A tokenizer's vocabulary first writes the tokenizer to `tokenizer.json` in the
    /// same directory (atomically too) and names it in `vocab.json`.
    ///
    /// # Errors
    /// [`DataError::Io`] naming the file.
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let tokenizer = match &self.hf {
            Some(hf) => {
                hf.save(&path.with_file_name(HfTokenizer::FILE))?;
                Some(HfTokenizer::FILE.to_string())
            }
            None => None,
        };
        let file = VocabularyFile {
            tokens: self.itos.clone(),
            tokenizer,
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| DataError::InvalidVocabulary {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        crate::fetch::write_atomically(path, &json)
    }

    /// Reads a vocabulary written by [`Vocabulary::save`] (with its `tokenizer.json`, for a
    /// tokenizer's vocabulary).
    ///
    /// # Errors
    /// [`DataError::NotFound`], [`DataError::Io`]; [`DataError::InvalidVocabulary`] for a
    /// malformed file, a first token other than `<unk>`, repeated tokens, or tokens that are not
    /// those of its `tokenizer.json`; the errors of [`HfTokenizer::from_file`].
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let invalid = |message: String| DataError::InvalidVocabulary {
            path: path.to_path_buf(),
            message,
        };
        let bytes = crate::fetch::read_file(path)?;
        let file: VocabularyFile =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let Some(name) = file.tokenizer else {
            return Self::from_counted_tokens(file.tokens).map_err(invalid);
        };
        let tokenizer_path = path.with_file_name(&name);
        let vocab = Self::from_hf(Arc::new(HfTokenizer::from_file(&tokenizer_path)?))?;
        if vocab.itos != file.tokens {
            return Err(invalid(format!(
                "its {} tokens are not those of {} ({} tokens) in id order",
                file.tokens.len(),
                tokenizer_path.display(),
                vocab.len()
            )));
        }
        Ok(vocab)
    }

    /// A vocabulary built from counts, from its tokens by id.
    fn from_counted_tokens(tokens: Vec<String>) -> Result<Self, String> {
        if tokens.first().map(String::as_str) != Some(Self::UNK) {
            return Err(format!("the first token must be {}", Self::UNK));
        }
        let stoi: HashMap<String, i64> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as i64))
            .collect();
        if stoi.len() != tokens.len() {
            return Err("tokens are not unique".into());
        }
        Ok(Self {
            itos: tokens,
            stoi,
            unk: Some(0),
            hf: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_frequent_first_ties_by_first_occurrence() {
        let v = Vocabulary::build(&["b", "a", "c", "a", "b", "d"], None);
        assert_eq!(v.tokens(), ["<unk>", "b", "a", "c", "d"]);
    }

    #[test]
    fn cap_maps_rare_tokens_to_unk() {
        let v = Vocabulary::build(&["x", "x", "y", "z"], Some(1));
        assert_eq!(v.len(), 2);
        assert_eq!(v.encode(&["x", "y", "q"]), [1, 0, 0]);
    }

    #[test]
    fn save_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("perplex-vocab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vocab.json");
        let v = Vocabulary::build(&["a", "b", "b"], None);
        v.save(&path).unwrap();
        assert_eq!(Vocabulary::load(&path).unwrap(), v);
        // The file format of a vocabulary built from counts is unchanged.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\n  \"tokens\": [\n    \"<unk>\",\n    \"b\",\n    \"a\"\n  ]\n}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_tokenizers_vocabulary_keeps_its_ids_and_saves_its_tokenizer_beside_it() {
        let text = "the cat sat on the mat; the cat sat.\n".repeat(10);
        let hf = Arc::new(HfTokenizer::train_byte_level_bpe(&text, 270).unwrap());
        let v = Vocabulary::from_hf(hf.clone()).unwrap();
        // The text runs out of pairs to merge before 270.
        assert_eq!(v.len(), hf.vocab_size());
        assert!((257..=270).contains(&v.len()), "{}", v.len());
        assert_eq!(v.unk_id(), None);
        let ids = hf.encode("the cat").unwrap();
        let tokens = crate::Tokenizer::tokenize(hf.as_ref(), "the cat");
        let via_vocab: Vec<i64> = v.encode(&tokens);
        assert_eq!(
            via_vocab,
            ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vocab.json");
        v.save(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("tokenizer.json")).unwrap(),
            hf.json()
        );
        let loaded = Vocabulary::load(&path).unwrap();
        assert_eq!(loaded, v);
        assert_eq!(loaded.hf_tokenizer().unwrap().json(), hf.json());
        // A tokenizer.json that no longer matches vocab.json is refused.
        let other = HfTokenizer::train_byte_level_bpe(&text, 260).unwrap();
        other.save(&dir.path().join("tokenizer.json")).unwrap();
        let e = Vocabulary::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("are not those of") && e.contains("tokenizer.json"),
            "{e}"
        );
    }
}
