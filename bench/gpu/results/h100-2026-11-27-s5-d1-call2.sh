#!/usr/bin/env bash
# Engineer D1, session 5, second call: the GPU tests (their output merged into one file), then
# NF4 b1 decode A/B with the norm prologue off (QLORA_NORM_PROLOGUE=0) as the new baseline.
set -uo pipefail
cd "$(dirname "$0")/../.."
C=.gpu-carry/d1
OUT=${OUT:-/tmp/d1out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
for f in $C/*.xz; do xz -dk -T4 "$f"; done
chmod +x $C/gpu_* $C/qlora-gpu-bench
L="$OUT/log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$L"
T0=$(date +%s)
for t in gpu_kernels:60 gpu_conformance:45 gpu_prefill:20; do
  name=${t%%:*}; lim=${t##*:}
  timeout $lim $C/$name --test-threads=1 > /tmp/$name.txt 2>&1; rc=$?
  echo "== $name rc=$rc t=$(( $(date +%s) - T0 ))s" >> "$OUT/tests.txt"
  cat /tmp/$name.txt >> "$OUT/tests.txt"
  echo "$name rc=$rc $(grep -E '^test result' /tmp/$name.txt) t=$(( $(date +%s) - T0 ))s" | tee -a "$L"
done
WD=/tmp; [ "$(df -k --output=avail /dev/shm 2>/dev/null | tail -1)" -gt 30000000 ] 2>/dev/null && WD=/dev/shm
run() {  # model variant env...
  local m=$1 v=$2; shift 2
  if [ $(( $(date +%s) - T0 )) -gt 180 ]; then echo "$m-$v skipped (time)" | tee -a "$L"; return; fi
  env "$@" timeout 60 $C/qlora-gpu-bench --config bench/gpu/configs/$m --name "$m-$v" --out "$OUT/ours.jsonl" --workdir $WD \
    --batches 1 --quants nf4 2>> "$OUT/err.txt"; echo "$m-$v rc=$? t=$(( $(date +%s) - T0 ))s" | tee -a "$L"
  rm -rf "$WD/ours_$m-$v"
}
OLD=(QLORA_NORM_PROLOGUE=0 QLORA_ATT_HG=4 QLORA_ATT_PREFETCH=0)
run mistral7b base "${OLD[@]}"
run mistral7b att QLORA_NORM_PROLOGUE=0
run mistral7b att-qkv QLORA_NORM_PROLOGUE=qkv
run tinyllama base "${OLD[@]}"
run tinyllama att QLORA_NORM_PROLOGUE=0
run tinyllama att-nopf QLORA_NORM_PROLOGUE=0 QLORA_ATT_PREFETCH=0
run tinyllama att-qkv QLORA_NORM_PROLOGUE=qkv
run tinyllama att-gpf QLORA_NORM_PROLOGUE=0 QLORA_GEMV_PREFETCH=1
run mistral7b att-gpf QLORA_NORM_PROLOGUE=0 QLORA_GEMV_PREFETCH=1
python3 - "$OUT/ours.jsonl" <<'PY' | tee -a "$L"
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    if d["metric"] in ("decode_tok_s", "decode_step_us"):
        print(d["model"], d["metric"], round(d["value"], 1), (d.get("cuda_graphs") or {}).get("kernel_nodes", ""))
PY
