#!/usr/bin/env bash
# Session 10 call G (carry .gpu-carry/s10: the GPU tests and the bench built with the lane-scale
# GEMVs): the GPU tests, then NF4 b1 decode with the lane scales off (QLORA_GEMV_LANE_SCALES=0,
# the kernels of session 9) and on (the default), alternating, three rounds, same binary, on the
# TinyLlama and Mistral-7B shapes.
source "$(dirname "$0")/../call-lib.sh"
D=.gpu-carry/s10
unpack $D/*.xz
for t in gpu_kernels gpu_conformance; do
  $D/$t --test-threads=1 > $OUT/$t.log 2>&1
  echo "$t rc=$? $(grep -E '^test result' $OUT/$t.log)"
  grep -E "panicked|FAILED" $OUT/$t.log | head -8
done
for m in tinyllama mistral7b; do
  for r in 1 2 3; do
    bench off $D/qlora-gpu-bench $m QLORA_FOLD_NORM=0 QLORA_GEMV_LANE_SCALES=0
    bench on $D/qlora-gpu-bench $m QLORA_FOLD_NORM=0
  done
done
