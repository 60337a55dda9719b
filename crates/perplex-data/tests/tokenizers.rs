//! The `whitespace` and `bpe` tokenizers and `tokenizer_file` on real text: Tiny Shakespeare
//! (fetched through the project's own code) and the head of WikiText-2's validation file
//! (`tests/data/wikitext-2-valid-head.txt`).
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use perplex_data::{
    DataConfig, HfTokenizer, LmData, Tokenizer, TokenizerKind, Vocabulary, WordTokenizer,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn tiny_shakespeare() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("data");
    perplex_data::fetch_corpus("tinyshakespeare", &dir).expect("fetch Tiny Shakespeare")
}

fn bpe_config(path: PathBuf, max_vocab_size: usize) -> DataConfig {
    DataConfig {
        path: Some(path),
        tokenizer: TokenizerKind::Bpe,
        max_vocab_size,
        ..DataConfig::default()
    }
}

fn ids(t: &tch::Tensor) -> Vec<i64> {
    Vec::try_from(t).unwrap()
}

fn as_u32(ids: &[i64]) -> Vec<u32> {
    ids.iter().map(|&i| u32::try_from(i).unwrap()).collect()
}

#[test]
fn bpe_trains_on_the_training_split_only_and_decodes_the_validation_text_exactly() {
    let path = tiny_shakespeare();
    let text = std::fs::read_to_string(&path).unwrap();
    let started = Instant::now();
    let data = LmData::load(&bpe_config(path, 2000)).unwrap();
    let load_seconds = started.elapsed().as_secs_f64();
    assert_eq!(data.vocab.len(), 2000);
    assert_eq!(data.vocab.unk_id(), None);
    assert_eq!(data.valid_unk_rate, 0.0);
    let hf = data
        .vocab
        .hf_tokenizer()
        .expect("a BPE vocabulary has its tokenizer");

    // nanoGPT's cut: the first int(0.9 n) characters train, the rest validate.
    let n = text.chars().count();
    let cut = text.char_indices().nth(n * 9 / 10).unwrap().0;
    let (train_text, valid_text) = text.split_at(cut);
    let started = Instant::now();
    let on_train = HfTokenizer::train_byte_level_bpe(train_text, 2000).unwrap();
    let train_seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        hf.json(),
        on_train.json(),
        "trained on the training split only"
    );
    assert_ne!(
        hf.json(),
        HfTokenizer::train_byte_level_bpe(&text, 2000)
            .unwrap()
            .json(),
        "the whole text gives another tokenizer"
    );
    assert_eq!(hf.decode(&as_u32(&ids(&data.train))).unwrap(), train_text);
    assert_eq!(hf.decode(&as_u32(&ids(&data.valid))).unwrap(), valid_text);

    let started = Instant::now();
    let encoded = hf.encode(&text).unwrap();
    let encode_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "Tiny Shakespeare ({} bytes), BPE vocab {}: training {train_seconds:.2} s on the training \
         split, encoding {} tokens at {:.0} tokens/s ({:.2} bytes/token), whole load \
         {load_seconds:.2} s",
        text.len(),
        hf.vocab_size(),
        encoded.len(),
        encoded.len() as f64 / encode_seconds,
        text.len() as f64 / encoded.len() as f64
    );
}

#[test]
fn bpe_training_is_deterministic() {
    let text = std::fs::read_to_string(tiny_shakespeare()).unwrap();
    let sample = &text[..200_000];
    let a = HfTokenizer::train_byte_level_bpe(sample, 1500).unwrap();
    let b = HfTokenizer::train_byte_level_bpe(sample, 1500).unwrap();
    assert_eq!(a.json().as_bytes(), b.json().as_bytes());
    // And through the saved file: the same bytes on disk.
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.json"), dir.path().join("b.json"));
    a.save(&pa).unwrap();
    b.save(&pb).unwrap();
    assert_eq!(std::fs::read(pa).unwrap(), std::fs::read(pb).unwrap());
}

#[test]
fn bpe_round_trips_unicode_tabs_runs_of_spaces_and_newlines() {
    let sample = std::fs::read_to_string(fixture("unicode-sample.txt")).unwrap();
    assert!(sample.contains("\r\n") && sample.contains("\t\t") && sample.contains("\n\n\n"));
    let shakespeare = std::fs::read_to_string(tiny_shakespeare()).unwrap();
    let hf = HfTokenizer::train_byte_level_bpe(&shakespeare[..300_000], 1000).unwrap();
    for text in [
        sample.as_str(),
        &sample.repeat(40),
        "",
        " ",
        "\n\n",
        "\t \t",
    ] {
        let encoded = hf.encode(text).unwrap();
        assert_eq!(hf.decode(&encoded).unwrap(), text);
        let tokens = hf.tokenize(text);
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        assert_eq!(hf.detokenize(&refs), text);
    }
}

#[test]
fn too_small_a_bpe_vocabulary_is_an_error_naming_the_key() {
    let e = LmData::load(&bpe_config(tiny_shakespeare(), 100))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("max_vocab_size = 100") && e.contains("at least 257"),
        "{e}"
    );
    let word_with_file = DataConfig {
        tokenizer_file: Some("tokenizer.json".into()),
        ..DataConfig::default()
    };
    let e = LmData::load(&word_with_file).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer_file") && e.contains("tokenizer = \"bpe\""),
        "{e}"
    );
}

#[test]
fn tokenizer_file_loads_a_saved_bpe_with_the_same_ids() {
    let path = tiny_shakespeare();
    let text = std::fs::read_to_string(&path).unwrap();
    let hf = HfTokenizer::train_byte_level_bpe(&text[..300_000], 700).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("my-tokenizer.json");
    hf.save(&file).unwrap();
    let config = DataConfig {
        tokenizer_file: Some(file),
        // Ignored with a file: the file's vocabulary is the vocabulary.
        max_vocab_size: 5,
        ..bpe_config(path, 0)
    };
    let data = LmData::load(&config).unwrap();
    assert_eq!(data.vocab, Vocabulary::from_hf(Arc::new(hf)).unwrap());
    let hf = data.vocab.hf_tokenizer().unwrap();
    let mut all = ids(&data.train);
    all.extend(ids(&data.valid));
    let whole: Vec<i64> = hf
        .encode(&text)
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    // The two splits, encoded apart, differ from the whole only around the cut.
    assert!(
        all.len().abs_diff(whole.len()) <= 2,
        "{} {}",
        all.len(),
        whole.len()
    );
    assert_eq!(all[..1000], whole[..1000]);
    assert_eq!(
        data.encode_text("ROMEO: hi").size(),
        [hf.encode("ROMEO: hi").unwrap().len() as i64]
    );
}

/// A Hugging Face WordLevel tokenizer, written by hand: its unknown token `[UNK]` has id 2,
/// which stays its id (nothing is shifted to make room for a `<unk>` at 0).
const WORD_LEVEL: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [],
  "normalizer": {"type": "Lowercase"},
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {
    "type": "WordLevel",
    "vocab": {"the": 0, "cat": 1, "[UNK]": 2, "sat": 3, ".": 4},
    "unk_token": "[UNK]"
  }
}"#;

#[test]
fn tokenizer_file_loads_any_hugging_face_tokenizer_and_keeps_its_unknown_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("word-level.json");
    std::fs::write(&file, WORD_LEVEL).unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "The cat sat. The dog sat.\n".repeat(40)).unwrap();
    let config = DataConfig {
        tokenizer_file: Some(file),
        batch_size: 2,
        seq_len: 4,
        ..bpe_config(corpus, 0)
    };
    let data = LmData::load(&config).unwrap();
    assert_eq!(data.vocab.tokens(), ["the", "cat", "[UNK]", "sat", "."]);
    assert_eq!(data.vocab.unk_id(), Some(2));
    assert_eq!(ids(&data.train)[..12], [0, 1, 3, 4, 0, 2, 3, 4, 0, 1, 3, 4]);
    assert!(data.valid_unk_rate > 0.1, "{}", data.valid_unk_rate);
    // A run directory's vocab.json names its tokenizer.json and loads back with it.
    let run = tempfile::tempdir().unwrap();
    data.vocab.save(&run.path().join("vocab.json")).unwrap();
    let json = std::fs::read_to_string(run.path().join("vocab.json")).unwrap();
    assert!(json.contains("\"tokenizer\": \"tokenizer.json\""), "{json}");
    assert_eq!(
        std::fs::read_to_string(run.path().join("tokenizer.json")).unwrap(),
        WORD_LEVEL
    );
    let loaded = Vocabulary::load(&run.path().join("vocab.json")).unwrap();
    assert_eq!(loaded, data.vocab);
    // Resuming reads the run's vocabulary and tokenizer: never a new one.
    let again = LmData::load_with_vocab(&config, Some(loaded)).unwrap();
    assert_eq!(ids(&again.train), ids(&data.train));
}

/// BB2-13 (WikiText `<unk>` split into `<`, `unk`, `>`) on real WikiText-2 text: `<unk>` and
/// `@-@` stay one token each, and `<unk>` is the unknown id.
#[test]
fn whitespace_tokenizer_keeps_wikitext_unk_and_at_markers_as_single_tokens() {
    let path = fixture("wikitext-2-valid-head.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = DataConfig {
        path: Some(path),
        tokenizer: TokenizerKind::Whitespace,
        max_vocab_size: 0,
        splits: vec![0.9, 0.1],
        batch_size: 2,
        seq_len: 8,
        ..DataConfig::default()
    };
    let data = LmData::load(&config).unwrap();
    let vocab = &data.vocab;
    assert_eq!(vocab.unk_id(), Some(0));
    assert_eq!(vocab.id("<unk>"), 0);
    for whole in ["@-@", "@.@", "<eos>", "gammarus"] {
        assert!(vocab.contains(whole), "{whole}");
    }
    for piece in ["unk", "<", ">", "@"] {
        assert!(!vocab.contains(piece), "{piece}");
    }
    // PyTorch's word_language_model data.py: `line.split() + ['<eos>']` for every line.
    let reference: Vec<&str> = text
        .lines()
        .flat_map(|l| l.split_whitespace().chain(["<eos>"]))
        .collect();
    let mut all = ids(&data.train);
    all.extend(ids(&data.valid));
    assert_eq!(all.len(), reference.len());
    assert_eq!(all, vocab.encode(&reference));
    // In the training split (whose words are all in the vocabulary), id 0 is exactly the text's
    // `<unk>`s; validation words unseen in training become `<unk>` too.
    let train = ids(&data.train);
    let unks = reference[..train.len()]
        .iter()
        .filter(|t| **t == "<unk>")
        .count();
    assert!(unks >= 10, "{unks}");
    assert_eq!(train.iter().filter(|&&i| i == 0).count(), unks);
    // The word tokenizer cuts the same text's `<unk>` into three tokens and `@-@` into three.
    let word = WordTokenizer::new().tokenize("a <unk> red @-@ tipped");
    assert_eq!(
        word,
        ["a", "<", "unk", ">", "red", "@", "-", "@", "tipped", "<eos>"]
    );
}

/// BB2-10 on the prepare path: `perplex data prepare` trains a 512-token byte-level BPE on a
/// corpus of Unicode, tabs, runs of whitespace, blank lines and CRLF (the Unicode sample) and
/// Tiny Shakespeare; its token files decode back to the corpus byte for byte, its
/// `tokenizer.json` round-trips every line of its own training text and the pitfall's strings,
/// no clean-up deletes the space before `!`, and no prefix space is added to `wait`.
#[test]
fn bb2_10_prepared_bpe_round_trips_the_corpus_and_unicode_whitespace_and_crlf() {
    let dir = tempfile::tempdir().unwrap();
    let sample = std::fs::read_to_string(fixture("unicode-sample.txt")).unwrap();
    let shakespeare = std::fs::read_to_string(tiny_shakespeare()).unwrap();
    let text = format!("{}{}", sample.repeat(20), &shakespeare[..200_000]);
    let path = dir.path().join("corpus.txt");
    std::fs::write(&path, &text).unwrap();
    let out = dir.path().join("tokens");
    let report = perplex_data::prepare(&bpe_config(path, 512), &out).unwrap();
    assert_eq!(report.vocab_size, 512);
    let hf = HfTokenizer::from_file(&out.join(HfTokenizer::FILE)).unwrap();
    let read_ids = |split: &str| -> Vec<u32> {
        let bin = out.join(format!("{split}.bin"));
        let m = perplex_data::MmapTokens::open(&bin).unwrap();
        let mut ids = vec![0i64; perplex_data::TokenIds::len(&m)];
        perplex_data::TokenIds::copy_window(&m, 0, &mut ids);
        as_u32(&ids)
    };
    let train = hf.decode(&read_ids("train")).unwrap();
    let valid = hf.decode(&read_ids("valid")).unwrap();
    assert!(
        format!("{train}{valid}") == text,
        "the token files do not decode to the corpus"
    );
    for line in train.split_inclusive('\n') {
        assert_eq!(hf.decode(&hf.encode(line).unwrap()).unwrap(), line);
    }
    for s in [
        "wait !",
        "prices rose 3 @.@ 5 % , analysts said .",
        "  two leading spaces",
        "tab\there\nnew line\n\n",
        "trailing space ",
        "naïve café",
        "日本語のテキスト",
        "emoji 🤗👍🏽",
        "I'll don't",
        "a\r\nb\r\n\r\n",
        "",
    ] {
        let ids = hf.encode(s).unwrap();
        let back = hf.decode(&ids).unwrap();
        assert!(
            back == s,
            "{s:?}: {:x?} != {:x?}",
            back.as_bytes(),
            s.as_bytes()
        );
    }
    let wait = hf.encode("wait !").unwrap();
    let first = hf.decode(&wait[..1]).unwrap();
    assert!(
        first.starts_with('w'),
        "a prefix space was added: {first:?}"
    );
}

/// BB2-13 with the pitfall's own input, in memory and through `perplex data prepare`: the first
/// line is `the <unk> was @-@ high <unk> . <eos>` (8 ids, `<unk>` the unknown id 0), and the
/// vocabulary is the distinct whitespace-separated tokens of the train file plus `<eos>`.
#[test]
fn bb2_13_whitespace_keeps_unk_one_token_in_memory_and_prepared() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.txt");
    let valid = dir.path().join("valid.txt");
    std::fs::write(&train, " the <unk> was @-@ high <unk> . \n = heading = \n").unwrap();
    std::fs::write(&valid, " the <unk> was high . \n").unwrap();
    let mut config = DataConfig {
        train: Some(train),
        valid: Some(valid),
        tokenizer: TokenizerKind::Whitespace,
        max_vocab_size: 0,
        batch_size: 1,
        seq_len: 2,
        ..DataConfig::default()
    };
    let mem = LmData::load(&config).unwrap();
    let want: Vec<i64> = ["the", "<unk>", "was", "@-@", "high", "<unk>", ".", "<eos>"]
        .iter()
        .map(|t| mem.vocab.id(t))
        .collect();
    assert_eq!(ids(&mem.train)[..8], want);
    assert_eq!((want[1], want[5]), (0, 0));
    // the <unk> was @-@ high . = heading, and <eos>.
    assert_eq!(mem.vocab.len(), 9);
    let out = dir.path().join("tokens");
    perplex_data::prepare(&config, &out).unwrap();
    config.prepared = Some(out);
    let prepared = perplex_data::PreparedData::open(&config).unwrap();
    assert_eq!(prepared.vocab, mem.vocab);
    use perplex_data::DataSource;
    let epoch = |b: &dyn perplex_data::Batches| perplex_data::collect_epoch(b, 1).unwrap();
    let cpu = tch::Device::Cpu;
    assert_eq!(
        epoch(prepared.train_batches(cpu, 0).unwrap().as_ref()),
        epoch(mem.train_loader(cpu, 0).unwrap().as_ref())
    );
    let valid = prepared.split_ids("valid").unwrap().unwrap();
    assert_eq!(ids(&valid), ids(&mem.valid));
}
