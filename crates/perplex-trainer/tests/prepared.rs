//! Training from token files made by `perplex_data::prepare` (memory-mapped) is training on the
//! same ids as the in-memory corpus: the same losses, bit for bit, for both loaders.
mod common;

use perplex_trainer::Trainer;

fn losses(run: &std::path::Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train" || v["kind"] == "valid")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn prepared_token_files_train_exactly_as_the_text_corpus() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    for loader in ["bptt", "random_windows"] {
        let extra = "eval_every = 6\nthreads = 1";
        let loss = "type = \"softmax_cross_entropy\"";
        let config = |name: &str| {
            let mut c = common::tiny_char_config(dir.path(), name, loss, extra);
            c.data.loader = serde_json::from_value(serde_json::json!(loader)).unwrap();
            c.trainer.max_steps = 12;
            c.trainer.log_every = 1;
            c
        };
        let text = config(&format!("text-{loader}"));
        let out = dir.path().join(format!("tokens-{loader}"));
        let report = perplex_data::prepare(&text.data, &out).unwrap();
        assert!(report.tokens[0] > 900_000, "{report:?}");
        let mut prepared = config(&format!("prepared-{loader}"));
        prepared.data.prepared = Some(out);
        Trainer::from_config(text).unwrap().fit().unwrap();
        Trainer::from_config(prepared).unwrap().fit().unwrap();
        let a = losses(&dir.path().join(format!("text-{loader}")));
        let b = losses(&dir.path().join(format!("prepared-{loader}")));
        assert!(a.len() >= 12, "{a:?}");
        assert_eq!(a.len(), b.len());
        for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
            assert_eq!(sa, sb);
            assert_eq!(
                la.to_bits(),
                lb.to_bits(),
                "{loader} step {sa}: {la} vs {lb}"
            );
        }
    }
}

/// `tokenizer = "bpe"`: the byte-level BPE that `prepare` trains from the streamed training
/// split is the one a run trains from the text in memory, the run directory gets the prepared
/// `tokenizer.json`, and training from the token files gives the same losses, bit for bit.
#[test]
fn prepared_bpe_token_files_train_exactly_as_the_text_corpus() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str| {
        let extra = "eval_every = 6\nthreads = 1";
        let loss = "type = \"softmax_cross_entropy\"";
        let mut c = common::tiny_char_config(dir.path(), name, loss, extra);
        c.data.tokenizer = perplex_data::TokenizerKind::Bpe;
        c.data.max_vocab_size = 300;
        c.data.loader = perplex_data::LoaderKind::RandomWindows;
        c.trainer.max_steps = 12;
        c.trainer.log_every = 1;
        c
    };
    let text = config("bpe-text");
    let out = dir.path().join("tokens-bpe");
    let report = perplex_data::prepare(&text.data, &out).unwrap();
    assert_eq!(report.vocab_size, 300);
    let mut prepared = config("bpe-prepared");
    prepared.data.prepared = Some(out.clone());
    Trainer::from_config(text).unwrap().fit().unwrap();
    Trainer::from_config(prepared).unwrap().fit().unwrap();
    let tokenizer =
        |d: &std::path::Path| std::fs::read_to_string(d.join("tokenizer.json")).unwrap();
    let from_text = tokenizer(&dir.path().join("bpe-text"));
    assert_eq!(tokenizer(&out), from_text, "prepare trained another BPE");
    assert_eq!(tokenizer(&dir.path().join("bpe-prepared")), from_text);
    let a = losses(&dir.path().join("bpe-text"));
    let b = losses(&dir.path().join("bpe-prepared"));
    assert!(a.len() >= 12, "{a:?}");
    assert_eq!(a.len(), b.len());
    for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert_eq!(la.to_bits(), lb.to_bits(), "step {sa}: {la} vs {lb}");
    }
}
