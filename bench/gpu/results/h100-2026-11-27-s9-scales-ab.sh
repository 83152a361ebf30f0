#!/usr/bin/env bash
# Session 9 call C (carry .gpu-carry/s9c: the tests and the bench built with every row's block
# scales resolved in one pass (fill_scales); .gpu-carry/s9b/qlora-gpu-bench.xz: the previous
# build, row-by-row scales; .gpu-carry/gemv_micro: the GEMV micro-benchmark of this tree (gm)
# and of 1ad9c50's nf4.cu (gm-1ad9c50)): the GPU tests, the micro-benchmark, then NF4 b1 decode
# with the old binary (folded norm off: session 8's launches), the new one without and with the
# folded norm, alternating, on the TinyLlama and Mistral-7B shapes.
cd "$(dirname "$0")/../../.."
D=.gpu-carry/s9c
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib
for f in $D/*.xz .gpu-carry/s9b/qlora-gpu-bench.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in gpu_kernels gpu_conformance; do $D/$t --test-threads=1 > $OUT/$t.log 2>&1; echo "$t rc=$? $(grep -E '^test result' $OUT/$t.log)"; grep -E "panicked|FAILED|drift" $OUT/$t.log | head -8; done
G=.gpu-carry/gemv_micro
for b in gm-1ad9c50 gm gm-1ad9c50 gm; do xz -dkf $G/$b.xz; chmod +x $G/$b
  for m in tinyllama mistral7b; do GM_PF=1 GM_TAG="-$b" $G/$b $m >> $OUT/micro.jsonl 2>>$OUT/micro.err; done
done
python3 - $OUT/micro.jsonl <<'P'
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    if 'us' in d and not d['kernel'].startswith(('stream', 'ws')): print(d['model'], d['part'], d['kernel'], d['us'])
P
bench() {  # label binary model fold
  local l=$1 bin=$2 m=$3 v=$4
  QLORA_FOLD_NORM=$v $bin --config bench/gpu/configs/$m --name $m --out $OUT/ab-$l.jsonl --workdir /tmp --batches 1 --quants nf4 2>>$OUT/bench.err \
    | python3 -c "
import json,sys
for l in sys.stdin:
    d=json.loads(l)
    if d['metric'] in ('decode_tok_s','decode_step_us'): print('$m $l', d['metric'], round(d['value'],1), [round(x*1e3,2) for x in d.get('runs_s',[])])"
  rm -rf /tmp/ours_$m
}
for m in tinyllama mistral7b; do
  for r in 1 2; do
    bench old .gpu-carry/s9b/qlora-gpu-bench $m 0
    bench new $D/qlora-gpu-bench $m 0
    bench new-fold $D/qlora-gpu-bench $m 1
  done
done
