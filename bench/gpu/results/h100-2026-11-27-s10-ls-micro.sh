#!/usr/bin/env bash
# Session 10, call F: the lane-scale GEMVs (kernels/nf4.cu nf4_gemv_{multi,glu}_ls1/_ls2: each
# lane loads its block scale with its weights, no block-wide scale phase; ls2 also issues the
# first loads before the wait) against the engine's GEMVs, GEMV micro-benchmark, both shapes,
# alternating, two rounds. gm: the GLU at 6 blocks an SM (80 registers), gm-g7 at 7 (72, spills).
set -euo pipefail
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
D=.gpu-carry/gemv_micro
for f in $D/gm*.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
J=$OUT/ls-micro.jsonl
for round in 1 2; do
  for m in mistral7b tinyllama; do
    GM_TAG=-base $D/gm $m >> $J
    GM_TAG=-ls1 GM_LS=1 $D/gm $m >> $J
    GM_TAG=-ls2 GM_LS=2 $D/gm $m >> $J
    GM_TAG=-ls2g7 GM_LS=2 $D/gm-g7 $m >> $J
    GM_TAG=-pf GM_PF=1 $D/gm $m >> $J
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
    elif 'check' in d and d['check'].startswith('pw_') and d['max_abs_diff'] > 1e-3: print('check', d)
for k, v in sorted(r.items()): print(*k, v)
P
