#!/usr/bin/env bash
# Session 10 call L (carry .gpu-carry/s10c: every GPU test binary and the bench with the spare
# cache (a dropped cache's buffers and decode graphs handed to the model's next cache);
# .gpu-carry/s10b: the bench before it): every GPU test binary, then NF4 b1 decode s10b / s10c
# alternating, three rounds on TinyLlama, one on Mistral-7B.
source "$(dirname "$0")/../call-lib.sh"
D=.gpu-carry/s10c
unpack $D/*.xz .gpu-carry/s10b/qlora-gpu-bench.xz
for t in gpu_kernels gpu_conformance gpu_prefill gpu_train gpu_train_optim gpu_train_offload; do
  $D/$t --test-threads=1 > $OUT/$t.log 2>&1
  echo "$t rc=$? $(grep -E '^test result' $OUT/$t.log)"
  grep -E "panicked|FAILED" $OUT/$t.log | head -8
done
for r in 1 2 3; do
  bench before .gpu-carry/s10b/qlora-gpu-bench tinyllama QLORA_FOLD_NORM=0
  bench spare $D/qlora-gpu-bench tinyllama QLORA_FOLD_NORM=0
done
bench before .gpu-carry/s10b/qlora-gpu-bench mistral7b QLORA_FOLD_NORM=0
bench spare $D/qlora-gpu-bench mistral7b QLORA_FOLD_NORM=0
grep -h generation_parts $OUT/ab-before.jsonl $OUT/ab-spare.jsonl | python3 -c "
import json, sys
for l in sys.stdin:
    d = json.loads(l); print(d['model'], {k: round(v, 2) for k, v in d['value'].items()})"
