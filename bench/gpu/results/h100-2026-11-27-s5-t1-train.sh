#!/usr/bin/env bash
# Engineer T1 (session 5) training call (issue 7): the GPU tests of the multi-tensor AdamW, the
# one-call LoRA products and the training paths they touch (gpu_train_optim, gpu_train,
# gpu_train_offload), then qlora-gpu-train-bench, ours only, same binary, A/B by switches:
# old = QLORA_FUSED_ADAMW=0 QLORA_LORA_GEMM=0 (per-tensor AdamW, matmul + scale + cast),
# adamw = QLORA_LORA_GEMM=0 (fused AdamW only), new = both on (the defaults of the binary that
# ran; since 7323489 the LoRA products need QLORA_LORA_GEMM=1, passed below); Mistral-7B in the order
# old, new, adamw, new, old (to see the drift), TinyLlama old, new; then one --profile run.
set -uo pipefail
cd "$(dirname "$0")/../../.."
F=.gpu-carry/t1
for f in $F/*.xz; do xz -dkf "$f"; done; chmod +x $F/gpu_train_optim $F/gpu_train $F/gpu_train_offload $F/qlora-gpu-train-bench
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for t in gpu_train_optim gpu_train gpu_train_offload; do
  echo "== $t $(date +%T)"
  timeout 90 $F/$t --test-threads=1 2>&1 | grep -vE "^\s*$" | tail -25
done
B=$F/qlora-gpu-train-bench
bench() { # model variant env...
  local m=$1 v=$2; shift 2
  env "$@" $B --config bench/gpu/configs/$m --name $m --out $OUT/ab.jsonl --workdir /tmp > /dev/null 2>>$OUT/ab.err \
    && sed -i '$ s/}$/,"variant":"'"$v"'"}/' $OUT/ab.jsonl || echo "bench failed: $m $v"
}
OLD=(QLORA_FUSED_ADAMW=0 QLORA_LORA_GEMM=0)
echo "== A/B mistral7b $(date +%T)"
bench mistral7b old "${OLD[@]}"; bench mistral7b new QLORA_LORA_GEMM=1; bench mistral7b adamw-only QLORA_LORA_GEMM=0; bench mistral7b new QLORA_LORA_GEMM=1; bench mistral7b old "${OLD[@]}"
rm -rf /tmp/ours_train_mistral7b
echo "== A/B tinyllama $(date +%T)"
bench tinyllama old "${OLD[@]}"; bench tinyllama new QLORA_LORA_GEMM=1
rm -rf /tmp/ours_train_tinyllama
echo "== profile mistral7b $(date +%T)"
QLORA_LORA_GEMM=1 $B --config bench/gpu/configs/mistral7b --name mistral7b --out $OUT/profile.jsonl --workdir /tmp --profile > /dev/null 2>>$OUT/ab.err
python3 - <<'P'
import json,os
O=os.environ['OUT']
for l in open(O+'/ab.jsonl'):
    d=json.loads(l)
    print('%-10s %-11s %8.0f tok/s %6.1f ms/step peak %.3f GiB loss %.6f -> %.6f' % (d['model'], d.get('variant'), d['value'], d['s_per_step']*1e3, d['peak_training_phase']['max_allocated_GiB'], d['loss_first'], d['loss_last']))
for l in open(O+'/profile.jsonl'):
    d=json.loads(l)
    if d['metric']=='qlora_train':
        print('profile run', round(d['value']), 'tok/s peak', round(d['peak_training_phase']['max_allocated_GiB'],3)); continue
    if d['metric']=='qlora_train_profile':
        for p in d['ms']:
            print('  %-80s %8.3f ms host %8.3f' % (p['phase'][:80], p['ms'], p['host_ms']))
P
echo "== end $(date +%T)"
