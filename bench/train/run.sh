#!/usr/bin/env bash
# Training throughput on CPU for the demo config (SmolLM2-135M-Instruct, NF4-DQ base, f32
# compute, LoRA r8 on five projections, micro-batch 4, 96-token rows), ours and the
# reference side by side in one run: first `qlora train`, then transformers + peft on a
# bitsandbytes NF4 base (bench/train/peft_bench.py) with the same model, data, batches and
# hyper-parameters. Tokens/s = real (non-padding) tokens per optimizer step over its wall
# time; median over the steps after the first two (warm-up). Ours comes from the trainer's
# own Step events. Prints both and the ratio ours / reference.
#   bash bench/train/run.sh              # builds the release binary first
#   PROFILE=dev bash bench/train/run.sh  # the debug-profile binary the tests use
#   REFERENCE=0 bash bench/train/run.sh  # ours only
# Needs test-assets/SmolLM2-135M-Instruct (scripts/fetch-test-model.sh) and, for the
# reference, torch + transformers + peft + bitsandbytes (pip install bitsandbytes).
set -euo pipefail
cd "$(dirname "$0")/../.."
config=${CONFIG:-configs/demo_smollm2.yaml}
profile=${PROFILE:-release}
cargo build --profile "$profile" --quiet --bin qlora
bin=./target/$([ "$profile" = dev ] && echo debug || echo "$profile")/qlora
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "== ours: qlora train ($profile), $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s.%N)
"$bin" train --config "$config" --output-dir "$out/run" --json >"$out/events.jsonl"
end=$(date +%s.%N)
if [ "${REFERENCE:-1}" != 0 ]; then
  echo "== reference: transformers + peft + bitsandbytes, $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  python3 bench/train/peft_bench.py --config "$config" --json "$out/reference.json" 2>&1 |
    grep -v -e '^$' -e 'FutureWarning' -e 'warnings.warn'
fi
python3 - "$out/events.jsonl" "$start" "$end" "$out/reference.json" <<'PY'
import json, sys, os, statistics
events = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
steps = [e for e in events if e["kind"] == "step"]
rates = [e["tokens_per_s"] for e in steps[2:] if e["tokens_per_s"] > 0]
wall = float(sys.argv[3]) - float(sys.argv[2])
ours = statistics.median(rates)
print("== results")
print(f"ours: steps {len(steps)}, wall {wall:.1f}s (load + train), loss {steps[0]['loss']:.4f} -> {steps[-1]['loss']:.4f}")
print(f"ours: training tokens/s (steps 3..): median {ours:.1f}, last {rates[-1]:.1f}")
print(f"ours: peak RSS {max(e['memory']['peak_rss_bytes'] for e in steps)/2**20:.0f} MiB, cores {os.cpu_count()}")
if os.path.exists(sys.argv[4]):
    ref = json.load(open(sys.argv[4]))
    print(f"reference: base {ref['base']}, torch threads {ref['torch_threads']}, {ref['versions']}")
    if ref["base_note"]:
        print(f"reference: {ref['base_note']}")
    print(f"reference: loss {ref['first_loss']:.4f} -> {ref['final_loss']:.4f}")
    print(f"reference: training tokens/s (steps 3..): median {ref['median_tokens_per_s']:.1f}")
    print(f"ratio ours / reference: {ours / ref['median_tokens_per_s']:.2f}x")
PY
