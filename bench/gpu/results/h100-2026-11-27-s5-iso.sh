#!/usr/bin/env bash
# Session 5: which change made the Mistral-7B NF4 b1 decode step slower than session 4's (same call).
# s4 = d138927, s5 = 5dbd32d, bench-w1p0 / bench-w4p0 = engineer D2's 05:50 tree with the 4-byte /
# 16-byte GEMV core (no bulk prefetch); QLORA_ATT_HG=4 = session 4's attention layout.
set -uo pipefail
F=.gpu-carry/cmp
for f in $F/*.xz; do xz -dkf "$f"; done; chmod +x $F/s4 $F/s5 $F/bench-w1p0 $F/bench-w4p0
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
run() { local name=$1 bin=$2; shift 2
  env "$@" $F/$bin --config bench/gpu/configs/mistral7b --name "mistral7b-$name" --batches 1 --quants nf4 --out $OUT/iso.jsonl --workdir /tmp > /dev/null 2>>$OUT/err.txt
  rm -rf /tmp/ours_mistral7b*; }
run s4 s4; run s5 s5; run s5-hg4 s5 QLORA_ATT_HG=4; run w1p0 bench-w1p0; run w4p0 bench-w4p0; run w1p0-hg4 bench-w1p0 QLORA_ATT_HG=4
run s4 s4; run s5 s5; run s5-hg4 s5 QLORA_ATT_HG=4
python3 - <<'P'
import json, os
for l in open(os.environ['OUT'] + '/iso.jsonl'):
    d = json.loads(l)
    if d['metric'] == 'decode_step_us' and d.get('batch') == 1: print(d['model'], round(d['value'], 1))
P
date +%T
