#!/usr/bin/env bash
# Session 9's last call: every GPU test binary built from the final commit (carry
# .gpu-carry/tests9), --test-threads=1.
set -uo pipefail
cd "$(dirname "$0")/../../.."
F=.gpu-carry/tests9
for f in $F/*.xz; do xz -dkf "$f"; done; chmod +x $F/* 2>/dev/null
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date +%T
for t in gpu_kernels gpu_prefill gpu_conformance gpu_train gpu_train_optim gpu_train_offload; do
  timeout 150 $F/$t --test-threads=1 > $OUT/test-$t.log 2>&1; echo "$t rc=$? $(grep -E '^test result' $OUT/test-$t.log)"
done
cat $OUT/test-*.log > $OUT/tests.log; rm -f $OUT/test-*.log
grep -hE "FAILED|panicked" $OUT/tests.log | head -20; date +%T
