#!/usr/bin/env bash
# Session 11 call A (carry .gpu-carry/s11a: gpu_kernels, gpu_conformance and the bench with the
# folded norm's lane-scale kernels): the two test binaries (gpu_conformance also with the
# folded norm on), then NF4 b1 decode with the folded norm off / on (QLORA_FOLD_NORM), same
# binary, alternating, three rounds on each model.
source "$(dirname "$0")/../call-lib.sh"
D=.gpu-carry/s11a
unpack $D/*.xz
gpu_tests $D -- gpu_kernels gpu_conformance
GPU_TESTS_TAG=fold gpu_tests $D QLORA_FOLD_NORM=1 -- gpu_conformance
for r in 1 2 3; do
  bench tail $D/qlora-gpu-bench tinyllama QLORA_FOLD_NORM=0
  bench fold $D/qlora-gpu-bench tinyllama QLORA_FOLD_NORM=1
done
for r in 1 2 3; do
  bench tail $D/qlora-gpu-bench mistral7b QLORA_FOLD_NORM=0
  bench fold $D/qlora-gpu-bench mistral7b QLORA_FOLD_NORM=1
done
