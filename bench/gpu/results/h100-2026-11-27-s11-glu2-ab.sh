#!/usr/bin/env bash
# Session 11 call D (carry .gpu-carry/s11d: gpu_kernels, gpu_conformance and the bench with the
# folded gate/up GEMV at 2 rows of gate and 2 of up a block, QLORA_GLU_ROWS=2): the two test
# binaries with it (gpu_kernels' fold test then checks its bits against the scale phase's),
# then NF4 b1 decode at 4 / 2 rows, same binary, alternating, three rounds on Mistral-7B, two
# on TinyLlama.
source "$(dirname "$0")/../call-lib.sh"
D=.gpu-carry/s11d
unpack $D/*.xz
GPU_TESTS_TAG=r2 gpu_tests $D QLORA_GLU_ROWS=2 -- gpu_kernels gpu_conformance
for r in 1 2 3; do
  bench rows4 $D/qlora-gpu-bench mistral7b QLORA_GLU_ROWS=4
  bench rows2 $D/qlora-gpu-bench mistral7b QLORA_GLU_ROWS=2
done
for r in 1 2; do
  bench rows4 $D/qlora-gpu-bench tinyllama QLORA_GLU_ROWS=4
  bench rows2 $D/qlora-gpu-bench tinyllama QLORA_GLU_ROWS=2
done
