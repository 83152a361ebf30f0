#!/usr/bin/env bash
# Session 10, call D: warp-stall profile (CUPTI PC sampling, gemv_micro's pc build) of the
# persistent-warp GEMVs (GM_PC_KIND=2 pw, 3 pwa) against the engine's (0), Mistral-7B shapes.
set -euo pipefail
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
D=.gpu-carry/gemv_micro
xz -dkf $D/libcupti.so.13.xz; xz -dkf $D/pc-gm.xz; chmod +x $D/pc-gm
for kind in 0 2 3; do
  GM_PC_KIND=$kind GM_PCSAMPLE=1 GM_TAG="-k$kind" LD_LIBRARY_PATH=$PWD/$D:$LD_LIBRARY_PATH $D/pc-gm mistral7b >> $OUT/pcsample.jsonl 2>> $OUT/pcsample.log || echo "failed $kind"
done
python3 - $OUT/pcsample.jsonl <<'P'
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    if 'reasons' not in d: continue
    top = sorted(d['reasons'].items(), key=lambda kv: -kv[1])[:8]
    print(d['pcsample'], d['kernel'], d['samples'], ' '.join(f"{k}:{100*v:.0f}%" for k, v in top))
    print('   hot:', ' '.join(f"{h[0]}:{100*h[1]:.0f}%:{h[2]}" for h in d['hot'][:8]))
P
