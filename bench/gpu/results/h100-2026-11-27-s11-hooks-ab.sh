#!/usr/bin/env bash
# Session 11 call C (carry .gpu-carry/s11c: gpu_kernels, gpu_conformance and the bench with the
# folded norm's reduction inside the GEMV core's barrier (FoldHook) and the projection's early
# residual / weight copies (SumSqHook); .gpu-carry/s11b: call B's bench): the two test
# binaries, then NF4 b1 decode with call B's bench (attention at 4 in flight, its new default
# here) / this one without the early copies (QLORA_SUMSQ_EARLY=0) / this one, alternating, two
# rounds on each model.
source "$(dirname "$0")/../call-lib.sh"
D=.gpu-carry/s11c
unpack $D/*.xz .gpu-carry/s11b/qlora-gpu-bench.xz
gpu_tests $D -- gpu_kernels gpu_conformance
for m in tinyllama mistral7b; do
  for r in 1 2; do
    bench callB .gpu-carry/s11b/qlora-gpu-bench $m QLORA_ATT_INFLIGHT=4
    bench fold $D/qlora-gpu-bench $m QLORA_SUMSQ_EARLY=0
    bench early $D/qlora-gpu-bench $m
  done
done
