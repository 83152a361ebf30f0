#!/usr/bin/env bash
# End-to-end tests of the desktop app: builds the UI and the app, then drives the real window
# with tauri-driver (-> WebKitWebDriver) inside a virtual display (Xvfb). Page screenshots land
# in docs/screenshots/. Needs what scripts/setup.sh installs (system packages, tauri-driver).
#   bash scripts/test-e2e.sh [test_name ...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

for tool in tauri-driver WebKitWebDriver xvfb-run; do
  command -v "$tool" >/dev/null || { echo "test-e2e: '$tool' is missing: run scripts/setup.sh first" >&2; exit 1; }
done
assets=${QLORA_TEST_ASSETS:-$root/test-assets}
if [ ! -f "$assets/SmolLM2-135M-Instruct/config.json" ]; then
  echo "test-e2e: the test model is missing in $assets/SmolLM2-135M-Instruct: run scripts/fetch-test-model.sh" >&2
  exit 1
fi

(cd ui && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; } && npm run --silent build)
cargo build -p qlora-studio-app -p qlora-hub-testserver

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export QLORA_APP="$root/target/debug/qlora-studio-app"
export QLORA_HUB_TESTSERVER="$root/target/debug/qlora-hub-testserver"
export QLORA_STUDIO_HOME="$work/home"          # fresh settings and conversations
export QLORA_STUDIO_LOCAL_MODELS="$assets"     # the starter model, ready without the Hub
export HF_HOME="$work/hf"                      # an empty Hugging Face cache
export SCREENSHOTS=${SCREENSHOTS:-$root/docs/screenshots}
export E2E_ARTIFACTS=${E2E_ARTIFACTS:-$work/artifacts}
export TAURI_DRIVER_PORT=${TAURI_DRIVER_PORT:-4444}
native_port=$((TAURI_DRIVER_PORT + 1))

xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp" bash -c '
  tauri-driver --port "$TAURI_DRIVER_PORT" --native-port '"$native_port"' >"$E2E_ARTIFACTS.driver.log" 2>&1 & td=$!
  trap "kill $td 2>/dev/null" EXIT
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$TAURI_DRIVER_PORT/status" >/dev/null && break; sleep 0.1; done
  python3 tests/e2e/test_app.py "$@"' e2e "$@"
