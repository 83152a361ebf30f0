#!/usr/bin/env bash
# Session 10, call B: the persistent-warp GEMV with line prefetches (gm-pfl, -DPW_PFL=1) against
# the bulk prefetch (gm), and both with the weights L2-resident (GM_LAYERS=1).
set -euo pipefail
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
D=.gpu-carry/gemv_micro
for f in $D/*.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
J=$OUT/pw-micro2.jsonl
for m in mistral7b tinyllama; do
  GM_TAG=-gm $D/gm $m >> $J
  GM_TAG=-pfl $D/gm-pfl $m >> $J
  GM_TAG=-pfl-b3 GM_PW_BPS=3 $D/gm-pfl $m >> $J
  GM_TAG=-gm-l1 GM_LAYERS=1 $D/gm $m >> $J
  GM_TAG=-pfl-l1 GM_LAYERS=1 $D/gm-pfl $m >> $J
done
python3 - "$J" <<'P'
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    if 'us' in d and not d['kernel'].startswith('ws') and not d['kernel'].startswith('stream'): print(d['model'], d['part'], d['kernel'], d['us'], d['gbps'])
    elif d.get('bad'): print('CHECK FAILED', d)
P
