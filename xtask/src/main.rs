//! `cargo xtask`: the project's tasks. It installs libtorch (PyPI `torch==2.11.0`, the build the
//! pinned `tch 0.24.0` expects) into a per-user cache and runs cargo with `LIBTORCH` and
//! `LD_LIBRARY_PATH` pointing at it, so a new user needs nothing but Rust and Python 3.
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;

/// The libtorch version `tch = "=0.24.0"` is built against.
const TORCH_VERSION: &str = "2.11.0";

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "perplex project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install libtorch (PyPI torch==2.11.0) into the per-user cache, if not there yet, and
    /// print the environment that points at it. Honours LIBTORCH and LIBTORCH_USE_PYTORCH.
    /// Also installs Gloo's headers (Debian's libgloo-dev, for data-parallel training) when
    /// apt-get can, or says how.
    Setup,
    /// Fetch a named corpus (e.g. `tinyshakespeare`) into `data/`.
    Data {
        /// Corpus name.
        name: String,
    },
    /// Train: `perplex train` with the seed config unless `--config` is given.
    Train {
        /// Run config (TOML).
        #[arg(long, default_value = "examples/configs/gru-tinyshakespeare.toml")]
        config: PathBuf,
        /// Config overrides, e.g. `--set trainer.epochs=1`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Data-parallel on this machine: `torchrun --standalone --nproc-per-node N
        /// --no-python perplex train ...` (`data.batch_size` is the global batch).
        #[arg(long)]
        nproc_per_node: Option<u32>,
    },
    /// Run the whole test suite (release profile, the same build as training).
    Test {
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run an example from `examples/` (e.g. `custom_loop`).
    Example {
        /// Example name.
        name: String,
        /// Arguments for the example.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Print the workspace this xtask acts on (found at run time from the current directory).
    Root,
    /// Benchmarks: `train` (perplex vs the PyTorch eager reference, side by side), `losses`
    /// (naive vs chunked output cross-entropy: time and peak memory) and `ddp` (data-parallel
    /// ranks vs one process on the same cores). Results in `<target>/bench/*.json`.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = find_workspace_root().and_then(|root| {
        WORKSPACE_ROOT.get_or_init(|| root);
        run(cli)
    });
    if let Err(e) = result {
        eprintln!("xtask error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Task::Setup => {
            let torch = setup()?;
            println!("libtorch {TORCH_VERSION} is ready.");
            match ensure_gloo_headers() {
                Ok(()) => {
                    println!("Gloo's headers are installed: data-parallel training is built.")
                }
                Err(e) => println!("warning: {e:#}"),
            }
            if let Some(t) = &torch {
                println!("export LIBTORCH={}", t.libtorch.display());
                println!(
                    "export LD_LIBRARY_PATH={}",
                    t.libtorch.join("lib").display()
                );
                println!("# python with torch: {}", t.python.display());
            }
            Ok(())
        }
        Task::Data { name } => {
            let torch = setup()?;
            cargo(&torch, &["build", "--release", "-p", "perplex-cli"])?;
            run_cmd(Command::new(perplex_bin()).args(["data", &name]), &torch)
        }
        Task::Train {
            config,
            overrides,
            nproc_per_node,
        } => {
            let torch = setup()?;
            cargo(&torch, &["build", "--release", "-p", "perplex-cli"])?;
            let mut cmd = match nproc_per_node {
                Some(n) => {
                    let mut c = Command::new(torchrun(&torch)?);
                    c.args([
                        "--standalone",
                        "--nproc-per-node",
                        &n.to_string(),
                        "--no-python",
                    ])
                    .arg(perplex_bin());
                    c
                }
                None => Command::new(perplex_bin()),
            };
            cmd.arg("train").arg("--config").arg(&config);
            for o in &overrides {
                cmd.arg("--set").arg(o);
            }
            run_cmd(&mut cmd, &torch)
        }
        Task::Test { args } => {
            let torch = setup()?;
            // What the tests need beyond libtorch, installed from the registries: Gloo's headers
            // (data-parallel tests; their tests fail, saying so, when this cannot install them)
            // and Python's `tokenizers` (the tokenizer parity test).
            if let Err(e) = ensure_gloo_headers() {
                eprintln!("xtask: warning: {e:#}");
            }
            let python = ensure_py_tokenizers()?;
            std::env::set_var("PERPLEX_PYTHON", &python);
            // Hugging Face `transformers` next to libtorch's torch (the HF golden tests).
            let hf_python = ensure_py_hf(&torch)?;
            std::env::set_var("PERPLEX_HF_PYTHON", &hf_python);
            let mut a: Vec<&str> = vec!["test", "--release", "--workspace"];
            if !args.is_empty() {
                a.push("--");
                a.extend(args.iter().map(String::as_str));
            }
            cargo(&torch, &a)
        }
        Task::Example { name, args } => {
            let torch = setup()?;
            let mut a: Vec<&str> = vec![
                "run",
                "--release",
                "-p",
                "perplex-examples",
                "--example",
                &name,
            ];
            if !args.is_empty() {
                a.push("--");
                a.extend(args.iter().map(String::as_str));
            }
            cargo(&torch, &a)
        }
        Task::Root => {
            println!("{}", workspace_root().display());
            Ok(())
        }
        Task::Bench(args) => {
            let torch = setup()?;
            bench::run(args, &torch)
        }
    }
}

/// Where libtorch is and which python has the matching torch.
#[derive(Debug, Clone)]
pub struct Torch {
    /// `site-packages/torch` (has `lib/` and `include/`).
    pub libtorch: PathBuf,
    /// A python whose `import torch` is this libtorch's torch (for the PyTorch reference).
    pub python: PathBuf,
}

fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("PERPLEX_CACHE_DIR") {
        return Ok(PathBuf::from(d));
    }
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("perplex"))
}

/// Installs torch==2.11.0 into `$XDG_CACHE_HOME/perplex/torch-2.11.0` (a virtual environment)
/// unless it is there already; idempotent. `None` when the user manages libtorch through
/// `LIBTORCH_USE_PYTORCH` (torch-sys asks python itself).
fn setup() -> Result<Option<Torch>> {
    if let Some(l) = std::env::var_os("LIBTORCH") {
        let libtorch = PathBuf::from(l);
        if !libtorch.join("lib").exists() {
            bail!(
                "LIBTORCH={} has no lib/ directory: point it at libtorch or site-packages/torch",
                libtorch.display()
            );
        }
        let python = std::env::var_os("PERPLEX_TORCH_PYTHON")
            .map(PathBuf::from)
            .or_else(|| venv_python(&libtorch))
            .unwrap_or_else(|| PathBuf::from("python3"));
        eprintln!("xtask: using LIBTORCH={}", libtorch.display());
        return Ok(Some(Torch { libtorch, python }));
    }
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        eprintln!(
            "xtask: LIBTORCH_USE_PYTORCH is set: torch-sys will use the active python's torch"
        );
        return Ok(None);
    }
    let venv = cache_dir()?.join(format!("torch-{TORCH_VERSION}"));
    let python = venv.join("bin").join("python");
    let marker = venv.join(".perplex-installed");
    if !marker.exists() {
        eprintln!(
            "xtask: installing torch=={TORCH_VERSION} (libtorch) into {} ...",
            venv.display()
        );
        let py3 = which("python3").context(
            "python3 was not found on PATH: install Python 3.9+ with pip and venv \
             (Debian/Ubuntu: apt-get install python3 python3-venv python3-pip), or set LIBTORCH",
        )?;
        if !python.exists() {
            let st = Command::new(&py3)
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .context("running python3 -m venv")?;
            if !st.success() {
                bail!("`python3 -m venv {}` failed: install the venv module (Debian/Ubuntu: apt-get install python3-venv)", venv.display());
            }
        }
        let st = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--progress-bar",
                "off",
                "--disable-pip-version-check",
            ])
            .arg(format!("torch=={TORCH_VERSION}"))
            .status()
            .context("running pip")?;
        if !st.success() {
            bail!("`pip install torch=={TORCH_VERSION}` failed (see pip's message above)");
        }
        std::fs::write(&marker, TORCH_VERSION).context("writing the install marker")?;
    }
    let libtorch = site_packages_torch(&venv)?;
    Ok(Some(Torch { libtorch, python }))
}

/// Where Gloo's headers are looked for (as perplex-dist's build script looks).
fn gloo_header() -> PathBuf {
    std::env::var_os("GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"))
        .join("gloo/algorithm.h")
}

/// Installs Debian's `libgloo-dev` (Gloo's headers, which the PyPI wheel does not ship and
/// perplex-dist's c10d bridge includes) with apt-get when running as root; otherwise says what
/// to run. Without them perplex still builds and trains, in one process only.
/// The pinned Python `tokenizers` the parity test compares perplex's `tokenizer.json` with.
const PY_TOKENIZERS: &str = "tokenizers==0.23.3";

/// A virtual environment under the target directory with Python's `tokenizers` (from PyPI),
/// made once; returns its interpreter.
fn ensure_py_tokenizers() -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let venv = target.join("py-tokenizers");
    let python = venv.join("bin").join("python");
    let has = |python: &Path| {
        Command::new(python)
            .args([
                "-c",
                "import tokenizers; assert tokenizers.__version__ == '0.23.3'",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if python.exists() && has(&python) {
        return Ok(python);
    }
    eprintln!(
        "xtask: installing Python's {PY_TOKENIZERS} into {} ...",
        venv.display()
    );
    if !python.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("running python3 -m venv")?
            .success();
        if !ok {
            bail!("`python3 -m venv {}` failed", venv.display());
        }
    }
    let ok = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", PY_TOKENIZERS])
        .status()
        .context("running pip")?
        .success();
    if !ok || !has(&python) {
        bail!(
            "`{} -m pip install {PY_TOKENIZERS}` failed",
            python.display()
        );
    }
    Ok(python)
}

/// The pinned Python `transformers` the Hugging Face golden tests compare perplex's models with
/// (installed next to the torch whose libtorch perplex links).
const PY_TRANSFORMERS: &str = "transformers==5.23.0";

/// The python of the torch venv (`Torch.python`; `python3` when torch is the user's, through
/// `LIBTORCH_USE_PYTORCH`) with `transformers` installed into it once; returns that python.
pub(crate) fn ensure_py_hf(torch: &Option<Torch>) -> Result<PathBuf> {
    let python = torch
        .as_ref()
        .map(|t| t.python.clone())
        .unwrap_or_else(|| PathBuf::from("python3"));
    let has = |python: &Path| {
        Command::new(python)
            .args([
                "-c",
                "import transformers; assert transformers.__version__ == '5.23.0'; import torch",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has(&python) {
        return Ok(python);
    }
    eprintln!(
        "xtask: installing Python's {PY_TRANSFORMERS} for {} ...",
        python.display()
    );
    let ok = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", PY_TRANSFORMERS])
        .status()
        .context("running pip")?
        .success();
    if !ok || !has(&python) {
        bail!(
            "`{} -m pip install {PY_TRANSFORMERS}` failed",
            python.display()
        );
    }
    Ok(python)
}

fn ensure_gloo_headers() -> Result<()> {
    if gloo_header().exists() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || which("apt-get").is_none() {
        bail!(
            "{} is missing, so perplex builds without data-parallel training: install Gloo's \
             headers (Debian/Ubuntu: `sudo apt-get install libgloo-dev`; elsewhere set \
             GLOO_INCLUDE to a Gloo checkout's include directory), then rebuild",
            gloo_header().display()
        );
    }
    eprintln!("xtask: installing libgloo-dev (Gloo's headers) with apt-get ...");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "libgloo-dev"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").arg("update").status();
        if !install() {
            bail!("`apt-get install -y libgloo-dev` failed (see apt's message above)");
        }
    }
    Ok(())
}

/// torchrun from the python that holds libtorch (the cache's venv), else from PATH.
fn torchrun(torch: &Option<Torch>) -> Result<PathBuf> {
    torch
        .as_ref()
        .and_then(|t| t.python.parent().map(|bin| bin.join("torchrun")))
        .filter(|p| p.is_file())
        .or_else(|| which("torchrun"))
        .context("torchrun was not found (next to the python with torch, nor on PATH)")
}

/// `VENV/bin/python` for `LIBTORCH=VENV/lib/pythonX.Y/site-packages/torch`, when it exists (the
/// python whose torch that libtorch is, e.g. the cache's own venv).
fn venv_python(libtorch: &Path) -> Option<PathBuf> {
    let venv = libtorch.ancestors().nth(4)?;
    let python = venv.join("bin").join("python");
    python.is_file().then_some(python)
}

fn site_packages_torch(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let p = entry?.path().join("site-packages").join("torch");
        if p.join("lib").join("libtorch_cpu.so").exists() {
            return Ok(p);
        }
    }
    bail!("no site-packages/torch with lib/libtorch_cpu.so under {}: delete {} and run `cargo xtask setup` again", lib.display(), venv.display())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Sets LIBTORCH, LD_LIBRARY_PATH, PERPLEX_TORCH_PYTHON and a default data mirror.
fn apply_env(cmd: &mut Command, torch: &Option<Torch>) {
    if let Some(t) = torch {
        cmd.env("LIBTORCH", &t.libtorch);
        let mut ld = OsString::from(t.libtorch.join("lib"));
        if let Some(prev) = std::env::var_os("LD_LIBRARY_PATH") {
            ld.push(":");
            ld.push(prev);
        }
        cmd.env("LD_LIBRARY_PATH", ld);
        cmd.env("PERPLEX_TORCH_PYTHON", &t.python);
    }
    if std::env::var_os("PERPLEX_DATA_MIRROR").is_none() {
        let shared = workspace_root().join("../shared/data");
        if shared.exists() {
            cmd.env("PERPLEX_DATA_MIRROR", shared);
        }
    }
}

static WORKSPACE_ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The workspace xtask was invoked in, found at run time (never a path compiled into the binary:
/// with a `CARGO_TARGET_DIR` shared between clones, cargo may run an xtask built in another
/// clone). `$XTASK_WORKSPACE_ROOT` when set (a prebuilt xtask run from a copy of the tree, e.g. by
/// `scripts/gpu-check.sh`), else `cargo locate-project --workspace` from the current directory.
fn find_workspace_root() -> Result<PathBuf> {
    if let Some(r) = std::env::var_os("XTASK_WORKSPACE_ROOT") {
        return Ok(PathBuf::from(r));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .output()
        .with_context(|| format!("running {cargo:?} locate-project"))?;
    if !out.status.success() {
        bail!(
            "`cargo locate-project --workspace` failed in {}: run `cargo xtask` inside the perplex \
             checkout ({})",
            std::env::current_dir().unwrap_or_default().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let manifest = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let root = manifest
        .parent()
        .context("cargo locate-project printed no directory")?
        .to_path_buf();
    if !root.join("xtask").join("Cargo.toml").is_file() {
        bail!(
            "{} is not the perplex workspace (it has no xtask/): run `cargo xtask` inside the \
             perplex checkout",
            root.display()
        );
    }
    Ok(root)
}

/// The workspace root found by [`find_workspace_root`] when xtask started.
fn workspace_root() -> PathBuf {
    WORKSPACE_ROOT
        .get()
        .cloned()
        .expect("main sets the workspace root before running a task")
}

fn perplex_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release").join("perplex")
}

fn cargo(torch: &Option<Torch>, args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(workspace_root());
    run_cmd(&mut cmd, torch)
}

fn run_cmd(cmd: &mut Command, torch: &Option<Torch>) -> Result<()> {
    apply_env(cmd, torch);
    let status = cmd
        .status()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", cmd.get_program());
    }
    Ok(())
}
