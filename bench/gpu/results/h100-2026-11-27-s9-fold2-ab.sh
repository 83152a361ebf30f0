#!/usr/bin/env bash
# Session 9 call B (carry .gpu-carry/s9b: the tests and the bench built with the folded norm's
# s * w written by the projection; .gpu-carry/kprof): the GPU kernel and conformance tests, NF4
# b1 decode with the RMSNorm folded (default) and without (QLORA_FOLD_NORM=0), same binary,
# alternating, on the TinyLlama and Mistral-7B shapes; then each way once more under kprof
# (TinyLlama), its per-kernel step summary (steps.py).
cd "$(dirname "$0")/../../.."
D=.gpu-carry/s9b
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib
for f in $D/*.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in gpu_kernels gpu_conformance; do $D/$t --test-threads=1 > $OUT/$t.log 2>&1; echo "$t rc=$? $(grep -E '^test result' $OUT/$t.log)"; grep -E "panicked|FAILED|drift" $OUT/$t.log | head -8; done
bench() {  # model fold out [env...]
  local m=$1 v=$2 out=$3; shift 3
  env QLORA_FOLD_NORM=$v "$@" $D/qlora-gpu-bench --config bench/gpu/configs/$m --name $m --out $out --workdir /tmp --batches 1 --quants nf4 2>>$OUT/bench.err \
    | python3 -c "
import json,sys
for l in sys.stdin:
    d=json.loads(l)
    if d['metric'] in ('decode_tok_s','decode_step_us'): print('$m fold=$v', d['metric'], round(d['value'],1), [round(x*1e3,2) for x in d.get('runs_s',[])])"
  rm -rf /tmp/ours_$m
}
for m in tinyllama mistral7b; do for v in 0 1 0 1; do bench $m $v $OUT/ab-fold$v.jsonl; done; done
for v in 0 1; do
  bench tinyllama $v $OUT/kprof-run.jsonl LD_LIBRARY_PATH=$PWD/.gpu-carry/kprof:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=$PWD/.gpu-carry/kprof/libkprof.so KPROF_OUT=$OUT/k$v.csv
  echo "== kprof tinyllama fold=$v"; python3 bench/gpu/kprof/steps.py $OUT/k$v.csv | tee $OUT/kprof-steps-fold$v.txt | head -30
  xz -T4 $OUT/k$v.csv
done
