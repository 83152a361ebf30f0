#!/usr/bin/env bash
# Session 10, call A: the persistent-warp GEMV (kernels/nf4.cu gemv_pw_impl) in the GEMV
# micro-benchmark against the engine's GEMVs (reg) and the plain read (stream), both shapes.
# Carry .gpu-carry/gemv_micro (run.sh build with GM_DEFS -DPW_PD=0/2, -DPW_MINB=5).
set -euo pipefail
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
D=.gpu-carry/gemv_micro
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for f in $D/*.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
J=$OUT/pw-micro.jsonl
for round in 1 2; do
  for m in mistral7b tinyllama; do
    GM_TAG=-gm $D/gm $m >> $J
    GM_TAG=-gm-pf GM_PF=1 $D/gm $m >> $J
    GM_TAG=-pd0 $D/gm-pd0 $m >> $J
    GM_TAG=-pd2 $D/gm-pd2 $m >> $J
    GM_TAG=-b5 GM_PW_BPS=5 $D/gm-b5 $m >> $J
    GM_TAG=-b5g4 GM_PW_BPS=4 $D/gm-b5 $m >> $J
    GM_TAG=-bps3 GM_PW_BPS=3 $D/gm $m >> $J
  done
done
python3 - "$J" <<'P'
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    if 'us' in d and not d['kernel'].startswith('ws'): print(d['model'], d['part'], d['kernel'], d['us'], d['gbps'])
    elif d.get('bad'): print('CHECK FAILED', d)
    elif 'check' in d and d['check'].startswith('pw'): print('check', d['model'], d['part'], d['max_abs_diff'], d['max_abs'])
P
