#!/usr/bin/env bash
# Builds libkprof.so (kprof.cpp) into .gpu-carry/kprof with libcupti from the PyPI wheel
# nvidia-cuda-cupti (fetched into $CUPTI_DIR, default /tmp/cupti). On the GPU machine:
#   LD_LIBRARY_PATH=.gpu-carry/kprof:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=$PWD/.gpu-carry/kprof/libkprof.so \
#     KPROF_OUT=$OUT/k.csv PROGRAM ...
set -euo pipefail
cd "$(dirname "$0")/../../.."
C=${CUPTI_DIR:-/tmp/cupti}
if [ ! -f "$C/nvidia/cu13/include/cupti.h" ]; then
  mkdir -p "$C" && (cd "$C" && pip download --no-deps -q nvidia-cuda-cupti==13.5.25 && unzip -q -o nvidia_cuda_cupti-*.whl)
fi
source ../shared/gpu/cuda-env.sh > /dev/null
D=.gpu-carry/kprof
mkdir -p $D
g++ -O2 -std=c++17 -shared -fPIC -I"$C/nvidia/cu13/include" -I"$CUDA_HOME/include" -o $D/libkprof.so bench/gpu/kprof/kprof.cpp \
  -L"$C/nvidia/cu13/lib" -l:libcupti.so.13 -Wl,-rpath,'$ORIGIN'
cp "$C/nvidia/cu13/lib/libcupti.so.13" $D/
ls -la $D
