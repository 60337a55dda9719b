//! Rule-based tokenizers: word level, whitespace (WikiText's convention) and character level.
//! The Hugging Face tokenizers are in [`crate::hf`].
use regex::Regex;

/// Splits text into tokens.
///
/// Implementations must be deterministic: the same text always gives the same tokens.
pub trait Tokenizer: Send + Sync {
    /// Calls `f` with each token of `text` in order, without allocating one `String` per token
    /// (a whole corpus is tokenized this way, see [`crate::TokenStream`]).
    fn for_each_token(&self, text: &str, f: &mut dyn FnMut(&str));

    /// Appends the tokens of `text` to `out`.
    fn tokenize_into(&self, text: &str, out: &mut Vec<String>) {
        self.for_each_token(text, &mut |t| out.push(t.to_string()));
    }

    /// The tokens of `text`.
    fn tokenize(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.tokenize_into(text, &mut out);
        out
    }

    /// Joins tokens back into text (for generation and per-token reports).
    fn detokenize(&self, tokens: &[&str]) -> String;
}

/// Word-level tokenizer: words with their contractions (`\w+('\w+)?`) and single punctuation
/// marks, with an end-of-sentence token appended at the end of every line.
///
/// This is the tokenization of PyTorch's `word_language_model` data with the token pattern of the
/// reference script (`\w+(?:'\w+)?|[^\w\s]`), so perplexities are comparable token for token.
#[derive(Debug, Clone)]
pub struct WordTokenizer {
    pattern: Regex,
    eos: String,
}

impl WordTokenizer {
    /// The end-of-line token appended to every line.
    pub const EOS: &'static str = "<eos>";

    /// A tokenizer that appends `<eos>` at each line end.
    pub fn new() -> Self {
        Self {
            // The pattern is a literal: it always compiles.
            pattern: Regex::new(r"\w+(?:'\w+)?|[^\w\s]").expect("valid token pattern"),
            eos: Self::EOS.to_string(),
        }
    }
}

impl Default for WordTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Tokenizer for WordTokenizer {
    fn for_each_token(&self, text: &str, f: &mut dyn FnMut(&str)) {
        // `split('\n')` (not `lines()`): a trailing newline yields a last empty line with its own
        // <eos>, exactly as Python's `text.split('\n')` in the reference does.
        for line in text.split('\n') {
            for m in self.pattern.find_iter(line) {
                f(m.as_str());
            }
            f(&self.eos);
        }
    }

    fn detokenize(&self, tokens: &[&str]) -> String {
        let mut s = String::new();
        for t in tokens {
            if *t == self.eos {
                s.push('\n');
                continue;
            }
            let is_punct = t.chars().all(|c| !c.is_alphanumeric() && c != '_');
            if !s.is_empty() && !s.ends_with('\n') && !is_punct {
                s.push(' ');
            }
            s.push_str(t);
        }
        s
    }
}

/// Whitespace tokenizer, the WikiText convention (PyTorch's `word_language_model` `data.py`:
/// `line.split() + ['<eos>']` for every line): tokens are the maximal runs of non-whitespace,
/// and `<eos>` ends every line, empty lines included. Lines are Python's: a text ending with a
/// newline has no empty last line (`"a\nb\n"` gives `a <eos> b <eos>`; the word tokenizer,
/// following the reference script's `text.split('\n')`, gives a third `<eos>` there). Tokens in
/// the text such as WikiText's `<unk>` and `@-@` stay one token each, and `<unk>` is the
/// vocabulary's unknown token (id 0), as in the published WikiText results.
#[derive(Debug, Clone, Default)]
pub struct WhitespaceTokenizer;

impl Tokenizer for WhitespaceTokenizer {
    fn for_each_token(&self, text: &str, f: &mut dyn FnMut(&str)) {
        // `lines()` is Python's iteration over a file's lines (a `\r\n` ends a line too).
        for line in text.lines() {
            line.split_whitespace().for_each(&mut *f);
            f(WordTokenizer::EOS);
        }
    }

    fn detokenize(&self, tokens: &[&str]) -> String {
        let mut s = String::new();
        for t in tokens {
            if *t == WordTokenizer::EOS {
                s.push('\n');
                continue;
            }
            if !s.is_empty() && !s.ends_with('\n') {
                s.push(' ');
            }
            s.push_str(t);
        }
        s
    }
}

/// Character-level tokenizer: every Unicode scalar value is a token, newlines included.
#[derive(Debug, Clone, Default)]
pub struct CharTokenizer;

impl Tokenizer for CharTokenizer {
    fn for_each_token(&self, text: &str, f: &mut dyn FnMut(&str)) {
        let mut buf = [0u8; 4];
        for c in text.chars() {
            f(c.encode_utf8(&mut buf));
        }
    }

    fn detokenize(&self, tokens: &[&str]) -> String {
        tokens.concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_tokenizer_keeps_contractions_and_splits_punctuation() {
        let t = WordTokenizer::new();
        let toks = t.tokenize("I'll go, sir!\nNay.");
        assert_eq!(
            toks,
            ["I'll", "go", ",", "sir", "!", "<eos>", "Nay", ".", "<eos>"]
        );
    }

    #[test]
    fn whitespace_tokenizer_keeps_wikitext_tokens_whole_and_ends_every_line() {
        let text = " = Homarus = \n \n It is a <unk> lobster , 0 @.@ 7 @-@ 2 kg .\n\nend";
        let toks = WhitespaceTokenizer.tokenize(text);
        assert_eq!(
            toks,
            [
                "=", "Homarus", "=", "<eos>", "<eos>", "It", "is", "a", "<unk>", "lobster", ",",
                "0", "@.@", "7", "@-@", "2", "kg", ".", "<eos>", "<eos>", "end", "<eos>"
            ]
        );
        // A final newline ends the last line; it does not start another.
        assert_eq!(WhitespaceTokenizer.tokenize("a b\n"), ["a", "b", "<eos>"]);
        assert_eq!(
            WhitespaceTokenizer.tokenize("a\tb \r\n"),
            ["a", "b", "<eos>"]
        );
        assert_eq!(
            WhitespaceTokenizer.detokenize(&["a", "<unk>", "<eos>", "b", "<eos>"]),
            "a <unk>\nb\n"
        );
    }

    #[test]
    fn char_tokenizer_keeps_newlines() {
        assert_eq!(CharTokenizer.tokenize("ab\nc"), ["a", "b", "\n", "c"]);
    }

    #[test]
    fn word_detokenize_attaches_punctuation() {
        let t = WordTokenizer::new();
        assert_eq!(
            t.detokenize(&["Hello", ",", "world", "!", "<eos>"]),
            "Hello, world!\n"
        );
    }
}
