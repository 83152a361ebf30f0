#!/usr/bin/env bash
# Session 10, call C: the persistent warps fed by cp.async (kernels/nf4.cu gemv_pwa_impl, a ring
# of PWA_D stages a warp) in the GEMV micro-benchmark: gm (PWA_D = 4), gm-d3 (PWA_D = 3), blocks
# an SM by GM_PWA_BPS.
set -euo pipefail
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
D=.gpu-carry/gemv_micro
for f in $D/*.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
J=$OUT/pwa-micro.jsonl
for m in mistral7b tinyllama; do
  GM_TAG=-d4b5 $D/gm $m >> $J
  GM_TAG=-d4b4 GM_PWA_BPS=4 $D/gm $m >> $J
  GM_TAG=-d3b5 $D/gm-d3 $m >> $J
  GM_TAG=-d3b7 GM_PWA_BPS=7 $D/gm-d3 $m >> $J
done
python3 - "$J" <<'P'
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    if 'us' in d and (d['kernel'].startswith('pwa') or d['kernel'].startswith('reg-d4b5')): print(d['model'], d['part'], d['kernel'], d['us'], d['gbps'])
    elif d.get('bad'): print('CHECK FAILED', d)
    elif 'check' in d and d['check'].startswith('pwa'): print('check', d['model'], d['part'], d['max_abs_diff'], d['max_abs'])
P
