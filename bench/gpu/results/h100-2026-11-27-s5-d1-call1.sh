#!/usr/bin/env bash
# Engineer D1, session 5: GPU tests, then NF4 b1 decode A/B of the decode-structure switches
# (same binary, same machine): QLORA_ATT_HG / QLORA_ATT_PREFETCH (decode attention) and
# QLORA_NORM_PROLOGUE / QLORA_NORMIN_PREFETCH (add + RMSNorm in the GEMV prologue).
set -uo pipefail
cd "$(dirname "$0")/../.."
C=.gpu-carry/d1
OUT=${OUT:-/tmp/d1out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
for f in $C/*.xz; do xz -dk -T4 "$f"; done
chmod +x $C/gpu_* $C/qlora-gpu-bench
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/log"
T0=$(date +%s)
for t in gpu_kernels:60 gpu_conformance:50 gpu_prefill:20; do
  name=${t%%:*}; lim=${t##*:}
  timeout $lim $C/$name --test-threads=1 > "$OUT/$name.txt" 2>&1; rc=$?
  echo "$name rc=$rc $(grep -E '^test result' "$OUT/$name.txt") t=$(( $(date +%s) - T0 ))s" | tee -a "$OUT/log"
  grep -E "FAILED|panicked|failed" "$OUT/$name.txt" | head -20 | tee -a "$OUT/log"
done
# The random checkpoints are written to RAM when /dev/shm has room (Mistral-7B's took 30 s on disk).
WD=/tmp; [ "$(df -k --output=avail /dev/shm 2>/dev/null | tail -1)" -gt 30000000 ] 2>/dev/null && WD=/dev/shm
echo "workdir $WD" | tee -a "$OUT/log"
run() {  # model variant env...
  local m=$1 v=$2; shift 2
  env "$@" timeout 80 $C/qlora-gpu-bench --config bench/gpu/configs/$m --name "$m-$v" --out "$OUT/ours.jsonl" --workdir $WD \
    --batches 1 --quants nf4 2> "$OUT/err-$m-$v.txt"; echo "$m-$v rc=$? t=$(( $(date +%s) - T0 ))s" | tee -a "$OUT/log"
  rm -rf "$WD/ours_$m-$v"
}
OLD=(QLORA_NORM_PROLOGUE=0 QLORA_ATT_HG=4 QLORA_ATT_PREFETCH=0)
run tinyllama base "${OLD[@]}"
run tinyllama new
run tinyllama att QLORA_NORM_PROLOGUE=0
run tinyllama norm QLORA_ATT_HG=4 QLORA_ATT_PREFETCH=0
run tinyllama new-nopf QLORA_NORMIN_PREFETCH=0 QLORA_ATT_PREFETCH=0
run tinyllama new-gpf QLORA_GEMV_PREFETCH=1
run tinyllama new-w8 QLORA_ATT_WARPS=8
run tinyllama new-qkv QLORA_NORM_PROLOGUE=qkv
run mistral7b base "${OLD[@]}"
run mistral7b new
run mistral7b new-gpf QLORA_GEMV_PREFETCH=1
run mistral7b new-qkv QLORA_NORM_PROLOGUE=qkv
python3 - "$OUT/ours.jsonl" <<'PY' | tee -a "$OUT/log"
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    if d["metric"] in ("decode_tok_s", "decode_step_us", "prefill_tok_s"):
        print(d["model"], d["metric"], round(d["value"], 1), d.get("cuda_graphs", ""))
PY
