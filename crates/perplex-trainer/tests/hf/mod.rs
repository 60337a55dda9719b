//! Golden fixtures from Hugging Face transformers itself (pinned `transformers==5.23.0`, with
//! the torch that `cargo xtask setup` installs): `make_fixtures.py` saves tiny random models with
//! `save_pretrained` and what transformers computes with them; `check_export.py` loads a
//! directory perplex wrote; `stride_ppl.py` is the sliding-window perplexity loop.
//!
//! The interpreter is `$PERPLEX_HF_PYTHON` (set by `cargo xtask test`), else the python of
//! `cargo xtask setup`'s environment when it has transformers. The tests fail, never skip,
//! without one.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use tch::Tensor;

/// The interpreter with torch and transformers.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PERPLEX_HF_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("PERPLEX_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(|x| PathBuf::from(x).join("perplex"))
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/perplex"))
                })
        });
    if let Some(c) = cache {
        let p = c.join("torch-2.11.0/bin/python");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "no python with transformers: run the tests through `cargo xtask test` (it installs \
         transformers==5.23.0 beside torch), or set PERPLEX_HF_PYTHON"
    )
}

/// Runs one of this directory's scripts; panics with its output on failure.
pub fn run_script(script: &str, args: &[&std::ffi::OsStr]) -> String {
    // Beside this file, whichever crate's test includes it (`file!()` is relative to the
    // workspace root).
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(file!())
        .with_file_name(script);
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fixtures directory, made once per test binary.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_stem().unwrap().to_string_lossy().into_owned();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hf-fixtures-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run_script("make_fixtures.py", &[dir.as_os_str()]);
        dir
    })
}

/// What transformers computed for fixture `name`.
pub struct Expected {
    pub json: Value,
    pub tensors: Vec<(String, Tensor)>,
}

impl Expected {
    pub fn load(name: &str) -> Self {
        let dir = fixtures();
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.expected.json"))).unwrap(),
        )
        .unwrap();
        let tensors =
            Tensor::read_safetensors(dir.join(format!("{name}.expected.safetensors"))).unwrap();
        Self { json, tensors }
    }

    pub fn get(&self, key: &str) -> Option<Tensor> {
        self.tensors
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, t)| t.shallow_clone())
    }

    pub fn tensor(&self, key: &str) -> Tensor {
        self.get(key)
            .unwrap_or_else(|| panic!("no `{key}` in the expected outputs"))
    }

    pub fn ids(&self, key: &str) -> Vec<i64> {
        self.json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    }
}

/// Largest absolute difference.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}
