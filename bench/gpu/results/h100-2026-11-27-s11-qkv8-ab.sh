#!/usr/bin/env bash
# Session 11 call F (carry .gpu-carry/s11f: gpu_kernels, gpu_conformance and the bench with the
# folded q/k/v GEMV at 8 rows a block by default, QLORA_QKV_ROWS): the two test binaries, then
# NF4 b1 decode at 4 / 8 rows, same binary, alternating, three rounds on Mistral-7B, two on
# TinyLlama.
source "$(dirname "$0")/../call-lib.sh"
D=.gpu-carry/s11f
unpack $D/*.xz
gpu_tests $D -- gpu_kernels gpu_conformance
for r in 1 2 3; do
  bench rows4 $D/qlora-gpu-bench mistral7b QLORA_QKV_ROWS=4
  bench rows8 $D/qlora-gpu-bench mistral7b QLORA_QKV_ROWS=8
done
for r in 1 2; do
  bench rows4 $D/qlora-gpu-bench tinyllama QLORA_QKV_ROWS=4
  bench rows8 $D/qlora-gpu-bench tinyllama QLORA_QKV_ROWS=8
done
