#!/usr/bin/env bash
# Engineer T2 (session 5) training call (issue 7): the GPU tests of what changed (gpu_train with
# the warp-per-row attention softmax test, gpu_train_offload, gpu_prefill, gpu_kernels'
# dequantize / nf4_linear tests: one dequantize launcher now), then ours only, same binary,
# variants picked by environment switches: the attention softmax's earlier one-block-per-row
# kernels (QLORA_ATTN_SOFTMAX_WARP=0 = before) vs the warp-per-row default, with the
# probabilities kept (QLORA_TRAIN_KEEP_PROBS=1) and with the backward's dequantized slabs at 64
# MiB (QLORA_TRAIN_BWD_SLAB_MIB=64); Mistral-7B and TinyLlama; then one --profile run.
set -uo pipefail
cd "$(dirname "$0")/../../.."
F=.gpu-carry/t2
for f in $F/*.xz; do xz -dkf "$f"; done; chmod +x $F/*[!z]
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for t in gpu_train gpu_train_offload gpu_prefill; do
  echo "== $t $(date +%T)"
  timeout 100 $F/$t --test-threads=1 2>&1 | grep -E "^test |test result|panicked|differs|error" | tail -30
done
echo "== gpu_kernels (dequantize, nf4_linear) $(date +%T)"
timeout 60 $F/gpu_kernels --test-threads=1 dequantize nf4_linear 2>&1 | grep -E "^test |test result|panicked|error" | tail -12
echo "== A/B ours only $(date +%T)"
run() { # model variant env...
  local m=$1 v=$2; shift 2
  env "$@" $F/qlora-gpu-train-bench --config bench/gpu/configs/$m --name $m --out $OUT/ab.jsonl --workdir /tmp > /dev/null 2>>$OUT/ab.err \
    && sed -i "\$ s/}\$/,\"variant\":\"$v\"}/" $OUT/ab.jsonl || echo "failed: $m $v"
  rm -rf /tmp/ours_train_$m
}
run mistral7b "before: block softmax (QLORA_ATTN_SOFTMAX_WARP=0)" QLORA_ATTN_SOFTMAX_WARP=0
run mistral7b "after: warp softmax (default)" X=1
run mistral7b "after + QLORA_TRAIN_KEEP_PROBS=1" QLORA_TRAIN_KEEP_PROBS=1
run mistral7b "after + QLORA_TRAIN_BWD_SLAB_MIB=64" QLORA_TRAIN_BWD_SLAB_MIB=64
run mistral7b "before again: block softmax" QLORA_ATTN_SOFTMAX_WARP=0
run mistral7b "after again: warp softmax (default)" X=1
run tinyllama "before: block softmax (QLORA_ATTN_SOFTMAX_WARP=0)" QLORA_ATTN_SOFTMAX_WARP=0
run tinyllama "after: warp softmax (default)" X=1
run tinyllama "after + QLORA_TRAIN_KEEP_PROBS=1" QLORA_TRAIN_KEEP_PROBS=1
echo "== profile mistral7b $(date +%T)"
$F/qlora-gpu-train-bench --config bench/gpu/configs/mistral7b --name mistral7b --out $OUT/profile.jsonl --workdir /tmp --profile > /dev/null 2>>$OUT/ab.err
python3 - <<'P'
import json,os
O=os.environ['OUT']
for l in open(O+'/ab.jsonl'):
    d=json.loads(l)
    print('%-10s %-50s %8.0f tok/s %6.1f ms/step peak %.3f GiB loss %.6f -> %.6f' % (d['model'], d.get('variant'), d['value'], d['s_per_step']*1e3, d['peak_training_phase']['max_allocated_GiB'], d['loss_first'], d['loss_last']))
for l in open(O+'/profile.jsonl'):
    d=json.loads(l)
    if d['metric']=='qlora_train':
        print('profile run', round(d['value']), 'tok/s peak', round(d['peak_training_phase']['max_allocated_GiB'],3)); continue
    if d['metric']=='qlora_train_step_memory':
        print('real step: start %.3f high %.3f GiB over %d pieces' % (d['start_GiB'], d['step_high_GiB'], d['pieces'])); continue
    for p in d['ms']:
        if p['phase'].startswith('proj ') and '(warm-up)' in p['phase']: continue
        print('  %-62s %7.3f ms host %6.3f high %.3f' % (p['phase'][:62], p['ms'], p['host_ms'], p['used_high_GiB']))
P
tail -5 $OUT/ab.err
echo "== end $(date +%T)"
