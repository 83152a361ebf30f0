#!/usr/bin/env bash
# Measures the app's cold start to an interactive window and its idle memory (see startup.py).
#   bash bench/app/run.sh            # the debug build the tests use
#   PROFILE=release bash bench/app/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
profile=${PROFILE:-debug}
(cd ui && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; } && npm run --silent build)
if [ "$profile" = release ]; then cargo build --release -p qlora-studio-app; else cargo build -p qlora-studio-app; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export QLORA_APP="$root/target/$profile/qlora-studio-app" QLORA_STUDIO_HOME="$work/home" HF_HOME="$work/hf"
export QLORA_STUDIO_LOCAL_MODELS="${QLORA_TEST_ASSETS:-$root/test-assets}"
export TAURI_DRIVER_PORT=${TAURI_DRIVER_PORT:-4454}
xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp" bash -c '
  tauri-driver --port "$TAURI_DRIVER_PORT" --native-port $((TAURI_DRIVER_PORT + 1)) >"$QLORA_STUDIO_HOME.driver.log" 2>&1 & td=$!
  trap "kill $td 2>/dev/null" EXIT
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$TAURI_DRIVER_PORT/status" >/dev/null && break; sleep 0.1; done
  python3 bench/app/startup.py'
