//! Bad data gets a clear error, never a panic.
use perplex_data::{DataConfig, DataError, LmData};

fn config_for(path: &std::path::Path) -> DataConfig {
    DataConfig {
        path: Some(path.to_path_buf()),
        ..DataConfig::default()
    }
}

#[test]
fn missing_file_is_named() {
    let err = LmData::load(&config_for("/no/such/corpus.txt".as_ref())).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }));
    assert!(err.to_string().contains("/no/such/corpus.txt"));
}

#[test]
fn empty_corpus_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.txt");
    std::fs::write(&p, "\n\n").unwrap();
    let err = LmData::load(&config_for(&p)).unwrap_err().to_string();
    assert!(err.contains("empty") && err.contains("empty.txt"), "{err}");
}

#[test]
fn split_too_small_says_how_many_tokens_it_has_and_needs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("small.txt");
    std::fs::write(&p, "a few words only\n".repeat(50)).unwrap();
    let err = LmData::load(&config_for(&p)).unwrap_err().to_string();
    assert!(err.contains("tokens but needs at least"), "{err}");
}

#[test]
fn invalid_utf8_gives_the_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.txt");
    std::fs::write(&p, b"hello \xff world").unwrap();
    let err = LmData::load(&config_for(&p)).unwrap_err().to_string();
    assert!(err.contains("offset 6") && err.contains("bad.txt"), "{err}");
}
