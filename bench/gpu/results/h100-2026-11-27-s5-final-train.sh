#!/usr/bin/env bash
# Session 5 final training call (issue 7): gpu_train + gpu_train_offload tests, then run_train.sh
# (ours vs the reference on TinyLlama and Mistral-7B, + the planner's predictions for all four
# shapes), then two more alternating rounds ours / reference on Mistral-7B (the reference's speed
# varies between calls: the table reports the median of three), then one --profile run.
set -uo pipefail
F=.gpu-carry/final-train
for f in $F/*.xz; do xz -dkf "$f"; done; chmod +x $F/qlora-gpu-train-bench $F/qlora $F/gpu_train $F/gpu_train_offload $F/gpu_train_optim 2>/dev/null
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for t in gpu_train gpu_train_offload gpu_train_optim; do
  echo "== $t $(date +%T)"
  timeout 150 $F/$t --test-threads=1 > /tmp/$t.log 2>&1; echo "$t rc=$? $(grep -E '^test result' /tmp/$t.log)"
  grep -hE "FAILED|panicked" /tmp/$t.log | head -10
done
cat /tmp/gpu_train.log /tmp/gpu_train_offload.log /tmp/gpu_train_optim.log > $OUT/tests.log
echo "== run_train.sh $(date +%T)"
mkdir -p $OUT/train
BIN=$F/qlora-gpu-train-bench QLORA=$F/qlora PEER_DIR=.gpu-carry/peer OUT_DIR=$OUT/train bash bench/gpu/run_train.sh
for r in 2 3; do
  echo "== round $r $(date +%T)"
  $F/qlora-gpu-train-bench --config bench/gpu/configs/mistral7b --name mistral7b --out $OUT/rounds-ours.jsonl --workdir /tmp > /dev/null 2>>/tmp/rounds.err
  rm -rf /tmp/ours_train_mistral7b
  PYTHONPATH=/tmp/site python3 .gpu-carry/peer/peer_bench.py --configs bench/gpu/configs --models mistral7b --batches "" --out $OUT/rounds-peer.jsonl >> /tmp/rounds.err 2>&1
done
echo "== profile $(date +%T)"
$F/qlora-gpu-train-bench --config bench/gpu/configs/mistral7b --name mistral7b --out $OUT/profile.jsonl --workdir /tmp --profile > /dev/null 2>>/tmp/rounds.err
python3 - <<'P'
import json, os, statistics
O = os.environ['OUT']
def rows(p, side):
    out = []
    for path in p:
        if not os.path.exists(path): continue
        for l in open(path):
            d = json.loads(l)
            if d.get('metric') == 'qlora_train' and d.get('model') == 'mistral7b': out.append(d)
    return out
ours = rows([O + '/train/ours.jsonl', O + '/rounds-ours.jsonl'], 'ours')
peer = rows([O + '/train/peer.jsonl', O + '/rounds-peer.jsonl'], 'peer')
print('mistral7b rounds: ours', [round(d['value']) for d in ours], 'peer', [round(d['value']) for d in peer])
if ours and peer:
    mo, mp = statistics.median(d['value'] for d in ours), statistics.median(d['value'] for d in peer)
    print('median ours %.0f peer %.0f ratio %.3f' % (mo, mp, mo / mp))
    print('per-round ratios', [round(o['value'] / p['value'], 3) for o, p in zip(ours, peer)])
P
cat $OUT/train/gpu.txt $OUT/train/ours-*.err $OUT/train/plan.err $OUT/train/peer.log /tmp/rounds.err > $OUT/logs.txt 2>/dev/null
rm -f $OUT/train/ours-*.err $OUT/train/plan.err $OUT/train/gpu.txt $OUT/train/peer.log
cat $OUT/rounds-ours.jsonl $OUT/rounds-peer.jsonl > $OUT/rounds.jsonl 2>/dev/null; rm -f $OUT/rounds-ours.jsonl $OUT/rounds-peer.jsonl
ls -la $OUT $OUT/train
echo "== end $(date +%T)"
