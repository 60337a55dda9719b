//! A run with `tokenizer = "bpe"` on Tiny Shakespeare: `perplex train` writes the trained
//! `tokenizer.json` into the run directory, and `generate`, `eval` on a text file and
//! `train --resume` read that file (never retraining), through the real `perplex` binary.
mod common;

use common::corpus;
use std::process::{Command, Output};

fn perplex() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_perplex"));
    c.env("RUST_LOG", "warn");
    c
}

fn check(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn sets(settings: &[String]) -> Vec<String> {
    settings
        .iter()
        .flat_map(|s| ["--set".to_string(), s.clone()])
        .collect()
}

#[test]
fn a_bpe_run_writes_its_tokenizer_and_generates_eval_and_resume_read_it() {
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("bpe");
    let settings = [
        format!("data.path={}", corpus().display()),
        "data.tokenizer=bpe".into(),
        "data.max_vocab_size=400".into(),
        "data.batch_size=8".into(),
        "data.seq_len=16".into(),
        "data.eval_batch_size=256".into(),
        "model.embedding_dim=16".into(),
        "model.hidden_size=32".into(),
        "trainer.epochs=1".into(),
        "trainer.max_steps=4".into(),
        "trainer.device=cpu".into(),
        "trainer.threads=1".into(),
        format!("trainer.run_dir={}", runs.path().display()),
        "trainer.run_name=bpe".into(),
    ];
    let out = perplex()
        .arg("train")
        .args(sets(&settings))
        .output()
        .unwrap();
    check(&out, "perplex train");

    let tokenizer = std::fs::read(run.join("tokenizer.json")).expect("tokenizer.json written");
    let hf = perplex_data::HfTokenizer::from_file(&run.join("tokenizer.json")).unwrap();
    assert_eq!(hf.vocab_size(), 400);
    let vocab: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("vocab.json")).unwrap()).unwrap();
    assert_eq!(vocab["tokenizer"], "tokenizer.json");
    assert_eq!(vocab["tokens"].as_array().unwrap().len(), 400);

    // The prompt comes back byte for byte: byte-level decoding of prompt and continuation.
    let prompt = "ROMEO: café 🦀\tdéjà  vu";
    let out = perplex()
        .args([
            "generate",
            "--device",
            "cpu",
            "--max-tokens",
            "12",
            "--seed",
            "3",
        ])
        .args(["--prompt", prompt, "--checkpoint"])
        .arg(&run)
        .output()
        .unwrap();
    let generated = check(&out, "perplex generate");
    assert!(generated.starts_with(prompt), "{generated:?}");
    assert!(generated.len() > prompt.len(), "{generated:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("<unk>"));

    // Eval on a text file tokenizes it with the run's tokenizer.
    let file = runs.path().join("text.txt");
    std::fs::write(
        &file,
        "To be, or not to be: that is the question.\n".repeat(20),
    )
    .unwrap();
    let out = perplex()
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(&run)
        .arg("--split")
        .arg(&file)
        .output()
        .unwrap();
    let report = check(&out, "perplex eval");
    let tokens = hf.encode(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let scored = format!("of {} tokens", tokens.len());
    assert!(
        report.contains(&scored) && report.contains("0.00% <unk>"),
        "{report}"
    );
    // `data.eval_batch_size = 256` streams would leave most of this short text unscored (each
    // stream's first token is never a target): eval uses fewer, each at least one 17-token
    // window, so at most 2 tokens in 17 go unscored.
    let count: usize = report
        .split("text.txt: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no scored count in:\n{report}"));
    assert!(
        count * 17 >= tokens.len() * 15,
        "{count} of {} tokens scored:\n{report}",
        tokens.len()
    );

    // Resuming reads the run's tokenizer.json: nothing is retrained, the file is unchanged,
    // even with a vocabulary size that would train another tokenizer.
    let out = perplex()
        .args(["train", "--resume"])
        .arg(&run)
        .args(sets(&[
            "trainer.max_steps=6".into(),
            "data.max_vocab_size=300".into(),
        ]))
        .output()
        .unwrap();
    check(&out, "perplex train --resume");
    assert_eq!(
        std::fs::read(run.join("tokenizer.json")).unwrap(),
        tokenizer
    );
}

/// `perplex data prepare` with `tokenizer = "bpe"`, then a run on its token files: the run
/// directory gets the prepared `tokenizer.json`, and `generate` and `eval` encode and decode with
/// it (BB2-10 on the prepare path: the token files decode back to the corpus, byte for byte).
#[test]
fn a_run_on_prepared_bpe_tokens_generates_and_evaluates_with_their_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let out = perplex()
        .args(["data", "prepare", "--out"])
        .arg(&tokens)
        .args(sets(&[
            format!("data.path={}", corpus().display()),
            "data.tokenizer=bpe".into(),
            "data.max_vocab_size=400".into(),
        ]))
        .output()
        .unwrap();
    let printed = check(&out, "perplex data prepare");
    assert!(printed.contains("vocabulary 400 tokens"), "{printed}");
    let hf = perplex_data::HfTokenizer::from_file(&tokens.join("tokenizer.json")).unwrap();
    assert_eq!(hf.vocab_size(), 400);
    let header: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tokens.join("train.json")).unwrap()).unwrap();
    assert_eq!(header["tokenizer"], "bpe");
    assert_eq!(header["tokenizer_file"], "tokenizer.json");
    assert_eq!(header["dtype"], "u16");
    // The two splits decode back to the corpus, byte for byte.
    let read_ids = |split: &str| -> Vec<u32> {
        std::fs::read(tokens.join(format!("{split}.bin")))
            .unwrap()
            .chunks_exact(2)
            .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
            .collect()
    };
    let decoded = hf.decode(&read_ids("train")).unwrap() + &hf.decode(&read_ids("valid")).unwrap();
    assert!(decoded == std::fs::read_to_string(corpus()).unwrap());

    let runs = dir.path().join("runs");
    let run = runs.join("prepared-bpe");
    let out = perplex()
        .arg("train")
        .args(sets(&[
            format!("data.prepared={}", tokens.display()),
            "data.tokenizer=bpe".into(),
            "data.batch_size=8".into(),
            "data.seq_len=16".into(),
            "data.eval_batch_size=256".into(),
            "model.embedding_dim=16".into(),
            "model.hidden_size=32".into(),
            "trainer.epochs=1".into(),
            "trainer.max_steps=4".into(),
            "trainer.device=cpu".into(),
            "trainer.threads=1".into(),
            format!("trainer.run_dir={}", runs.display()),
            "trainer.run_name=prepared-bpe".into(),
        ]))
        .output()
        .unwrap();
    check(&out, "perplex train on prepared BPE tokens");
    assert_eq!(
        std::fs::read(run.join("tokenizer.json")).unwrap(),
        std::fs::read(tokens.join("tokenizer.json")).unwrap()
    );

    let prompt = "JULIET: naïve façade\t🦀  \r\nRomeo";
    let out = perplex()
        .args(["generate", "--device", "cpu", "--max-tokens", "12"])
        .args(["--seed", "3", "--prompt", prompt, "--checkpoint"])
        .arg(&run)
        .output()
        .unwrap();
    let generated = check(&out, "perplex generate");
    assert!(generated.starts_with(prompt), "{generated:?}");
    assert!(generated.len() > prompt.len(), "{generated:?}");

    let file = dir.path().join("text.txt");
    std::fs::write(&file, "Now is the winter of our discontent\n".repeat(20)).unwrap();
    let out = perplex()
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(&run)
        .arg("--split")
        .arg(&file)
        .output()
        .unwrap();
    let report = check(&out, "perplex eval");
    let n = hf
        .encode(&std::fs::read_to_string(&file).unwrap())
        .unwrap()
        .len();
    assert!(report.contains(&format!("of {n} tokens")), "{report}");
}
