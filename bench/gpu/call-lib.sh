# The shared preamble of the device-call scripts in bench/gpu/results (source it from one):
# the CUDA 13 runtime of the GPU machine on the loader path, `unpack` for carried .xz files,
# `bench` for one NF4 decode run of bench/gpu/engine_bench.rs and `kprof` for one run under the
# kernel timeline (bench/gpu/kprof). Output files go to $OUT.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

# unpack FILE.xz...: next to themselves (executable unless a library).
unpack() {
  local f
  for f in "$@"; do
    xz -dkf "$f"
    case "$f" in *.so*) ;; *) chmod +x "${f%.xz}" ;; esac
  done
}

# bench LABEL BINARY MODEL [VAR=VALUE...]: NF4 batch-1 decode of MODEL (bench/gpu/configs)
# with those variables set, all records into $OUT/ab-LABEL.jsonl; prints tok/s, the runs (ms)
# and the steady step (us).
bench() {
  local l=$1 bin=$2 m=$3
  shift 3
  env "$@" "$bin" --config "bench/gpu/configs/$m" --name "$m" --out "$OUT/ab-$l.jsonl" --workdir /tmp --batches 1 --quants nf4 2>>"$OUT/bench.err" \
    | python3 -c "
import json, sys
for l in sys.stdin:
    d = json.loads(l)
    if d['metric'] in ('decode_tok_s', 'decode_step_us'):
        print('$m $l', d['metric'], round(d['value'], 1), [round(x * 1e3, 2) for x in d.get('runs_s', [])])"
  rm -rf "/tmp/ours_$m"
}

# kprof LABEL BINARY MODEL [VAR=VALUE...]: as bench, under the kernel timeline (carry
# .gpu-carry/kprof: libkprof.so and libcupti.so.13.xz); prints the per-kernel step summary.
kprof() {
  local l=$1 bin=$2 m=$3
  shift 3
  [ -f .gpu-carry/kprof/libcupti.so.13 ] || unpack .gpu-carry/kprof/libcupti.so.13.xz
  bench "kprof-$l" "$bin" "$m" "$@" LD_LIBRARY_PATH="$PWD/.gpu-carry/kprof:$LD_LIBRARY_PATH" \
    CUDA_INJECTION64_PATH="$PWD/.gpu-carry/kprof/libkprof.so" KPROF_OUT="$OUT/k-$l.csv"
  echo "== kprof $m $l"
  python3 bench/gpu/kprof/steps.py "$OUT/k-$l.csv" | head -16
  rm -f "$OUT/k-$l.csv"
}

# gpu_tests DIR [VAR=VALUE...] -- NAME...: the carried test binaries DIR/NAME, one at a time
# (`--test-threads=1`), with those variables set; logs into $OUT/NAME[-TAG].log, where TAG is
# $GPU_TESTS_TAG when set; prints each one's result line and its failures.
gpu_tests() {
  local d=$1 t log
  shift
  local vars=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do vars+=("$1"); shift; done
  shift
  for t in "$@"; do
    log="$OUT/$t${GPU_TESTS_TAG:+-$GPU_TESTS_TAG}.log"
    env "${vars[@]}" "$d/$t" --test-threads=1 > "$log" 2>&1
    echo "$t ${vars[*]} rc=$? $(grep -E '^test result' "$log")"
    grep -E "panicked|FAILED" "$log" | head -8
  done
}
