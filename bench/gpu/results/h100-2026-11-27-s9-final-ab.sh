#!/usr/bin/env bash
# Session 9 call E (carry .gpu-carry/s9e: the tests and the bench of the final kernels: one-pass
# block scales in the GLU and the plain stacked GEMV, row by row in the `_pf` and norm-tail
# GEMVs, the folded norm off by default; .gpu-carry/s9b/qlora-gpu-bench.xz: the build before
# this session's scale work, = session 8's launches with QLORA_FOLD_NORM=0): the GPU tests, then
# NF4 b1 decode old / new alternating, three rounds, on the TinyLlama and Mistral-7B shapes.
cd "$(dirname "$0")/../../.."
D=.gpu-carry/s9e
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib
for f in $D/*.xz .gpu-carry/s9b/qlora-gpu-bench.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in gpu_kernels gpu_conformance; do $D/$t --test-threads=1 > $OUT/$t.log 2>&1; echo "$t rc=$? $(grep -E '^test result' $OUT/$t.log)"; grep -E "panicked|FAILED|drift" $OUT/$t.log | head -8; done
bench() {  # label binary model
  local l=$1 bin=$2 m=$3
  QLORA_FOLD_NORM=0 $bin --config bench/gpu/configs/$m --name $m --out $OUT/ab-$l.jsonl --workdir /tmp --batches 1 --quants nf4 2>>$OUT/bench.err \
    | python3 -c "
import json,sys
for l in sys.stdin:
    d=json.loads(l)
    if d['metric'] in ('decode_tok_s','decode_step_us'): print('$m $l', d['metric'], round(d['value'],1), [round(x*1e3,2) for x in d.get('runs_s',[])])"
  rm -rf /tmp/ours_$m
}
for m in tinyllama mistral7b; do for r in 1 2 3; do bench old .gpu-carry/s9b/qlora-gpu-bench $m; bench new $D/qlora-gpu-bench $m; done; done
