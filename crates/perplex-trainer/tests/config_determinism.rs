//! The same config file, environment and `--set` give the same result in every process.
//!
//! Hash seeds differ per process, and the former config stack's outcome depended on hash-map
//! order; so each case is loaded in many fresh processes (this test binary run again, see
//! [`child_loads_every_case`]) and all of them must print one identical outcome.
use std::path::PathBuf;
use std::process::Command;

use perplex_trainer::RunConfig;

/// How many fresh processes load each case.
const PROCESSES: usize = 50;
/// Processes started at once (each loads libtorch, about half a second of CPU).
const PARALLEL: usize = 4;
/// Set in the child processes: the directory holding the cases' files.
const CHILD_ENV: &str = "PERPLEX_TEST_DETERMINISM_DIR";

/// A case: name, file body, environment variables, `--set` overrides. A body starting with `@`
/// names an example config instead.
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

const CASES: &[Case] = &[
    (
        "quoted_label_smoothing",
        "[loss]\nlabel_smoothing = '0.1'\ntype = \"softmax_cross_entropy\"\n",
        &[],
        &[],
    ),
    (
        "float_warmup_steps",
        "[schedule]\nwarmup_steps = 10.6\ntotal_steps = 100\ntype = \"warmup_cosine\"\n",
        &[],
        &[],
    ),
    ("float_max_steps", "[trainer]\nmax_steps = 1.6\n", &[], &[]),
    ("float_epochs", "[trainer]\nepochs = 3.5\n", &[], &[]),
    (
        "env_run_name",
        "",
        &[("PERPLEX__TRAINER__RUN_NAME", "0042")],
        &[],
    ),
    ("set_run_name", "", &[], &["trainer.run_name=0042"]),
    (
        "type_switch_by_set",
        "@examples/configs/gru-tinyshakespeare.toml",
        &[],
        &["optim.type=sgd"],
    ),
    (
        "type_last",
        "[loss]\nlabel_smoothing = 0.1\nreduction = \"sum\"\ntype = \"softmax_cross_entropy\"\n\
         [optim]\nlr = 1\nweight_decay = 0\ntype = \"adamw\"\n",
        &[],
        &[],
    ),
    (
        "type_first",
        "[loss]\ntype = \"softmax_cross_entropy\"\nlabel_smoothing = 0.1\nreduction = \"sum\"\n\
         [optim]\ntype = \"adamw\"\nlr = 1\nweight_decay = 0\n",
        &[],
        &[],
    ),
];

const MARK: &str = "=== case ";

fn case_file(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
    match body.strip_prefix('@') {
        Some(example) => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(example),
        None => dir.join(format!("{name}.toml")),
    }
}

/// In a child process: loads every case and prints each outcome after a marker line. Does
/// nothing in a normal test run.
#[test]
fn child_loads_every_case() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut out = String::new();
    for (name, body, env, sets) in CASES {
        for (k, v) in *env {
            std::env::set_var(k, v);
        }
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let outcome = match RunConfig::load(Some(&case_file(&dir, name, body)), &sets) {
            Ok(c) => format!("ok\n{}", c.to_toml().unwrap()),
            Err(e) => format!("error\n{e}\n"),
        };
        for (k, _) in *env {
            std::env::remove_var(k);
        }
        out.push_str(&format!("{MARK}{name}\n{outcome}"));
    }
    out.push_str(&format!("{MARK}end\n"));
    print!("{out}");
}

/// The outcome of each case in one fresh process.
fn outcomes_of_one_process(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_loads_every_case",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("PERPLEX__") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "child failed: {stdout}");
    let mut cases = Vec::new();
    let mut parts = stdout.split(MARK).skip(1);
    for part in parts.by_ref() {
        let (name, outcome) = part.split_once('\n').unwrap();
        if name == "end" {
            break;
        }
        cases.push((name.to_string(), outcome.to_string()));
    }
    assert_eq!(cases.len(), CASES.len(), "{stdout}");
    cases
}

#[test]
fn every_case_loads_the_same_in_fresh_processes() {
    let dir = tempfile::tempdir().unwrap();
    for (name, body, _, _) in CASES {
        if !body.starts_with('@') {
            std::fs::write(case_file(dir.path(), name, body), body).unwrap();
        }
    }
    let mut runs: Vec<Vec<(String, String)>> = Vec::new();
    while runs.len() < PROCESSES {
        let batch = PARALLEL.min(PROCESSES - runs.len());
        let handles: Vec<_> = (0..batch)
            .map(|_| {
                let d = dir.path().to_path_buf();
                std::thread::spawn(move || outcomes_of_one_process(&d))
            })
            .collect();
        runs.extend(handles.into_iter().map(|h| h.join().unwrap()));
    }
    let first = &runs[0];
    for (i, run) in runs.iter().enumerate() {
        for ((name, a), (_, b)) in first.iter().zip(run) {
            assert_eq!(a, b, "case {name}: process {i} differs from process 0");
        }
    }
    let outcome = |name: &str| &first.iter().find(|(n, _)| n == name).unwrap().1;

    // And the one outcome is the rule's.
    for (name, key, expected) in [
        (
            "quoted_label_smoothing",
            "loss.label_smoothing",
            "invalid type: string \"0.1\", expected f64",
        ),
        (
            "float_warmup_steps",
            "schedule.warmup_steps",
            "invalid type: floating point `10.6`, expected i64",
        ),
        (
            "float_max_steps",
            "trainer.max_steps",
            "invalid type: floating point `1.6`, expected u64",
        ),
        (
            "float_epochs",
            "trainer.epochs",
            "invalid type: floating point `3.5`, expected u64",
        ),
    ] {
        let o = outcome(name);
        assert!(o.starts_with("error\n"), "{name}: {o}");
        assert!(o.contains(&format!("{key}: {expected}")), "{name}: {o}");
        assert!(o.contains(&format!("{name}.toml")), "{name}: {o}");
    }
    for name in ["env_run_name", "set_run_name"] {
        let o = outcome(name);
        assert!(o.contains("run_name = \"0042\""), "{name}: {o}");
    }
    let o = outcome("type_switch_by_set");
    assert!(o.contains("[optim]\ntype = \"sgd\"\n"), "{o}");
    assert!(!o.contains("betas") && !o.contains("\neps ="), "{o}");
    assert_eq!(outcome("type_last"), outcome("type_first"));
    assert!(outcome("type_last").contains("label_smoothing = 0.1"));
}
