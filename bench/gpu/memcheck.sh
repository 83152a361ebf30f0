#!/usr/bin/env bash
# The planner vs measured peak GPU memory (issue #4's GPU item): for the four target models'
# shapes (tests/fixtures/hub-configs/), real `qlora generate` runs on the GPU (load + one token
# in bf16 / int8 / NF4-dq, and a 2048-token context in bf16 / NF4-dq), each next to what the
# planner predicts for it. Prints JSON lines and a markdown table.
#
# Build (here, no GPU needed):  source ../shared/gpu/cuda-env.sh
#   CARGO_TARGET_DIR=target/cuda cargo build --release --features cuda --bin qlora --bin qlora-gpu-memcheck
# Run (GPU machine, repository root):  bash bench/gpu/memcheck.sh [--only NAME] [--context N]
# Knobs: BIN_DIR (the two binaries, .xz accepted; default .gpu-carry/mc, else target/cuda/release),
#        OUT_DIR (results).
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN_DIR=${BIN_DIR:-.gpu-carry/mc}
[ -e "$BIN_DIR/qlora" ] || [ -e "$BIN_DIR/qlora.xz" ] || BIN_DIR=target/cuda/release
for b in qlora qlora-gpu-memcheck; do
  if [ ! -f "$BIN_DIR/$b" ] && [ -f "$BIN_DIR/$b.xz" ]; then xz -dk "$BIN_DIR/$b.xz"; fi
  chmod +x "$BIN_DIR/$b"
done
OUT_DIR=${OUT_DIR:-${OUT:-/tmp/gpu-bench}}
mkdir -p "$OUT_DIR"
libs=$(dirname "$(find /opt/torch/.venv -name 'libcublas.so.13' 2>/dev/null | head -1)" 2>/dev/null)
[ -n "$libs" ] && export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ldd "$BIN_DIR/qlora" | grep -q "not found"; then ldd "$BIN_DIR/qlora" | grep "not found"; echo "memcheck.sh: missing CUDA libraries" >&2; exit 1; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
"$BIN_DIR/qlora-gpu-memcheck" --qlora "$BIN_DIR/qlora" --workdir /tmp/memcheck --out "$OUT_DIR/memcheck.jsonl" "$@" \
  | tee "$OUT_DIR/memcheck.txt"
