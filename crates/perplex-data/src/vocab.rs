//! Vocabulary: the map between tokens and integer ids.
use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::DataError;

/// A token <-> id map. Id 0 is always `<unk>`; the other tokens follow by decreasing frequency in
/// the text the vocabulary was built from, ties broken by first occurrence (as Python's
/// `Counter.most_common`, which the PyTorch reference uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "VocabularyFile", into = "VocabularyFile")]
pub struct Vocabulary {
    itos: Vec<String>,
    stoi: HashMap<String, i64>,
}

#[derive(Serialize, Deserialize)]
struct VocabularyFile {
    tokens: Vec<String>,
}

impl TryFrom<VocabularyFile> for Vocabulary {
    type Error = String;
    fn try_from(f: VocabularyFile) -> Result<Self, String> {
        if f.tokens.first().map(String::as_str) != Some(Self::UNK) {
            return Err(format!("the first token must be {}", Self::UNK));
        }
        let stoi: HashMap<String, i64> = f
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as i64))
            .collect();
        if stoi.len() != f.tokens.len() {
            return Err("tokens are not unique".into());
        }
        Ok(Self {
            itos: f.tokens,
            stoi,
        })
    }
}

impl From<Vocabulary> for VocabularyFile {
    fn from(v: Vocabulary) -> Self {
        Self { tokens: v.itos }
    }
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
        Self { itos, stoi }
    }

    /// Builds a vocabulary from `tokens`: `<unk>` plus the `max_size` most frequent tokens
    /// (`max_size = None` keeps all).
    pub fn build<S: AsRef<str>>(tokens: &[S], max_size: Option<usize>) -> Self {
        // (count, first position) per token; sorting by (-count, first) is deterministic.
        let mut stats: HashMap<&str, (usize, usize)> = HashMap::new();
        for (pos, t) in tokens.iter().enumerate() {
            stats.entry(t.as_ref()).or_insert((0, pos)).0 += 1;
        }
        stats.remove(Self::UNK);
        let mut ranked: Vec<(&str, (usize, usize))> = stats.into_iter().collect();
        ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.1 .1.cmp(&b.1 .1)));
        if let Some(cap) = max_size {
            ranked.truncate(cap);
        }
        let itos: Vec<String> = std::iter::once(Self::UNK.to_string())
            .chain(ranked.into_iter().map(|(t, _)| t.to_string()))
            .collect();
        let stoi = itos
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as i64))
            .collect();
        Self { itos, stoi }
    }

    /// Number of tokens, `<unk>` included.
    pub fn len(&self) -> usize {
        self.itos.len()
    }

    /// Always false: a vocabulary holds at least `<unk>`.
    pub fn is_empty(&self) -> bool {
        self.itos.is_empty()
    }

    /// The id of `token`, or the id of `<unk>` (0).
    pub fn id(&self, token: &str) -> i64 {
        self.stoi.get(token).copied().unwrap_or(0)
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

    /// Writes the vocabulary as JSON (`{"tokens": [...]}`), atomically (temp file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| DataError::InvalidVocabulary {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        crate::fetch::write_atomically(path, &json)
    }

    /// Reads a vocabulary written by [`Vocabulary::save`].
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => DataError::NotFound {
                path: path.to_path_buf(),
            },
            _ => DataError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        serde_json::from_slice(&bytes).map_err(|e| DataError::InvalidVocabulary {
            path: path.to_path_buf(),
            message: e.to_string(),
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
