#!/usr/bin/env bash
# Session 6, call A: GPU tests (the _pf GEMVs, the vector-tail fused norm and its into form),
# then the NF4 b1 decode step of TinyLlama, configurations alternating in the same call.
set -uo pipefail
F=.gpu-carry/s6a
for f in $F/*.xz; do xz -dkf "$f"; done; chmod +x $F/* 2>/dev/null
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date +%T
for t in gpu_kernels gpu_prefill gpu_conformance; do
  timeout 200 $F/$t --test-threads=1 > $OUT/test-$t.log 2>&1; echo "$t rc=$? $(grep -E '^test result' $OUT/test-$t.log)"
done
QLORA_FUSED_NORM=1 timeout 200 $F/gpu_conformance --test-threads=1 > $OUT/test-gpu_conformance-fused-norm.log 2>&1; echo "gpu_conformance QLORA_FUSED_NORM=1 rc=$? $(grep -E '^test result' $OUT/test-gpu_conformance-fused-norm.log)"
grep -hE "FAILED|panicked" $OUT/test-*.log | head -20; date +%T
run() { local name=$1; shift
  env "$@" $F/qlora-gpu-bench --config bench/gpu/configs/tinyllama --name "tinyllama-$name" --batches 1 --quants nf4 --out $OUT/ab.jsonl --workdir /tmp > /dev/null 2>>$OUT/err.txt
  rm -rf /tmp/ours_tinyllama*; }
for r in 1 2; do
  run base QLORA_GEMV_BULK_PREFETCH_KMAX=0; run pf; run pf-fn QLORA_FUSED_NORM=1; run fn QLORA_GEMV_BULK_PREFETCH_KMAX=0 QLORA_FUSED_NORM=1
done
date +%T
python3 - <<'P'
import json, os
for l in open(os.environ['OUT'] + '/ab.jsonl'):
    d = json.loads(l)
    if d.get('metric') in ('decode_step_us', 'decode_tok_s', 'bandwidth_fraction') and d.get('batch') == 1: print(d['model'], d['metric'], round(d['value'], 4))
P
tail -3 $OUT/err.txt
