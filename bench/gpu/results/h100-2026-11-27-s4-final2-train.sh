#!/usr/bin/env bash
# Engineer B3 (session 4) final training call (issue 7): gpu_train tests, then run_train.sh
# (ours vs the reference + planner shapes), then ours only on Mistral-7B: B2's binary (96dff0e)
# as "before", ours with QLORA_TRAIN_KEEP_PROBS=1, and one --profile run (per-piece pool
# memory of a real step + the per-phase profile).
set -uo pipefail
cd "$(dirname "$0")/../.."
F=.gpu-carry/b3
for f in $F/*.xz; do xz -dkf "$f"; done; chmod +x $F/qlora-gpu-train-bench $F/qlora $F/gpu_train $F/base-bench
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "== gpu_train $(date +%T)"
timeout 170 $F/gpu_train --test-threads=1 --nocapture 2>&1 | grep -vE "^\s*$" | tail -40
echo "== run_train.sh $(date +%T)"
mkdir -p $OUT/train
BIN=$F/qlora-gpu-train-bench QLORA=$F/qlora PEER_DIR=.gpu-carry/peer OUT_DIR=$OUT/train bash bench/gpu/run_train.sh
echo "== A/B ours only $(date +%T)"
for m in mistral7b; do
  $F/base-bench --config bench/gpu/configs/$m --name $m --out $OUT/ab.jsonl --workdir /tmp > /dev/null 2>>$OUT/ab.err && sed -i '$ s/}$/,"variant":"before (96dff0e, B2)"}/' $OUT/ab.jsonl
  QLORA_TRAIN_KEEP_PROBS=1 $F/qlora-gpu-train-bench --config bench/gpu/configs/$m --name $m --out $OUT/ab.jsonl --workdir /tmp > /dev/null 2>>$OUT/ab.err && sed -i '$ s/}$/,"variant":"after, QLORA_TRAIN_KEEP_PROBS=1"}/' $OUT/ab.jsonl
  $F/qlora-gpu-train-bench --config bench/gpu/configs/$m --name $m --out $OUT/ab.jsonl --workdir /tmp > /dev/null 2>>$OUT/ab.err && sed -i '$ s/}$/,"variant":"after (default, probabilities recomputed)"}/' $OUT/ab.jsonl
  rm -rf /tmp/ours_train_$m
done
echo "== profile mistral7b $(date +%T)"
$F/qlora-gpu-train-bench --config bench/gpu/configs/mistral7b --name mistral7b --out $OUT/profile.jsonl --workdir /tmp --profile > /dev/null 2>>$OUT/ab.err
python3 - <<'P'
import json,os
O=os.environ['OUT']
for l in open(O+'/ab.jsonl'):
    d=json.loads(l)
    print('%-10s %-44s %8.0f tok/s %6.1f ms/step peak %.3f GiB loss %.6f -> %.6f' % (d['model'], d.get('variant'), d['value'], d['s_per_step']*1e3, d['peak_training_phase']['max_allocated_GiB'], d['loss_first'], d['loss_last']))
for l in open(O+'/profile.jsonl'):
    d=json.loads(l)
    if d['metric']=='qlora_train':
        print('profile run', round(d['value']), 'tok/s peak', round(d['peak_training_phase']['max_allocated_GiB'],3)); continue
    if d['metric']=='qlora_train_step_memory':
        print('real step: start %.3f high %.3f GiB over %d pieces; highest:' % (d['start_GiB'], d['step_high_GiB'], d['pieces']))
        for p in d['highest'] + [{'piece':'--- tail ---','used_after_GiB':0,'high_GiB':0}] + d['tail']:
            print('  %-70s high %.4f used after %.4f' % (p['piece'][:70], p['high_GiB'], p['used_after_GiB']))
        continue
    for p in d['ms']:
        if p['phase'].startswith('proj '): continue
        print('  %-62s %7.2f ms host %6.2f start %.3f end %.3f high %.3f' % (p['phase'][:62], p['ms'], p['host_ms'], p['used_start_GiB'], p['used_end_GiB'], p['used_high_GiB']))
P
cd $OUT/train && cat gpu.txt ours-*.err plan.err $OUT/ab.err peer.log > logs.txt 2>/dev/null; rm -f ours-*.err plan.err gpu.txt $OUT/ab.err peer.log; ls -la $OUT $OUT/train
echo "== end $(date +%T)"
