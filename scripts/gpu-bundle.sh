#!/usr/bin/env bash
# Builds, on a machine with Rust, everything scripts/gpu-check.sh runs on a GPU machine that has
# no Rust toolchain and no network (only python3 with torch 2.11, CUDA build, installed):
#
#   BUNDLE/bin/perplex            release CLI (links libtorch_cuda)
#   BUNDLE/bin/xtask              release xtask (bench train / bench losses with --bin-dir)
#   BUNDLE/bin/matmul_ceiling     perplex-losses example: the matmul ceiling of bench train
#   BUNDLE/bin/loss_bench         perplex-losses example: one configuration of bench losses
#   BUNDLE/tests/*                test executables (`cargo test --release --no-run`) that hold at
#                                 least one test whose name contains `cuda`
#   BUNDLE/reference/pytorch_gru_lm.py, BUNDLE/data/tinyshakespeare/input.txt
#                                 ../shared does not travel to the GPU machine
#
# Usage: scripts/gpu-bundle.sh [BUNDLE]   (default target/gpu-bundle; `target/` is git-ignored, so
# name it in the device tool's `carry`: ["target/gpu-bundle"]). Binaries are stripped: the whole
# working tree that travels must stay under 64 MiB.
#
# Needs LIBTORCH (and LD_LIBRARY_PATH) set as `cargo xtask setup` prints; honours CARGO_TARGET_DIR.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bundle="${1:-target/gpu-bundle}"
target="${CARGO_TARGET_DIR:-$root/target}"
shared="${PERPLEX_SHARED:-$root/../shared}"

if [ -z "${LIBTORCH:-}" ]; then
  echo "gpu-bundle: LIBTORCH is not set (run: cargo xtask setup, and export what it prints)" >&2
  exit 1
fi

cargo build --release -p perplex-cli -p xtask
cargo build --release -p perplex-losses --example matmul_ceiling --example loss_bench
# Test executables: cargo prints one JSON message per artifact; keep those with an executable.
mapfile -t tests < <(cargo test --release --workspace --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        print(m["executable"])
')

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/tests" "$bundle/reference" "$bundle/data/tinyshakespeare"
cp "$target/release/perplex" "$target/release/xtask" "$bundle/bin/"
cp "$target/release/examples/matmul_ceiling" "$target/release/examples/loss_bench" "$bundle/bin/"
n=0
for t in "${tests[@]}"; do
  # Only executables with CUDA-tagged tests travel (the rest run in CI, on CPU).
  # (grep reads the whole list: with -q it could stop early and the SIGPIPE fail the pipeline)
  if LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-$LIBTORCH/lib}" "$t" --list --format terse 2>/dev/null |
    grep -i 'cuda.*: test$' >/dev/null; then
    cp "$t" "$bundle/tests/"
    n=$((n + 1))
  fi
done
strip --strip-unneeded "$bundle"/bin/* "$bundle"/tests/* 2>/dev/null || true
cp "$shared/reference/pytorch_gru_lm.py" "$bundle/reference/"
cp "$shared/data/tinyshakespeare/input.txt" "$bundle/data/tinyshakespeare/"
echo "gpu-bundle: $bundle ($(du -sh "$bundle" | cut -f1)), $n test executable(s) with CUDA tests"
