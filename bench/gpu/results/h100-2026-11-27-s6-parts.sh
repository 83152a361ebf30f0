#!/usr/bin/env bash
# Session 6, call C: where a generation's time goes (generation_parts_ms), defaults (fused norm, _pf GEMVs).
set -uo pipefail
F=.gpu-carry/s6c
xz -dkf $F/qlora-gpu-bench.xz; chmod +x $F/qlora-gpu-bench
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
for m in tinyllama mistral7b; do
  $F/qlora-gpu-bench --config bench/gpu/configs/$m --name "$m" --batches 1 --quants nf4 --out $OUT/parts.jsonl --workdir /tmp > /dev/null 2>>$OUT/err.txt
  rm -rf /tmp/ours_$m*
done
python3 - <<'P'
import json, os
for l in open(os.environ['OUT'] + '/parts.jsonl'):
    d = json.loads(l)
    if d.get('batch') == 1 and d['metric'] in ('decode_tok_s', 'decode_step_us', 'generation_parts_ms'):
        print(d['model'], d['metric'], d['value'] if isinstance(d['value'], dict) else round(d['value'], 1), d.get('runs_s', ''), d.get('first_three', ''))
P
tail -3 $OUT/err.txt
