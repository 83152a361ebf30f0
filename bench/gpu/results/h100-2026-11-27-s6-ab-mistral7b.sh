#!/usr/bin/env bash
# Session 6, call B: the NF4 b1 decode step of Mistral-7B, configurations alternating in the
# same call, then the GEMV micro-benchmark (bench/gpu/gemv_micro).
set -uo pipefail
F=.gpu-carry/s6b
for f in $F/*.xz; do xz -dkf "$f"; done; chmod +x $F/* 2>/dev/null
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date +%T
for t in gpu_train gpu_train_optim gpu_train_offload; do
  timeout 150 $F/$t --test-threads=1 > $OUT/test-$t.log 2>&1; echo "$t rc=$? $(grep -E '^test result' $OUT/test-$t.log)"
done
grep -hE "FAILED|panicked" $OUT/test-*.log | head -20; date +%T
run() { local name=$1; shift
  env "$@" $F/qlora-gpu-bench --config bench/gpu/configs/mistral7b --name "mistral7b-$name" --batches 1 --quants nf4 --out $OUT/ab.jsonl --workdir /tmp > /dev/null 2>>$OUT/err.txt
  rm -rf /tmp/ours_mistral7b*; }
for r in 1 2; do run base; run fn QLORA_FUSED_NORM=1; done
date +%T
python3 - <<'P'
import json, os
for l in open(os.environ['OUT'] + '/ab.jsonl'):
    d = json.loads(l)
    if d.get('metric') in ('decode_step_us',) and d.get('batch') == 1: print(d['model'], d['metric'], round(d['value'], 2))
P
bash bench/gpu/gemv_micro/run.sh device > $OUT/micro.txt 2>&1; tail -60 $OUT/micro.txt
tail -3 $OUT/err.txt; date +%T
