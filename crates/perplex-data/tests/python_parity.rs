//! Python's `tokenizers` package (the pip package, not this crate) loads the `tokenizer.json`
//! that perplex saves and gives the same ids on a sample text, and decodes them back to it.
//!
//! Needs a Python with `tokenizers` installed; the test fails (it never skips) without one.
//! The interpreter is `$PERPLEX_PYTHON`, else `py-tokenizers/bin/python` in the target
//! directory (`$CARGO_TARGET_DIR` or this workspace's `target/`) when it exists (where `.ci/run`
//! installs it), else `python3`.
use std::path::{Path, PathBuf};
use std::process::Command;

use perplex_data::{DataConfig, HfTokenizer, LmData, TokenizerKind};

/// The pinned version of the pip package (`.ci/run` installs this one).
const PIP_TOKENIZERS: &str = "tokenizers==0.23.3";

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PERPLEX_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let venv = target.join("py-tokenizers/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Python's ids for `text` (passed through a file, so bytes arrive exactly) and whether Python
/// decodes them back to `text`.
fn python_ids(tokenizer: &Path, text: &Path) -> (Vec<u32>, bool) {
    let script = r#"
import json, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8", newline="").read()
ids = tok.encode(text, add_special_tokens=False).ids
print(json.dumps({"ids": ids, "round_trip": tok.decode(ids, skip_special_tokens=False) == text}))
"#;
    let python = python();
    let install = format!(
        "install it with `python3 -m venv target/py-tokenizers && \
         target/py-tokenizers/bin/python -m pip install {PIP_TOKENIZERS}` (as .ci/run does), \
         or point PERPLEX_PYTHON at a Python that has it"
    );
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(tokenizer)
        .arg(text)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {install}", python.display()));
    assert!(
        out.status.success(),
        "{} failed (is the `tokenizers` package installed?): {}\n{install}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = reply["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect();
    (ids, reply["round_trip"].as_bool().unwrap())
}

#[test]
fn python_tokenizers_loads_the_saved_file_and_gives_the_same_ids() {
    let corpus = perplex_data::fetch_corpus(
        "tinyshakespeare",
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("data"),
    )
    .unwrap();
    let config = DataConfig {
        path: Some(corpus.clone()),
        tokenizer: TokenizerKind::Bpe,
        max_vocab_size: 1000,
        ..DataConfig::default()
    };
    let data = LmData::load(&config).unwrap();
    let run = tempfile::tempdir().unwrap();
    data.vocab.save(&run.path().join("vocab.json")).unwrap();
    let saved = run.path().join(HfTokenizer::FILE);
    let hf = HfTokenizer::from_file(&saved).unwrap();

    // Unicode, tabs, runs of spaces, blank lines, CRLF; then 200 kB of Shakespeare, so that
    // perplex encodes in several chunks and Python in one call.
    let unicode = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/unicode-sample.txt"),
    )
    .unwrap();
    let shakespeare = std::fs::read_to_string(&corpus).unwrap();
    let sample = format!("{unicode}{}", &shakespeare[..200_000]);
    let sample_path = run.path().join("sample.txt");
    std::fs::write(&sample_path, &sample).unwrap();

    let ours = hf.encode(&sample).unwrap();
    let (theirs, round_trip) = python_ids(&saved, &sample_path);
    assert_eq!(ours.len(), theirs.len());
    let first_difference = ours.iter().zip(&theirs).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "perplex and Python disagree");
    assert!(round_trip, "Python's decode(encode(x)) != x");
    // The ids the model sees for the validation split are these ids too.
    let valid: Vec<i64> = Vec::try_from(&data.valid).unwrap();
    let valid_text = hf.decode(&valid.iter().map(|&i| i as u32).collect::<Vec<_>>());
    let valid_path = run.path().join("valid.txt");
    std::fs::write(&valid_path, valid_text.unwrap()).unwrap();
    let (theirs, _) = python_ids(&saved, &valid_path);
    assert_eq!(
        valid,
        theirs.iter().map(|&i| i64::from(i)).collect::<Vec<_>>()
    );
}
