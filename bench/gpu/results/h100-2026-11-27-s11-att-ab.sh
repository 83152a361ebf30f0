#!/usr/bin/env bash
# Session 11 call B (carry .gpu-carry/s11b: gpu_kernels, gpu_conformance and the bench with the
# decode attention's positions in flight, `decode_attn_pw*`; .gpu-carry/kprof): the two test
# binaries (gpu_conformance also with 8 positions in flight), then NF4 b1 decode with the folded
# norm (now the default) and QLORA_ATT_INFLIGHT 2 / 4 / 8, same binary, alternating, two rounds
# on each model; then one kernel timeline of Mistral-7B with 8.
source "$(dirname "$0")/../call-lib.sh"
D=.gpu-carry/s11b
unpack $D/*.xz
gpu_tests $D -- gpu_kernels gpu_conformance
GPU_TESTS_TAG=att8 gpu_tests $D QLORA_ATT_INFLIGHT=8 -- gpu_conformance
for m in tinyllama mistral7b; do
  for r in 1 2; do
    for p in 2 4 8; do bench att$p $D/qlora-gpu-bench $m QLORA_ATT_INFLIGHT=$p; done
  done
done
kprof att8 $D/qlora-gpu-bench mistral7b QLORA_ATT_INFLIGHT=8
