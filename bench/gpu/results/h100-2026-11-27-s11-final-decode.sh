#!/usr/bin/env bash
# Session 11, final inference call: ours vs the reference side by side (bench/gpu/run.sh:
# decode b1/b8 NF4 and bf16, prefill 512, memory after load, and the copy bandwidth for the
# bound). Carry: .gpu-carry/s11e (the bench at the final code; every GPU test binary of that
# build ran in call E, h100-2026-11-27-s11-final-tests.sh), .gpu-carry/peer
# (../shared/gpu/peer's peer_bench.py and bitsandbytes wheel).
set -uo pipefail
cd "$(dirname "$0")/../../.."
F=.gpu-carry/s11e
xz -dkf $F/qlora-gpu-bench.xz; chmod +x $F/qlora-gpu-bench
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date +%T
mkdir -p $OUT/inf
BIN=$F/qlora-gpu-bench PEER_DIR=.gpu-carry/peer OUT_DIR=$OUT/inf bash bench/gpu/run.sh
cat $OUT/inf/ours-*.err > $OUT/inf/ours.err 2>/dev/null; rm -f $OUT/inf/ours-*.err
ls $OUT/inf; date +%T
