#!/usr/bin/env bash
# QLoRA training, ours vs the reference stack (transformers + peft + bitsandbytes,
# ../shared/gpu/peer/peer_bench.py, its decode runs skipped), in the same run on one NVIDIA GPU:
# tokens/s and peak memory for the TinyLlama-1.1B and Mistral-7B shapes (r 16 on all seven
# projections, micro-batch 4 x 512, gradient checkpointing, AdamW), then ours alone on the
# Phi-2 and Gemma-2B shapes for the planner check (tests/fixtures/hub-configs/). Prints a
# side-by-side table with ratios and, per shape, the planner's prediction vs the measured peak.
#
# Build (here, no GPU needed):  source ../shared/gpu/cuda-env.sh
#   CARGO_TARGET_DIR=target/cuda cargo build --release --features cuda --bin qlora-gpu-train-bench --bin qlora
# Run (GPU machine, repository root):  bash bench/gpu/run_train.sh
# Knobs: BIN / QLORA (binaries, .xz accepted), PEER_DIR (peer_bench.py + the bnb wheel),
#        OUT_DIR (results), MODELS (default tinyllama,mistral7b), PLANNER_MODELS (default
#        phi2,gemma2b; empty to skip), RUN_PEER=0 to skip the reference, PROFILE=1 for a
#        per-phase time breakdown of one step.
set -uo pipefail
cd "$(dirname "$0")/../.."
unxz() { [ -f "$1" ] || { [ -f "$1.xz" ] && xz -dk "$1.xz"; }; }
BIN=${BIN:-.gpu-carry-c/qlora-gpu-train-bench}; unxz "$BIN"; [ -f "$BIN" ] || BIN=target/cuda/release/qlora-gpu-train-bench
QLORA=${QLORA:-.gpu-carry-c/qlora}; unxz "$QLORA"; [ -f "$QLORA" ] || QLORA=target/cuda/release/qlora
if [ -z "${PEER_DIR:-}" ]; then
  PEER_DIR=.gpu-carry-c/peer; [ -f ../shared/gpu/peer/peer_bench.py ] && PEER_DIR=../shared/gpu/peer
fi
OUT_DIR=${OUT_DIR:-${OUT:-/tmp/gpu-train-bench}}
MODELS=${MODELS:-tinyllama,mistral7b}
PLANNER_MODELS=${PLANNER_MODELS-phi2,gemma2b}
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR/peer.jsonl" "$OUT_DIR/ours.jsonl" "$OUT_DIR/plan.jsonl"
libs=$(dirname "$(find /opt/torch/.venv -name 'libcublas.so.13' 2>/dev/null | head -1)" 2>/dev/null)
[ -n "$libs" ] && export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ldd "$BIN" | grep -q "not found"; then ldd "$BIN" | grep "not found"; echo "run_train.sh: missing CUDA libraries" >&2; exit 1; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
config_dir() {
  case $1 in
    tinyllama|mistral7b) echo "bench/gpu/configs/$1" ;;
    phi2) echo tests/fixtures/hub-configs/microsoft--phi-2 ;;
    gemma2b) echo tests/fixtures/hub-configs/google--gemma-2b ;;
    *) echo "bench/gpu/configs/$1" ;;
  esac
}
prof=(); [ "${PROFILE:-0}" = 1 ] && prof=(--profile)
for m in ${MODELS//,/ } ${PLANNER_MODELS//,/ }; do
  c=$(config_dir "$m")
  "$BIN" --config "$c" --name "$m" --out "$OUT_DIR/ours.jsonl" --workdir /tmp "${prof[@]}" \
    2> "$OUT_DIR/ours-$m.err" || { echo "ours failed on $m:"; tail -20 "$OUT_DIR/ours-$m.err"; }
  rm -rf "/tmp/ours_train_$m"
  if [ -x "$QLORA" ] || [ -f "$QLORA" ]; then
    chmod +x "$QLORA"
    "$QLORA" plan "$c" --train --seq-len 512 --micro-batch 4 --rank 16 --checkpointing --gpu h100 --json \
      2>>"$OUT_DIR/plan.err" | python3 -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'model': '$m', 'training': d.get('training')}))" \
      >> "$OUT_DIR/plan.jsonl" || echo "plan failed on $m (see plan.err)"
  fi
done
export PYTHONUNBUFFERED=1
if [ "${RUN_PEER:-1}" != 0 ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$PEER_DIR"/bitsandbytes-*.whl
  PYTHONPATH=/tmp/site python3 "$PEER_DIR/peer_bench.py" --configs bench/gpu/configs --models "$MODELS" \
    --batches "" --out "$OUT_DIR/peer.jsonl" > "$OUT_DIR/peer.log" 2>&1 || echo "peer_bench failed (see peer.log)"
  tail -3 "$OUT_DIR/peer.log"
fi
python3 - "$OUT_DIR" <<'PY' | tee "$OUT_DIR/table.md"
import json, os, sys
d = sys.argv[1]
def lines(name):
    p = os.path.join(d, name)
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []
peer = {r["model"]: r for r in lines("peer.jsonl") if r.get("metric") == "qlora_train"}
ours = {r["model"]: r for r in lines("ours.jsonl") if r.get("metric") == "qlora_train"}
plan = {r["model"]: r["training"] for r in lines("plan.jsonl") if r.get("training")}
gpu = open(os.path.join(d, "gpu.txt")).read().strip() if os.path.exists(os.path.join(d, "gpu.txt")) else "?"
print(f"GPU: {gpu}\n")
print("| shape | ref tok/s | ours tok/s | ratio (target >= 2) | ref peak GiB | ours peak GiB | ratio (target <= 0.6 / 0.7) |")
print("|---|---|---|---|---|---|---|")
for m in ours:
    o, p = ours[m], peer.get(m)
    op = o["peak_training_phase"]["max_allocated_GiB"]
    if p:
        pp = p["peak_training_phase"]["max_allocated_GiB"]
        print(f"| {m} | {p['value']:,.0f} | {o['value']:,.0f} | {o['value']/p['value']:.2f} | {pp:.2f} | {op:.2f} | {op/pp:.2f} |")
    else:
        print(f"| {m} | - | {o['value']:,.0f} | - | - | {op:.2f} | - |")
print("\n| shape | planner total GiB | measured peak GiB (context + cuBLAS + pool reserved) | predicted / measured |")
print("|---|---|---|---|")
for m in ours:
    if m in plan:
        pr = plan[m]["total_bytes"] / 2**30
        me = ours[m]["context_and_cublas_GiB"] + ours[m]["peak_training_phase"]["max_reserved_GiB"]
        print(f"| {m} | {pr:.2f} | {me:.2f} | {pr/me:.3f} |")
for r in lines("ours.jsonl"):
    if r.get("metric") == "qlora_train_profile":
        print(f"\nprofile {r['model']} ({r['layers']} layers): " + ", ".join(f"{x['phase']} {x['ms']:.1f} ms (host {x.get('host_ms', float('nan')):.1f})" for x in r["ms"]))
PY
