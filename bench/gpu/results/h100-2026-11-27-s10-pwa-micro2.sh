#!/usr/bin/env bash
# Session 10, call E: the persistent warps with more warps an SM: 2 weight rows a step
# (-DPW_NR=2) at 8 / 7 blocks an SM (64 registers), cp.async ring of 4 / 6 stages (gm-n2d4,
# gm-n2d6), and 4 rows with a 2-stage ring at 8 blocks (gm-n4d2).
set -euo pipefail
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
D=.gpu-carry/gemv_micro
for f in $D/gm*.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
J=$OUT/pwa-micro2.jsonl
for m in mistral7b tinyllama; do
  GM_TAG=-n2d4 GM_PWA_BPS=8 GM_PW_BPS=8 $D/gm-n2d4 $m >> $J
  GM_TAG=-n2d6 GM_PWA_BPS=7 $D/gm-n2d6 $m >> $J
  GM_TAG=-n4d2 GM_PWA_BPS=8 $D/gm-n4d2 $m >> $J
done
python3 - "$J" <<'P'
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    if 'us' in d and (d['kernel'].startswith('pw') or d['kernel'].startswith('reg-n2d4')): print(d['model'], d['part'], d['kernel'], d['us'], d['gbps'])
    elif d.get('bad'): print('CHECK FAILED', d)
P
