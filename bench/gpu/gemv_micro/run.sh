#!/usr/bin/env bash
# The NF4 GEMV micro-benchmark (gemv_micro.cu).
#   bash bench/gpu/gemv_micro/run.sh build [REV]   here: nvcc (../shared/gpu/cuda-env.sh) builds it
#       from this tree, or with REV's kernels/nf4.cu (reg only), into .gpu-carry/gemv_micro/
#   bash bench/gpu/gemv_micro/run.sh device        on the GPU machine (carry .gpu-carry/gemv_micro):
#       every binary built, TinyLlama and Mistral-7B shapes, into $OUT/gemv_micro.jsonl
set -euo pipefail
cd "$(dirname "$0")/../../.."
D=.gpu-carry/gemv_micro
case "${1:-}" in
build)
  mkdir -p $D
  source ../shared/gpu/cuda-env.sh > /dev/null
  name=gm; defs=()
  if [ -n "${2:-}" ]; then
    git show "$2:crates/qlora-quant/kernels/nf4.cu" > "$D/nf4-$2.cu"
    name=gm-$2; defs=(-DGM_KERNELS="\"$PWD/$D/nf4-$2.cu\"")
  fi
  nvcc -O3 -std=c++17 -arch=sm_90 "${defs[@]}" -L"$CUDA_HOME/lib" -o "$D/$name" bench/gpu/gemv_micro/gemv_micro.cu
  strip "$D/$name" && xz -f -T2 "$D/$name" && ls -la "$D/$name.xz" ;;
device)
  export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  for f in $D/*.xz; do xz -dkf "$f"; b=${f%.xz}; chmod +x "$b"
    for m in tinyllama mistral7b; do
      GM_TAG="-$(basename "$b")" "$b" $m >> "$OUT/gemv_micro.jsonl"
      GM_PF=1 GM_TAG="-$(basename "$b")-pf" "$b" $m >> "$OUT/gemv_micro.jsonl" 2>/dev/null || true
    done
  done
  python3 - "$OUT/gemv_micro.jsonl" <<'P'
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    if 'us' in d: print(d['model'], d['part'], d['kernel'], d['us'], d['gbps'])
    elif d.get('bad'): print('CHECK FAILED', d)
P
  ;;
*) echo "usage: run.sh build [REV] | device" >&2; exit 2 ;;
esac
