//! Makes the `perplex` binary find libtorch without `LD_LIBRARY_PATH` (rpath), and keeps
//! `libtorch_cuda` linked even though no symbol of it is referenced directly: without it the
//! linker's `--as-needed` drops the library and CUDA is never initialised.
fn main() {
    // Set by torch-sys (`links = "tch"`, key `libtorch_lib`).
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
