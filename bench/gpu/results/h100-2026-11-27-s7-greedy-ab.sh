#!/usr/bin/env bash
# Session 7 call A: the new GPU tests, then NF4 b1 decode with the pipelined greedy path (default)
# against QLORA_PIPELINE=0 (the per-step read-back loop), alternating, same binary.
cd "$(dirname "$0")/../.."
D=.gpu-carry/s7
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib
for f in $D/*.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
$D/gpu_kernels --test-threads=1 2>&1 | tail -4
$D/gpu_conformance --test-threads=1 > $OUT/conformance.log 2>&1; echo "conformance rc=$?"; grep -E "^test |test result|panicked" $OUT/conformance.log | tail -30
for m in ${MODELS:-tinyllama mistral7b}; do
  for p in 1 0 1 0 1 0; do
    QLORA_PIPELINE=$p $D/qlora-gpu-bench --config bench/gpu/configs/$m --name $m --out $OUT/ab.jsonl --workdir /tmp --batches 1 --quants nf4 2>/dev/null \
      | python3 -c "
import json,sys
for l in sys.stdin:
    d=json.loads(l)
    if d['metric'] in ('decode_tok_s',): print('$m pipeline=$p', d['metric'], round(d['value'],1), [round(x*1e3,2) for x in d['runs_s']])"
    rm -rf /tmp/ours_$m
    [ $m = mistral7b ] && [ $p = 0 ] && break
  done
done
