#!/usr/bin/env bash
# Session 5: decode NF4 b1, session 4's final code (d138927) vs session 5's (5dbd32d), same call,
# alternating, two rounds, both shapes.
set -uo pipefail
F=.gpu-carry/cmp
for f in $F/*.xz; do xz -dkf "$f"; done; chmod +x $F/s4 $F/s5
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for r in 1 2; do for b in s4 s5; do for m in tinyllama mistral7b; do
  echo "== round $r $b $m $(date +%T)"
  $F/$b --config bench/gpu/configs/$m --name $m-$b --batches 1 --quants nf4 --out $OUT/cmp.jsonl --workdir /tmp > /dev/null 2>>$OUT/err.txt
  rm -rf /tmp/ours_$m*
done; done; done
python3 - <<'P'
import json, os
for l in open(os.environ['OUT'] + '/cmp.jsonl'):
    d = json.loads(l)
    if d['metric'] in ('decode_tok_s', 'decode_step_us') and d.get('batch') == 1 and d.get('quant') == 'nf4':
        print(d['model'], d['metric'], round(d['value'], 1))
P
date +%T
