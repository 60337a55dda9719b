//! Examples that compose perplex's crates without the `Trainer`.
//!
//! Run one with `cargo xtask example custom_loop` (or `cargo run --release -p perplex-examples
//! --example custom_loop` once `LIBTORCH` points at libtorch).
