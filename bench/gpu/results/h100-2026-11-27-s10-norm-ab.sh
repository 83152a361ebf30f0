#!/usr/bin/env bash
# Session 10 call I (carry .gpu-carry/s10): with the lane-scale GEMVs, the add + RMSNorm between
# layers three ways, NF4 b1, alternating, two rounds, both shapes: in the last block of o_proj's
# and down_proj's GEMV (the default), as a launch of its own (QLORA_FUSED_NORM=0), and folded
# into the GEMVs around it (QLORA_FOLD_NORM=1; its kernels keep the scale phase).
source "$(dirname "$0")/../call-lib.sh"
D=.gpu-carry/s10
unpack $D/qlora-gpu-bench.xz
for m in mistral7b tinyllama; do
  for r in 1 2; do
    bench tail $D/qlora-gpu-bench $m QLORA_FOLD_NORM=0
    bench sep $D/qlora-gpu-bench $m QLORA_FOLD_NORM=0 QLORA_FUSED_NORM=0
    bench fold $D/qlora-gpu-bench $m QLORA_FOLD_NORM=1
  done
done
