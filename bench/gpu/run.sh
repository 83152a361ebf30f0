#!/usr/bin/env bash
# Ours vs the reference stack (transformers + peft + bitsandbytes, ../shared/gpu/peer/peer_bench.py)
# on one NVIDIA GPU, in the same run: decode tok/s (batch 1 and 8, NF4 and bf16), prefill 512
# tok/s, memory after load, for the TinyLlama-1.1B and Mistral-7B shapes (random weights from
# the real configs in bench/gpu/configs/). Prints a side-by-side table with ratios.
#
# Build (here, no GPU needed):  source ../shared/gpu/cuda-env.sh
#   CARGO_TARGET_DIR=target/cuda cargo build --release --features cuda --bin qlora-gpu-bench
# Run (GPU machine, repository root):  bash bench/gpu/run.sh
# Knobs: BIN (the qlora-gpu-bench binary, .xz accepted), PEER_DIR (peer_bench.py + the bnb wheel),
#        OUT_DIR (results), MODELS (default tinyllama,mistral7b), RUN_PEER=0 to skip the reference,
#        OURS_ARGS (extra qlora-gpu-bench arguments, e.g. --profile for the decode-step breakdown).
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.gpu-carry/qlora-gpu-bench}
if [ ! -f "$BIN" ] && [ -f "$BIN.xz" ]; then xz -dk "$BIN.xz"; fi
[ -f "$BIN" ] || BIN=target/cuda/release/qlora-gpu-bench
chmod +x "$BIN" 2>/dev/null || true
if [ -z "${PEER_DIR:-}" ]; then
  PEER_DIR=.gpu-carry/peer; [ -f ../shared/gpu/peer/peer_bench.py ] && PEER_DIR=../shared/gpu/peer
fi
OUT_DIR=${OUT_DIR:-${OUT:-/tmp/gpu-bench}}
MODELS=${MODELS:-tinyllama,mistral7b}
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR/peer.jsonl" "$OUT_DIR/ours.jsonl"
libs=$(dirname "$(find /opt/torch/.venv -name 'libcublas.so.13' 2>/dev/null | head -1)" 2>/dev/null)
[ -n "$libs" ] && export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ldd "$BIN" | grep -q "not found"; then ldd "$BIN" | grep "not found"; echo "run.sh: missing CUDA libraries" >&2; exit 1; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
export PYTHONUNBUFFERED=1
if [ "${RUN_PEER:-1}" != 0 ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$PEER_DIR"/bitsandbytes-*.whl
  PYTHONPATH=/tmp/site python3 "$PEER_DIR/peer_bench.py" --configs bench/gpu/configs --models "$MODELS" \
    --out "$OUT_DIR/peer.jsonl" > "$OUT_DIR/peer.log" 2>&1 || echo "peer_bench failed (see peer.log)"
  tail -3 "$OUT_DIR/peer.log"
fi
for m in ${MODELS//,/ }; do
  "$BIN" --config "bench/gpu/configs/$m" --name "$m" --out "$OUT_DIR/ours.jsonl" --workdir /tmp ${OURS_ARGS:-} \
    2> "$OUT_DIR/ours-$m.err" || { echo "ours failed on $m:"; tail -20 "$OUT_DIR/ours-$m.err"; }
  rm -rf "/tmp/ours_$m"
done
python3 bench/gpu/table.py "$OUT_DIR/peer.jsonl" "$OUT_DIR/ours.jsonl" "$OUT_DIR/gpu.txt" | tee "$OUT_DIR/table.md"
