//! Helpers shared by the CLI's integration tests.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Tiny Shakespeare fetched by `perplex data` itself (from `$PERPLEX_DATA_MIRROR` when set, else
/// its public source; the checksum always verified) into this test target's temporary
/// directory, once per test binary.
pub fn corpus() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("data");
        let out = Command::new(env!("CARGO_BIN_EXE_perplex"))
            .env("RUST_LOG", "warn")
            .args(["data", "tinyshakespeare", "--data-dir"])
            .arg(&dir)
            .output()
            .expect("run perplex data");
        assert!(
            out.status.success(),
            "perplex data tinyshakespeare failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}
