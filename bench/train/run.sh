#!/usr/bin/env bash
# Training throughput on CPU for the demo config (SmolLM2-135M-Instruct, NF4-DQ base, f32
# compute, LoRA r8 on five projections, micro-batch 4, 96-token rows): tokens/s over the
# optimizer steps after the first two (warm-up), from the trainer's own Step events.
#   bash bench/train/run.sh            # builds the release binary first
#   PROFILE=dev bash bench/train/run.sh  # the debug-profile binary the tests use
# Needs test-assets/SmolLM2-135M-Instruct (scripts/fetch-test-model.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${PROFILE:-release}
cargo build --profile "$profile" --quiet --bin qlora
bin=./target/$([ "$profile" = dev ] && echo debug || echo "$profile")/qlora
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
start=$(date +%s.%N)
"$bin" train --config configs/demo_smollm2.yaml --output-dir "$out/run" --json >"$out/events.jsonl"
end=$(date +%s.%N)
python3 - "$out/events.jsonl" "$start" "$end" <<'PY'
import json, sys, os
events = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
steps = [e for e in events if e["kind"] == "step"]
rates = [e["tokens_per_s"] for e in steps[2:] if e["tokens_per_s"] > 0]
wall = float(sys.argv[3]) - float(sys.argv[2])
print(f"steps: {len(steps)}, wall {wall:.1f}s (load + train), final loss {steps[-1]['loss']:.4f}")
print(f"training tokens/s (steps 3..): median {sorted(rates)[len(rates)//2]:.1f}, last {rates[-1]:.1f}")
print(f"peak RSS {max(e['memory']['peak_rss_bytes'] for e in steps)/2**20:.0f} MiB, cores {os.cpu_count()}")
PY
