#!/usr/bin/env bash
# Session 10 call J (carry .gpu-carry/s10: lane scales; .gpu-carry/s10b: the same with the
# add + norm GEMV at two steps in flight for grids that fit the GPU at 5 blocks an SM, i.e.
# TinyLlama's down_proj): the GPU tests of s10b, then NF4 b1 decode s10 / s10b alternating,
# three rounds on TinyLlama, one on Mistral-7B (where nothing changes: its grids do not fit).
source "$(dirname "$0")/../call-lib.sh"
unpack .gpu-carry/s10/qlora-gpu-bench.xz .gpu-carry/s10b/*.xz
D=.gpu-carry/s10b
for t in gpu_kernels gpu_conformance; do
  $D/$t --test-threads=1 > $OUT/$t.log 2>&1
  echo "$t rc=$? $(grep -E '^test result' $OUT/$t.log)"
  grep -E "panicked|FAILED" $OUT/$t.log | head -8
done
for r in 1 2 3; do
  bench ls .gpu-carry/s10/qlora-gpu-bench tinyllama QLORA_FOLD_NORM=0
  bench ls2 $D/qlora-gpu-bench tinyllama QLORA_FOLD_NORM=0
done
bench ls .gpu-carry/s10/qlora-gpu-bench mistral7b QLORA_FOLD_NORM=0
bench ls2 $D/qlora-gpu-bench mistral7b QLORA_FOLD_NORM=0
