#!/usr/bin/env bash
# Session 9 call D (carry .gpu-carry/s9b, .gpu-carry/s9c, .gpu-carry/kprof): TinyLlama NF4 b1
# decode, the previous build (row-by-row block scales) against this one (fill_scales), three
# rounds alternating, then each once under kprof with its per-kernel step summary (steps.py).
cd "$(dirname "$0")/../../.."
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib
for f in .gpu-carry/s9b/qlora-gpu-bench.xz .gpu-carry/s9c/qlora-gpu-bench.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
bench() {  # label binary model [env...]
  local l=$1 bin=$2 m=$3; shift 3
  env QLORA_FOLD_NORM=0 "$@" $bin --config bench/gpu/configs/$m --name $m --out $OUT/ab-$l.jsonl --workdir /tmp --batches 1 --quants nf4 2>>$OUT/bench.err \
    | python3 -c "
import json,sys
for l in sys.stdin:
    d=json.loads(l)
    if d['metric'] in ('decode_tok_s','decode_step_us'): print('$m $l', d['metric'], round(d['value'],1), [round(x*1e3,2) for x in d.get('runs_s',[])])"
  rm -rf /tmp/ours_$m
}
for r in 1 2 3; do bench old .gpu-carry/s9b/qlora-gpu-bench tinyllama; bench new .gpu-carry/s9c/qlora-gpu-bench tinyllama; done
for v in s9b s9c; do
  bench kprof-$v .gpu-carry/$v/qlora-gpu-bench tinyllama LD_LIBRARY_PATH=$PWD/.gpu-carry/kprof:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=$PWD/.gpu-carry/kprof/libkprof.so KPROF_OUT=$OUT/k-$v.csv
  echo "== kprof tinyllama $v"; python3 bench/gpu/kprof/steps.py $OUT/k-$v.csv | head -14
  rm -f $OUT/k-$v.csv
done
