#!/usr/bin/env bash
# Session 6: the memory pool's release threshold (QLORA_POOL_KEEP=1 keeps freed memory in the
# pool across synchronizations) against the default, NF4 b1, alternating in the same call.
# The binary was built from a tree with infer::keep_pool_memory (cuMemPoolSetAttribute
# RELEASE_THRESHOLD = u64::MAX on the default pool, called after single_stream_fast_alloc in
# Model::from_weights); it was slower and kept the load's memory, so it was not committed.
set -uo pipefail
cd "$(dirname "$0")/../../.."
F=.gpu-carry/s6e
xz -dkf $F/qlora-gpu-bench.xz; chmod +x $F/qlora-gpu-bench
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date +%T
for m in tinyllama mistral7b; do
  for r in 1 2; do
    for k in 0 1; do
      QLORA_POOL_KEEP=$k $F/qlora-gpu-bench --config bench/gpu/configs/$m --name "$m-keep$k" --batches 1 --quants nf4 --out $OUT/pool.jsonl --workdir /tmp > /dev/null 2>>$OUT/err.txt
      rm -rf /tmp/ours_$m*
    done
  done
done
python3 - <<'P'
import json, os
for l in open(os.environ['OUT'] + '/pool.jsonl'):
    d = json.loads(l)
    if d['metric'] in ('decode_tok_s', 'decode_step_us', 'generation_parts_ms', 'mem_after_load', 'prefill_tok_s'):
        print(d['model'], d['metric'], d.get('value', d.get('allocated_GiB')))
P
tail -3 $OUT/err.txt; date +%T
