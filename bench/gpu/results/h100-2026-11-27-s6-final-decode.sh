#!/usr/bin/env bash
# Session 6's final inference call: the GPU tests, then ours vs the reference side by side
# (bench/gpu/run.sh), then the GEMV micro-benchmark (bench/gpu/gemv_micro).
# Carry: .gpu-carry/final6 (the binaries built from this commit), .gpu-carry/peer, .gpu-carry/gemv_micro.
set -uo pipefail
cd "$(dirname "$0")/../../.."
F=.gpu-carry/final6
for f in $F/*.xz; do xz -dkf "$f"; done; chmod +x $F/* 2>/dev/null
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date +%T
for t in gpu_kernels gpu_prefill gpu_conformance gpu_train gpu_train_optim gpu_train_offload; do
  [ -f $F/$t ] || { echo "no $t"; continue; }
  timeout 150 $F/$t --test-threads=1 > $OUT/test-$t.log 2>&1; echo "$t rc=$? $(grep -E '^test result' $OUT/test-$t.log)"
done
cat $OUT/test-*.log > $OUT/tests.log; rm -f $OUT/test-*.log
grep -hE "FAILED|panicked" $OUT/tests.log | head -20; date +%T
mkdir -p $OUT/inf
BIN=$F/qlora-gpu-bench PEER_DIR=.gpu-carry/peer OUT_DIR=$OUT/inf bash bench/gpu/run.sh
cat $OUT/inf/ours-*.err > $OUT/inf/ours.err 2>/dev/null; rm -f $OUT/inf/ours-*.err
date +%T
timeout 60 bash bench/gpu/gemv_micro/run.sh device > $OUT/micro.txt 2>&1; tail -40 $OUT/micro.txt
ls $OUT $OUT/inf; date +%T
