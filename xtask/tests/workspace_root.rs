//! xtask acts on the checkout it is invoked in, found at run time: an xtask binary built in one
//! clone (shared `CARGO_TARGET_DIR`) and run in another works on the other one.
use std::path::Path;
use std::process::Command;

fn xtask(cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("root")
        .current_dir(cwd)
        .env_remove("XTASK_WORKSPACE_ROOT")
        .output()
        .expect("run xtask")
}

/// A minimal workspace with an `xtask` member, as a second clone would be.
fn workspace(dir: &Path) {
    std::fs::create_dir_all(dir.join("xtask/src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[workspace]\nresolver = \"2\"\nmembers = [\"xtask\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("xtask/Cargo.toml"),
        "[package]\nname = \"xtask\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("xtask/src/main.rs"), "fn main() {}\n").unwrap();
}

#[test]
fn xtask_acts_on_the_workspace_it_is_run_in_not_the_one_it_was_built_in() {
    let other = tempfile::tempdir().unwrap();
    workspace(other.path());
    std::fs::create_dir_all(other.path().join("xtask/src/deeper")).unwrap();
    for cwd in [
        other.path().to_path_buf(),
        other.path().join("xtask/src/deeper"),
    ] {
        let out = xtask(&cwd);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            Path::new(printed.trim()).canonicalize().unwrap(),
            other.path().canonicalize().unwrap(),
            "run in {}",
            cwd.display()
        );
    }
    // The workspace it was built in is found the same way.
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = xtask(own);
    assert_eq!(
        Path::new(String::from_utf8(out.stdout).unwrap().trim())
            .canonicalize()
            .unwrap(),
        own.canonicalize().unwrap()
    );
}

#[test]
fn xtask_outside_a_perplex_workspace_says_where_to_run_it() {
    let empty = tempfile::tempdir().unwrap();
    let out = xtask(empty.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inside the perplex checkout"), "{err}");
}
