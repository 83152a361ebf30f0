#!/usr/bin/env bash
# Final inference call: GPU tests, then ours vs the reference side by side (bench/gpu/run.sh).
set -uo pipefail
cd "$(dirname "$0")/../.."
F=.gpu-carry/final
for f in $F/*.xz; do xz -dk "$f"; done; chmod +x $F/* 2>/dev/null
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in gpu_kernels gpu_prefill gpu_conformance; do
  [ -f $F/$t ] || { echo "no $t"; continue; }
  timeout 150 $F/$t --test-threads=1 > $OUT/test-$t.log 2>&1; echo "$t rc=$? $(grep -E '^test result' $OUT/test-$t.log)"
done
cat $OUT/test-*.log > $OUT/tests.log; rm -f $OUT/test-*.log
grep -hE "FAILED|panicked" $OUT/tests.log | head -20
mkdir -p $OUT/inf
BIN=$F/qlora-gpu-bench PEER_DIR=.gpu-carry/peer OUT_DIR=$OUT/inf bash bench/gpu/run.sh
cat $OUT/inf/ours-*.err > $OUT/inf/ours.err 2>/dev/null; rm -f $OUT/inf/ours-*.err
echo "== A/B bulk prefetch rule (TinyLlama NF4 b1) $(date +%T)"
for v in 0 2048 0 2048; do
  QLORA_GEMV_BULK_PREFETCH_KMAX=$v $F/qlora-gpu-bench --config bench/gpu/configs/tinyllama --name tinyllama-kmax$v --batches 1 --quants nf4 --out $OUT/ab.jsonl --workdir /tmp > /dev/null 2>>$OUT/inf/ours.err
  rm -rf /tmp/ours_tinyllama*
done
python3 -c "
import json,os
for l in open(os.environ['OUT']+'/ab.jsonl'):
    d=json.loads(l)
    if 'decode' in d.get('metric','') and d.get('batch',1)==1: print(d['model'], d['metric'], d.get('value'))
"
ls $OUT $OUT/inf; date +%T
