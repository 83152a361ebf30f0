#!/usr/bin/env bash
# Session 9 call A (carry .gpu-carry/s9a: the tests and the bench built from the folded-norm
# commit): the GPU kernel and conformance tests, then NF4 b1 decode with the RMSNorm folded into
# the GEMVs (default) and without (QLORA_FOLD_NORM=0, session 7's launches), same binary,
# alternating, on the TinyLlama and Mistral-7B shapes.
cd "$(dirname "$0")/../../.."
D=.gpu-carry/s9a
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib
for f in $D/*.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in gpu_kernels gpu_conformance; do $D/$t --test-threads=1 > $OUT/$t.log 2>&1; echo "$t rc=$? $(grep -E '^test result' $OUT/$t.log)"; grep -E "panicked|FAILED|drift" $OUT/$t.log | head -8; done
for m in tinyllama mistral7b; do
  for v in 0 1 0 1; do
    QLORA_FOLD_NORM=$v $D/qlora-gpu-bench --config bench/gpu/configs/$m --name $m --out $OUT/ab-fold$v.jsonl --workdir /tmp --batches 1 --quants nf4 2>>$OUT/bench.err \
      | python3 -c "
import json,sys
for l in sys.stdin:
    d=json.loads(l)
    if d['metric'] in ('decode_tok_s','decode_step_us'): print('$m fold=$v', d['metric'], round(d['value'],1), [round(x*1e3,2) for x in d.get('runs_s',[])])"
    rm -rf /tmp/ours_$m
  done
done
