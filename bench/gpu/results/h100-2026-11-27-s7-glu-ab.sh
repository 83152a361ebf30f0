#!/usr/bin/env bash
# Session 7 call C (carry .gpu-carry/s7b: bench-head built from fbce8c4, bench-new and the tests from the GLU commit): the GPU tests with the GLU's clamped loads, then NF4 b1 decode (pipelined
# greedy) with the previous commit's binary (bench-head) and this one's (bench-new), alternating.
cd "$(dirname "$0")/../.."
D=.gpu-carry/s7b
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib
for f in $D/*.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in gpu_kernels gpu_conformance; do $D/$t --test-threads=1 > $OUT/$t.log 2>&1; echo "$t rc=$? $(grep -E '^test result' $OUT/$t.log)"; grep -E "panicked|FAILED" $OUT/$t.log | head -5; done
for m in tinyllama mistral7b; do
  for b in head new head new; do
    $D/bench-$b --config bench/gpu/configs/$m --name $m --out $OUT/ab.jsonl --workdir /tmp --batches 1 --quants nf4 2>/dev/null \
      | python3 -c "
import json,sys
for l in sys.stdin:
    d=json.loads(l)
    if d['metric']=='decode_tok_s': print('$m $b', round(d['value'],1), [round(x*1e3,2) for x in d['runs_s']])"
    rm -rf /tmp/ours_$m
  done
done
