//! Hugging Face models through the `perplex` binary: `[model] init_from` fine-tuning from a
//! transformers directory, `perplex export --format hf` read back by transformers,
//! `eval`/`generate --checkpoint` on a transformers directory, and `eval --stride` against the
//! loop of transformers' perplexity guide run in Python (`stride_ppl.py`). The fixtures are tiny
//! random models saved by transformers itself (`perplex-trainer/tests/hf/make_fixtures.py`).
mod common;
#[path = "../../perplex-trainer/tests/hf/mod.rs"]
mod hf;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use perplex_data::HfTokenizer;
use perplex_trainer::LoadedModel;
use tch::{Device, Tensor};

use hf::{fixtures, run_script};

fn perplex() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_perplex"));
    c.env("RUST_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("PERPLEX__") {
            c.env_remove(k);
        }
    }
    c
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn check(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn refused(out: &Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} succeeded:\n{}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{what}: {err}"
    );
    err
}

/// A fine-tuning config for fixture `name` on Tiny Shakespeare.
fn config(dir: &Path, name: &str, lr: f64) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[data]
path = "{corpus}"
batch_size = 4
seq_len = 32
loader = "random_windows"

[model]
init_from = "{init}"

[optim]
type = "adamw"
lr = {lr}

[trainer]
epochs = 1
max_steps = 6
eval_every = 3
log_every = 3
progress = false
run_dir = "{runs}"
run_name = "{name}"
"#,
            corpus = common::corpus().display(),
            init = fixtures().join(name).display(),
            runs = dir.join("runs").display(),
        ),
    )
    .unwrap();
    path
}

fn train(config: &Path, sets: &[&str]) -> Output {
    let mut c = perplex();
    c.arg("train").arg("-c").arg(config);
    for s in sets {
        c.args(["--set", s]);
    }
    c.output().unwrap()
}

fn export(run: &Path, out: &Path) -> String {
    check(
        &perplex()
            .args(["export", "--format", "hf", "--checkpoint"])
            .arg(run)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap(),
        "perplex export",
    )
}

/// `init_from` loads the directory's weights exactly: with lr = 0 (no update, no decay) the
/// exported model holds the fixture's tensors bit for bit; the run records the concrete model.
#[test]
fn init_from_reads_the_pretrained_weights_exactly() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for (name, ty) in [
        ("gpt2", "transformer"),
        ("llama_gqa", "llama"),
        ("qwen2", "llama"),
    ] {
        check(
            &train(&config(tmp.path(), name, 0.0), &[]),
            &format!("train {name}"),
        );
        let run = tmp.path().join("runs").join(name);
        let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(saved.contains(&format!("type = \"{ty}\"")), "{saved}");
        assert!(saved.contains("init_from = "), "{saved}");
        assert!(saved.contains("tokenizer_file = "), "{saved}");
        let out = tmp.path().join(format!("{name}-hf"));
        export(&run, &out);
        let theirs =
            Tensor::read_safetensors(fixtures().join(name).join("model.safetensors")).unwrap();
        let ours: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(out.join("model.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        assert_eq!(theirs.len(), ours.len(), "{name}: tensor count");
        for (k, v) in &theirs {
            assert!(
                v.equal(&ours[k]),
                "{name}: `{k}` differs after a run with lr 0"
            );
        }
        for f in [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            assert!(out.join(f).is_file(), "{name}: no {f}");
        }
    }
}

/// The README's walk-through, as a test: fine-tune, resume, export, and transformers loads the
/// result with nothing missing or unexpected and scores a text as perplex does.
#[test]
fn fine_tune_export_and_score_in_transformers() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let name = "llama_gqa";
    let cfg = config(tmp.path(), name, 3e-3);
    // `dropout` is the one model key allowed beside init_from.
    let out = check(&train(&cfg, &["model.dropout=0.1"]), "train");
    assert!(out.contains("valid_loss"), "{out}");
    let run = tmp.path().join("runs").join(name);
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("attention_dropout = 0.1"), "{saved}");
    let out = check(
        &perplex()
            .args(["train", "--resume"])
            .arg(&run)
            .args(["--set", "trainer.max_steps=9"])
            .output()
            .unwrap(),
        "resume",
    );
    assert!(out.contains("step 9"), "{out}");
    let exported = tmp.path().join("exported");
    let said = export(&run, &exported);
    assert!(said.contains("LlamaForCausalLM"), "{said}");
    // The run and its export continue a prompt alike (no line break before a pretrained
    // model's prompt, as transformers' generate).
    let greedy = |dir: &Path| {
        check(
            &perplex()
                .args([
                    "generate",
                    "--prompt",
                    "ROMEO:",
                    "--max-tokens",
                    "16",
                    "--top-k",
                    "1",
                    "--checkpoint",
                ])
                .arg(dir)
                .output()
                .unwrap(),
            "generate",
        )
    };
    assert_eq!(greedy(&run), greedy(&exported));

    // The same text through perplex (the run and its export) and through transformers.
    let sample = tmp.path().join("sample.txt");
    let corpus = std::fs::read_to_string(common::corpus()).unwrap();
    std::fs::write(&sample, &corpus[..3000]).unwrap();
    let score = |dir: &Path| {
        let m = LoadedModel::load(dir, Device::Cpu).unwrap();
        let ids = m
            .encode(&std::fs::read_to_string(&sample).unwrap())
            .unwrap();
        let losses = m.strided_token_losses(&ids, 80, 20).unwrap();
        (ids, losses.iter().map(|t| t.nll).sum::<f64>(), losses.len())
    };
    let (ids, run_sum, run_n) = score(&run);
    let (_, exp_sum, exp_n) = score(&exported);
    assert_eq!(run_n, exp_n);
    assert!(
        (run_sum - exp_sum).abs() < 1e-6 * run_sum,
        "{run_sum} vs {exp_sum}"
    );
    let input = tmp.path().join("ids.safetensors");
    Tensor::write_safetensors(&[("ids", &ids)], &input).unwrap();
    let python: serde_json::Value = serde_json::from_str(
        run_script(
            "stride_ppl.py",
            &[
                exported.as_os_str(),
                input.as_os_str(),
                "80".as_ref(),
                "20".as_ref(),
            ],
        )
        .trim(),
    )
    .unwrap();
    assert_eq!(python["exact_n_tokens"].as_u64().unwrap() as usize, run_n);
    let theirs = python["exact_nll_sum"].as_f64().unwrap();
    assert!(
        (theirs - run_sum).abs() < 1e-5 * theirs,
        "transformers {theirs} vs perplex {run_sum}"
    );
}

/// `eval --stride` scores what the guide's loop scores, in transformers, for disjoint,
/// overlapping and stride-1 windows; the binary prints the same count.
#[test]
fn eval_stride_equals_the_guides_loop_in_transformers() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let corpus = std::fs::read_to_string(common::corpus()).unwrap();
    let sample = tmp.path().join("sample.txt");
    std::fs::write(&sample, &corpus[..1500]).unwrap();
    for name in ["gpt2", "llama_mqa_tied"] {
        let dir = fixtures().join(name);
        let tokenizer = HfTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        let ids: Vec<i64> = tokenizer
            .encode(&corpus[..1500])
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        let ids = Tensor::from_slice(&ids);
        let input = tmp.path().join("ids.safetensors");
        Tensor::write_safetensors(&[("ids", &ids)], &input).unwrap();
        let model = LoadedModel::load(&dir, Device::Cpu).unwrap();
        assert_eq!(
            model.encode(&corpus[..1500]).unwrap(),
            ids,
            "{name}: the tokenizer"
        );
        for (max_length, stride) in [(64, 64), (64, 17), (48, 3)] {
            let losses = model
                .strided_token_losses(&ids, max_length, stride)
                .unwrap();
            let ours: f64 = losses.iter().map(|t| t.nll).sum();
            let (ml, st) = (max_length.to_string(), stride.to_string());
            let python: serde_json::Value = serde_json::from_str(
                run_script(
                    "stride_ppl.py",
                    &[dir.as_os_str(), input.as_os_str(), ml.as_ref(), st.as_ref()],
                )
                .trim(),
            )
            .unwrap();
            let theirs = python["exact_nll_sum"].as_f64().unwrap();
            assert_eq!(
                python["exact_n_tokens"].as_u64().unwrap() as usize,
                losses.len(),
                "{name} {max_length}/{stride}: {python}"
            );
            assert!(
                (ours - theirs).abs() < 1e-5 * theirs,
                "{name} {max_length}/{stride}: perplex {ours} vs transformers {theirs}"
            );
            if stride >= max_length {
                // Disjoint windows: the guide's own count and sum are exact too.
                assert_eq!(python["n_tokens"], python["exact_n_tokens"]);
            }
        }
        let out = check(
            &perplex()
                .args([
                    "eval",
                    "--stride",
                    "17",
                    "--max-length",
                    "64",
                    "--top",
                    "0",
                    "--checkpoint",
                ])
                .arg(&dir)
                .arg("--split")
                .arg(&sample)
                .output()
                .unwrap(),
            "eval --stride",
        );
        let n = ids.size()[0];
        assert!(
            out.contains(&format!(
                "{} of {n} tokens (windows of 64, stride 17)",
                n - 1
            )),
            "{out}"
        );
    }
}

/// `generate --checkpoint` reads a transformers directory with its tokenizer; greedy decoding
/// (top-k 1) continues the prompt as transformers' `generate` does.
#[test]
fn generate_reads_a_transformers_directory() {
    let dir = fixtures().join("qwen2");
    let out = check(
        &perplex()
            .args([
                "generate",
                "--prompt",
                "The king",
                "--max-tokens",
                "12",
                "--top-k",
                "1",
                "--checkpoint",
            ])
            .arg(&dir)
            .output()
            .unwrap(),
        "generate",
    );
    assert!(out.starts_with("The king"), "{out}");
    let m = LoadedModel::load(&dir, Device::Cpu).unwrap();
    assert_eq!(m.model.vocab_size(), 336, "Qwen2's padded embedding");

    // Generation stops at the directory's eos_token_id (kept), as transformers' generate does;
    // --ignore-eos samples on. The fixture's eos (id 0) is never the greedy choice, so a copy
    // names the 5th greedy token as its eos.
    let options = perplex_trainer::sampling::SamplingOptions {
        max_tokens: 12,
        top_k: 1,
        ..Default::default()
    };
    let full = m.sample("The king", &options).unwrap().ids;
    assert_eq!(full.len(), 12);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let copy = tmp.path().join("qwen2");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let eos = full[4];
    let first = full.iter().position(|&i| i == eos).unwrap();
    std::fs::write(
        copy.join("generation_config.json"),
        format!("{{\"eos_token_id\": [{eos}, 99999]}}"),
    )
    .unwrap();
    let m = LoadedModel::load(&copy, Device::Cpu).unwrap();
    assert_eq!(m.eos_ids(), [eos, 99999]);
    let stopped = m
        .sample(
            "The king",
            &perplex_trainer::sampling::SamplingOptions {
                stop_ids: m.eos_ids(),
                ..options.clone()
            },
        )
        .unwrap()
        .ids;
    assert_eq!(stopped, full[..=first], "stops at the first eos, kept");
    let n_tokens = |extra: &[&str]| {
        let out = check(
            &perplex()
                .args([
                    "generate",
                    "--prompt",
                    "The king",
                    "--max-tokens",
                    "12",
                    "--top-k",
                    "1",
                ])
                .args(extra)
                .arg("--checkpoint")
                .arg(&copy)
                .output()
                .unwrap(),
            "generate",
        );
        out.len()
    };
    assert!(n_tokens(&[]) < n_tokens(&["--ignore-eos"]));
}

#[test]
fn init_from_mistakes_are_refused_by_name() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cfg = config(tmp.path(), "gpt2", 1e-3);
    // Architecture keys beside init_from.
    let err = refused(
        &train(&cfg, &["model.n_layer=3", "trainer.max_steps=1"]),
        "n_layer",
    );
    assert!(
        err.contains("n_layer") && err.contains("init_from"),
        "{err}"
    );
    // A concrete model section that disagrees with the directory's config.json.
    let dir = fixtures().join("llama_mha");
    let cfg2 = tmp.path().join("concrete.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("init_from = \"{}\"", fixtures().join("gpt2").display()),
        &format!(
            "type = \"llama\"\nhidden_size = 32\nintermediate_size = 48\nnum_hidden_layers = 2\n\
                 num_attention_heads = 4\nmax_position_embeddings = 256\nrms_norm_eps = 1e-5\n\
                 initializer_range = 0.2\ninit_from = \"{}\"",
            dir.display()
        ),
    );
    std::fs::write(&cfg2, text).unwrap();
    let err = refused(&train(&cfg2, &[]), "concrete llama");
    assert!(
        err.contains("rms_norm_eps") && err.contains("config.json"),
        "{err}"
    );
    // A directory that is not a transformers directory; a missing one.
    let err = refused(
        &train(
            &cfg,
            &[&format!("model.init_from={}", tmp.path().display())],
        ),
        "no config.json",
    );
    assert!(
        err.contains("config.json") && err.contains("file not found"),
        "{err}"
    );
    let err = refused(
        &train(&cfg, &["model.init_from=/no/such/dir"]),
        "missing dir",
    );
    assert!(err.contains("/no/such/dir"), "{err}");
    // Nothing was written for any of them.
    assert!(!tmp.path().join("runs").exists());
    // eval of a transformers directory has no corpus split.
    let err = refused(
        &perplex()
            .args(["eval", "--checkpoint"])
            .arg(fixtures().join("gpt2"))
            .output()
            .unwrap(),
        "eval valid",
    );
    assert!(err.contains("--split FILE"), "{err}");
    // export refuses an --out that holds files, and a recurrent run.
    let err = refused(
        &perplex()
            .args(["export", "--checkpoint"])
            .arg(fixtures().join("gpt2"))
            .arg("--out")
            .arg(fixtures().join("gpt2"))
            .output()
            .unwrap(),
        "export over files",
    );
    assert!(err.contains("not an empty directory"), "{err}");
}

/// GPT-2's three dropouts may differ: inference ignores them, fine-tuning takes
/// `model.dropout`, and without it the refusal says how; `--dry-run` reads the checkpoint's
/// headers, so a missing or damaged weights file fails there, not after the data is loaded.
#[test]
fn unequal_gpt2_dropouts_and_damaged_weights_before_training() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("gpt2");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(fixtures().join("gpt2")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["attn_pdrop"] = serde_json::json!(0.0);
    json["resid_pdrop"] = serde_json::json!(0.2);
    std::fs::write(&path, json.to_string()).unwrap();
    check(
        &perplex()
            .args([
                "generate",
                "--prompt",
                "The",
                "--max-tokens",
                "4",
                "--checkpoint",
            ])
            .arg(&dir)
            .output()
            .unwrap(),
        "generate with unequal dropouts",
    );
    let cfg = config(tmp.path(), "gpt2", 1e-3);
    let init = format!("model.init_from={}", dir.display());
    let err = refused(
        &train(&cfg, &[&init, "trainer.max_steps=1"]),
        "unequal dropouts",
    );
    assert!(
        err.contains("attn_pdrop") && err.contains("model.dropout"),
        "{err}"
    );
    check(
        &train(&cfg, &[&init, "model.dropout=0.1", "trainer.max_steps=2"]),
        "train with model.dropout",
    );
    // Damaged weights: refused by --dry-run.
    std::fs::write(dir.join("model.safetensors"), b"truncated").unwrap();
    let err = refused(
        &perplex()
            .arg("train")
            .arg("-c")
            .arg(&cfg)
            .args(["--set", &init, "--set", "model.dropout=0.1", "--dry-run"])
            .output()
            .unwrap(),
        "dry-run with damaged weights",
    );
    assert!(
        err.contains("model.safetensors") && err.contains("not a safetensors file"),
        "{err}"
    );
}
