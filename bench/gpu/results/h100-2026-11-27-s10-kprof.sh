#!/usr/bin/env bash
# Session 10 call H (carry .gpu-carry/s10, .gpu-carry/kprof): where a step's time goes with the
# lane-scale GEMVs (kprof, NF4 b1, both shapes), then TinyLlama's decode attention at 8 and 4
# warps a block (QLORA_ATT_WARPS; default 16) against the default, alternating.
source "$(dirname "$0")/../call-lib.sh"
D=.gpu-carry/s10
unpack $D/qlora-gpu-bench.xz
kprof ls-tinyllama $D/qlora-gpu-bench tinyllama QLORA_FOLD_NORM=0
kprof ls-mistral7b $D/qlora-gpu-bench mistral7b QLORA_FOLD_NORM=0
for r in 1 2; do
  bench att16 $D/qlora-gpu-bench tinyllama QLORA_FOLD_NORM=0
  bench att8 $D/qlora-gpu-bench tinyllama QLORA_FOLD_NORM=0 QLORA_ATT_WARPS=8
  bench att4 $D/qlora-gpu-bench tinyllama QLORA_FOLD_NORM=0 QLORA_ATT_WARPS=4
done
