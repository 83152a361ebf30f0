#!/bin/bash
# D2's one GPU call: GEMV core variants (built with nvcc -D switches), tests, decode A/B.
cd "$(dirname "$0")/../.."
D=.gpu-carry/d2; L=$OUT/log; t0=$(date +%s)
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:$LD_LIBRARY_PATH
for f in $D/*.xz; do xz -d -T4 "$f" & done; wait; chmod +x $D/*
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $L
el() { echo $(( $(date +%s) - t0 )); }
timeout 80 $D/gpu_kernels --test-threads=1 > $OUT/tests.log 2>&1; echo "gpu_kernels rc=$? $(grep 'test result' $OUT/tests.log | tail -1) t=$(el)" | tee -a $L
grep -E "^test .*(FAILED|ok)$|panicked" $OUT/tests.log | tail -20 >> $L
timeout 45 $D/gpu_conformance --test-threads=1 > $OUT/conf.log 2>&1; echo "gpu_conformance rc=$? $(grep 'test result' $OUT/conf.log | tail -1) t=$(el)" | tee -a $L
cat $OUT/conf.log >> $OUT/tests.log; rm -f $OUT/conf.log
bench() { # tag model limit args...
  local tag=$1 m=$2 lim=$3; shift 3
  if [ $(el) -gt $((262 - lim)) ]; then echo "skip $tag $m t=$(el)" | tee -a $L; return; fi
  timeout $lim $D/bench-$tag --config bench/gpu/configs/$m --name $m-$tag --out $OUT/ours.jsonl --workdir /tmp "$@" > /dev/null 2> $OUT/err.txt
  echo "$tag $m rc=$? t=$(el) $(tail -2 $OUT/err.txt | tr '\n' ' ' | cut -c1-300)" | tee -a $L
  rm -rf /tmp/ours_$m-$tag
}
bench w1p0 tinyllama 25 --batches 1,8 --quants nf4
bench w4p1 tinyllama 25 --batches 1,8 --quants nf4
bench w1p0 mistral7b 60 --batches 1,8 --quants nf4 --profile
bench w4p1 mistral7b 60 --batches 1,8 --quants nf4 --profile
bench w4p0 tinyllama 20 --batches 1 --quants nf4
bench w4p0 mistral7b 45 --batches 1 --quants nf4
bench w1p1 tinyllama 20 --batches 1 --quants nf4
bench w1p1 mistral7b 45 --batches 1 --quants nf4
python3 - $OUT/ours.jsonl <<'PY' | tee -a $L
import json,sys
for l in open(sys.argv[1]):
    d=json.loads(l); m=d.get('metric')
    if m in ('decode_tok_s','decode_step_us') or m=='gemv_gbps' or (m=='profile_us' and 'gemv' in d.get('part','')):
        print(d.get('model'), m, d.get('batch',''), d.get('part',''), round(d['value'],1), d.get('quant',''))
PY

# The binaries (.gpu-carry/d2/bench-<tag>) were built from one tree with NVCC set to a wrapper adding:
#   w1p0: -DQLORA_GEMV_WMAX=1 -DQLORA_GEMV_BULK_PREFETCH=0 (the session-4 core)
#   w4p0: -DQLORA_GEMV_BULK_PREFETCH=0 (the wide core alone: the default committed)
#   w1p1: -DQLORA_GEMV_WMAX=1 -DQLORA_GEMV_BULK_PREFETCH=1
#   w4p1: -DQLORA_GEMV_BULK_PREFETCH=1 (the build gpu_kernels / gpu_conformance came from)
