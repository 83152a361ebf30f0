#!/usr/bin/env bash
# Session 6, call C: TinyLlama NF4 b1 step with the fused norm on, the _pf GEMVs up to k = 2048
# (default) or 5632 (down_proj too), alternating in the same call.
set -uo pipefail
F=.gpu-carry/s6a
for f in $F/qlora-gpu-bench.xz; do xz -dkf "$f"; done; chmod +x $F/qlora-gpu-bench
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
run() { local name=$1; shift
  env "$@" $F/qlora-gpu-bench --config bench/gpu/configs/tinyllama --name "tinyllama-$name" --batches 1 --quants nf4 --out $OUT/ab.jsonl --workdir /tmp > /dev/null 2>>$OUT/err.txt
  rm -rf /tmp/ours_tinyllama*; }
for r in 1 2 3; do
  run fn-k2048 QLORA_FUSED_NORM=1; run fn-k5632 QLORA_FUSED_NORM=1 QLORA_GEMV_BULK_PREFETCH_KMAX=5632
  run fn-k2048-hg4 QLORA_FUSED_NORM=1 QLORA_ATT_HG=4
done
python3 - <<'P'
import json, os
for l in open(os.environ['OUT'] + '/ab.jsonl'):
    d = json.loads(l)
    if d.get('metric') == 'decode_step_us' and d.get('batch') == 1: print(d['model'], round(d['value'], 1))
P
tail -3 $OUT/err.txt
