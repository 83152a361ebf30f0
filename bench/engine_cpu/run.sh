#!/usr/bin/env bash
# CPU prefill and decode tokens/s of SmolLM2-135M-Instruct (scripts/fetch-test-model.sh):
# ours (f32, bf16, NF4) and transformers (f32, bf16) one after the other in the same run, on
# the same model folder. Results go to docs/BENCHMARKS.md by hand.
# Usage: bash bench/engine_cpu/run.sh   (PROFILE=release for a release build; default dev,
# where dependencies such as candle's gemm are optimised and our crates are at opt-level 1)
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${MODEL:-${QLORA_TEST_ASSETS:-$PWD/test-assets}/SmolLM2-135M-Instruct}
[ -f "$model/config.json" ] || { echo "missing $model: run scripts/fetch-test-model.sh" >&2; exit 1; }
profile=${PROFILE:-dev}
cargo build --quiet --profile "$profile" -p qlora-engine --example cpu_bench
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), profile $profile"
"target/$dir/examples/cpu_bench" "$model" "${OURS:-f32,bf16,nf4}"
python3 bench/engine_cpu/transformers_bench.py "$model" "${THEIRS:-f32,bf16}"
