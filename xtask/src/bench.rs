//! `cargo xtask bench`: benchmarks compared side by side with their references.
use anyhow::{bail, Result};
use clap::Args;

use crate::Torch;

/// Arguments of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to benchmark: `train`.
    pub what: String,
}

/// Runs a benchmark.
pub fn run(args: BenchArgs, _torch: &Option<Torch>) -> Result<()> {
    bail!("unknown benchmark `{}`", args.what)
}
