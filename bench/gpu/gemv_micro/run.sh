#!/usr/bin/env bash
# The NF4 GEMV micro-benchmark (gemv_micro.cu).
#   bash bench/gpu/gemv_micro/run.sh build [REV]   here: nvcc (../shared/gpu/cuda-env.sh) builds it
#       from this tree, or with REV's kernels/nf4.cu (reg only), into .gpu-carry/gemv_micro/
#       GM_DEFS="-DQLORA_GEMV_WMAX=2" GM_NAME=gm-w2: a variant built with those defines (kernels/nf4.cu switches)
#   bash bench/gpu/gemv_micro/run.sh build-pc       the warp-stall profile (pcsample.cuh): CUPTI
#       from the PyPI wheel nvidia-cuda-cupti, libcupti carried next to the binary (pc-gm)
#   bash bench/gpu/gemv_micro/run.sh device        on the GPU machine (carry .gpu-carry/gemv_micro):
#       every binary built, TinyLlama and Mistral-7B shapes, into $OUT/gemv_micro.jsonl; the
#       pc-* binaries' profiles into $OUT/pcsample.jsonl
set -euo pipefail
cd "$(dirname "$0")/../../.."
D=.gpu-carry/gemv_micro
case "${1:-}" in
build)
  mkdir -p $D
  source ../shared/gpu/cuda-env.sh > /dev/null
  name=${GM_NAME:-gm}; defs=(${GM_DEFS:-})
  if [ -n "${2:-}" ]; then
    git show "$2:crates/qlora-quant/kernels/nf4.cu" > "$D/nf4-$2.cu"
    name=gm-$2; defs=(-DGM_KERNELS="\"$PWD/$D/nf4-$2.cu\"")
  fi
  nvcc -O3 -std=c++17 -arch=sm_90 "${defs[@]}" -L"$CUDA_HOME/lib" -o "$D/$name" bench/gpu/gemv_micro/gemv_micro.cu
  strip "$D/$name" && xz -f -T2 "$D/$name" && ls -la "$D/$name.xz" ;;
build-pc)
  mkdir -p $D
  source ../shared/gpu/cuda-env.sh > /dev/null
  C=${CUPTI_DIR:-/tmp/cupti}
  if [ ! -f "$C/nvidia/cu13/include/cupti_pcsampling.h" ]; then
    mkdir -p "$C" && (cd "$C" && pip download --no-deps -q nvidia-cuda-cupti==13.5.25 && unzip -q -o nvidia_cuda_cupti-*.whl)
  fi
  name=${GM_NAME:-pc-gm}; defs=(${GM_DEFS:-})
  nvcc -O3 -std=c++17 -arch=sm_90 -DGM_PC "${defs[@]}" -I"$C/nvidia/cu13/include" -L"$CUDA_HOME/lib" -L"$CUDA_HOME/lib/stubs" \
    -L"$C/nvidia/cu13/lib" -o "$D/$name" bench/gpu/gemv_micro/gemv_micro.cu -l:libcupti.so.13 -lcuda
  strip "$D/$name" && xz -f -T2 "$D/$name"
  [ -f "$D/libcupti.so.13.xz" ] || xz -c -T2 "$C/nvidia/cu13/lib/libcupti.so.13" > "$D/libcupti.so.13.xz"
  ls -la $D ;;
device)
  export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  [ -f $D/libcupti.so.13.xz ] && xz -dkf $D/libcupti.so.13.xz
  for f in $D/*.xz; do
    case "$(basename "$f")" in libcupti*) continue ;; esac
    xz -dkf "$f"; b=${f%.xz}; chmod +x "$b"
    case "$(basename "$b")" in pc-*)
      for m in tinyllama mistral7b; do
        GM_PCSAMPLE=1 GM_TAG="-$(basename "$b")" LD_LIBRARY_PATH=$PWD/$D:$LD_LIBRARY_PATH "$b" $m >> "$OUT/pcsample.jsonl" 2>> "$OUT/pcsample.log" || echo "pc sampling failed: $b $m (pcsample.log)"
      done
      continue ;;
    esac
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
