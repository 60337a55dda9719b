//! Compiles the c10d bridge (`src/bridge.cpp`) against libtorch's own headers, as torch-sys
//! compiles its wrapper, when Gloo's headers are installed; otherwise the crate builds without
//! it and says at run time what to install.
//!
//! libtorch is the one torch-sys found (its `links = "tch"` metadata gives the `lib` directory),
//! else `$LIBTORCH`. The wheel's c10d headers need `USE_C10D_GLOO` and `USE_DISTRIBUTED`, and
//! include Gloo's headers, which the wheel does not ship: Debian's `libgloo-dev` provides them
//! (`GLOO_INCLUDE` overrides where they are looked for).
use std::path::PathBuf;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(perplex_c10d)");
    println!("cargo:rerun-if-changed=src/bridge.cpp");
    for var in [
        "LIBTORCH",
        "GLOO_INCLUDE",
        "LIBTORCH_CXX11_ABI",
        "DEP_TCH_LIBTORCH_LIB",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let gloo_include = std::env::var_os("GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    let gloo_header = gloo_include.join("gloo/algorithm.h");
    println!("cargo:rerun-if-changed={}", gloo_header.display());
    if !gloo_header.exists() {
        println!(
            "cargo:warning=perplex-dist: {} not found: building without c10d (one process only). \
             Install Gloo's headers (apt-get install libgloo-dev) and rebuild.",
            gloo_header.display()
        );
        return;
    }
    let Some(lib_dir) = libtorch_lib_dir() else {
        println!(
            "cargo:warning=perplex-dist: libtorch not found (neither torch-sys's metadata nor \
             LIBTORCH): building without c10d"
        );
        return;
    };
    let root = lib_dir
        .parent()
        .expect("libtorch's lib has a parent")
        .to_path_buf();
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .opt_level(1)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .include(&gloo_include)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag("-DUSE_C10D_GLOO")
        .flag("-DUSE_DISTRIBUTED")
        .file("src/bridge.cpp")
        .compile("perplex_c10d");
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-cfg=perplex_c10d");
}

/// libtorch's `lib` directory: torch-sys's `cargo:libtorch_lib` metadata, else `$LIBTORCH/lib`.
fn libtorch_lib_dir() -> Option<PathBuf> {
    let from_torch_sys = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from);
    let from_env = std::env::var_os("LIBTORCH").map(|l| PathBuf::from(l).join("lib"));
    from_torch_sys.into_iter().chain(from_env).find(|d| {
        d.join("../include/torch/csrc/distributed/c10d/ProcessGroupGloo.hpp")
            .exists()
    })
}
