//! A tokenized corpus held as integer ids, never as one `String` per token.
//!
//! Tokens are interned as they are read: the stream keeps a `u32` per token and one string per
//! distinct token, so a 100M-token corpus takes 400 MB of ids instead of gigabytes of strings.
//! The vocabulary is then ranked from the training range's counts and the ids remapped to it.
use std::collections::HashMap;

use crate::{Tokenizer, Vocabulary};

/// Token ids of one or more texts over a shared table of distinct tokens.
#[derive(Debug, Default, Clone)]
pub struct TokenStream {
    /// Provisional id (index into `strings`) of every token, in order.
    ids: Vec<u32>,
    strings: Vec<String>,
    lookup: HashMap<String, u32>,
}

impl TokenStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokenizes `text` and appends its tokens; returns the range of positions they occupy.
    pub fn push_text(&mut self, tokenizer: &dyn Tokenizer, text: &str) -> std::ops::Range<usize> {
        let start = self.ids.len();
        let (ids, strings, lookup) = (&mut self.ids, &mut self.strings, &mut self.lookup);
        tokenizer.for_each_token(text, &mut |t| {
            let id = match lookup.get(t) {
                Some(&id) => id,
                None => {
                    let id = strings.len() as u32;
                    strings.push(t.to_string());
                    lookup.insert(t.to_string(), id);
                    id
                }
            };
            ids.push(id);
        });
        start..self.ids.len()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the stream holds no token.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether every token in `range` is `token` (e.g. a file of only `<eos>`).
    pub fn all_are(&self, range: std::ops::Range<usize>, token: &str) -> bool {
        match self.lookup.get(token) {
            Some(&id) => self.ids[range].iter().all(|&i| i == id),
            None => range.is_empty(),
        }
    }

    /// The vocabulary of the tokens in `range` (the training split), exactly as
    /// [`Vocabulary::build`] makes it from those tokens: `<unk>`, then by decreasing count, ties
    /// by first occurrence, at most `max_size` (`None`: all).
    pub fn vocabulary(&self, range: std::ops::Range<usize>, max_size: Option<usize>) -> Vocabulary {
        let mut count = vec![0usize; self.strings.len()];
        let mut first = vec![usize::MAX; self.strings.len()];
        for (pos, &id) in self.ids[range].iter().enumerate() {
            let id = id as usize;
            if count[id] == 0 {
                first[id] = pos;
            }
            count[id] += 1;
        }
        Vocabulary::from_counts(
            (0..self.strings.len()).map(|i| (self.strings[i].as_str(), count[i], first[i])),
            max_size,
        )
    }

    /// The ids of the tokens in `range` in `vocab` (tokens it lacks become `<unk>`, 0).
    pub fn encode(&self, range: std::ops::Range<usize>, vocab: &Vocabulary) -> Vec<i64> {
        let table: Vec<i64> = self.strings.iter().map(|s| vocab.id(s)).collect();
        self.ids[range].iter().map(|&i| table[i as usize]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CharTokenizer, WordTokenizer};

    #[test]
    fn interned_vocabulary_and_ids_equal_those_built_from_strings() {
        let text = "the cat sat on the mat.\nThe <unk> cat, the end\n\nsat sat";
        for tokenizer in [
            Box::new(WordTokenizer::new()) as Box<dyn Tokenizer>,
            Box::new(CharTokenizer),
        ] {
            let strings = tokenizer.tokenize(text);
            let mut stream = TokenStream::new();
            let all = stream.push_text(tokenizer.as_ref(), text);
            assert_eq!(stream.len(), strings.len());
            for (cap, split) in [(None, strings.len()), (Some(3), 9), (None, 5)] {
                let want = Vocabulary::build(&strings[..split], cap);
                let got = stream.vocabulary(0..split, cap);
                assert_eq!(got, want);
                assert_eq!(stream.encode(all.clone(), &got), want.encode(&strings));
            }
        }
    }
}
