#!/usr/bin/env bash
# Session 10, call F2: the committed lane-scale GEMVs (nf4_gemv_{multi,glu}_ls_*_m1) in the GEMV
# micro-benchmark against the scale-phase GEMVs, and with 128 bytes in flight a thread
# (gm-if128: -DQLORA_GEMV_INFLIGHT=128, two steps a warp for the 4-row GEMV), two rounds.
set -euo pipefail
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
D=.gpu-carry/gemv_micro
for f in $D/gm*.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
J=$OUT/ls-micro2.jsonl
for round in 1 2; do
  for m in mistral7b tinyllama; do
    GM_TAG=-base $D/gm $m >> $J
    GM_TAG=-ls GM_LS=1 $D/gm $m >> $J
    GM_TAG=-ls-if128 GM_LS=1 $D/gm-if128 $m >> $J
  done
done
python3 - "$J" <<'P'
import json, sys
from collections import defaultdict
r = defaultdict(list)
for l in open(sys.argv[1]):
    d = json.loads(l)
    if 'us' in d and d['kernel'].startswith('reg'): r[(d['model'], d['part'], d['kernel'])].append(d['us'])
    elif d.get('bad'): print('CHECK FAILED', d)
for k, v in sorted(r.items()): print(*k, v)
P
