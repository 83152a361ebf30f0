#!/usr/bin/env bash
# Session 11 call E (carry .gpu-carry/s11e: every GPU test binary and the bench at the final
# code): every GPU test binary, then NF4 b1 decode with the decode attention at 2 / 4 rows in
# flight (QLORA_ATT_INFLIGHT), alternating, two rounds on each model.
source "$(dirname "$0")/../call-lib.sh"
D=.gpu-carry/s11e
unpack $D/*.xz
gpu_tests $D -- gpu_kernels gpu_conformance gpu_prefill gpu_train gpu_train_optim gpu_train_offload
for m in mistral7b tinyllama; do
  for r in 1 2; do
    for p in 2 4; do bench att$p $D/qlora-gpu-bench $m QLORA_ATT_INFLIGHT=$p; done
  done
done
