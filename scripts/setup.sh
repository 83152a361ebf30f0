#!/usr/bin/env bash
# Installs what building, running and testing qlora-studio needs on a fresh Debian 12 machine
# of this kind (2 cores, no GPU, package registries only). Idempotent: skips what is there.
#   bash scripts/setup.sh        # everything the tests need
#   bash scripts/setup.sh app    # only what building and running the app needs
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-test}
case "$mode" in app|test) ;; *) echo "setup: unknown mode '$mode' (use 'app' or 'test')" >&2; exit 2;; esac

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: Tauri v2 (WebKitGTK 4.1), a virtual display and the WebDriver for the
# end-to-end tests. See ../shared/tauri/README.md for where this list comes from.
apt_pkgs=(build-essential pkg-config file curl jq libwebkit2gtk-4.1-dev libssl-dev
  libayatana-appindicator3-dev librsvg2-dev libxdo-dev xvfb xauth webkit2gtk-driver)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The web UI's packages.
if [ -f ui/package-lock.json ] && [ ! ui/node_modules/.package-lock.json -nt ui/package-lock.json ]; then
  (cd ui && npm ci --no-audit --no-fund --loglevel=error)
fi
[ "$mode" = app ] && exit 0

# Python packages the tests use, pinned: huggingface_hub for the cache interop tests, and the
# reference stack (torch on CPU, transformers, peft, bitsandbytes) that recorded the fixtures:
# the tests re-check the committed fixtures with it and have peft load adapters we write.
# torch from PyPI is the CUDA build (about 5 GB installed); it runs on the CPU.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  -r scripts/requirements-test.txt -r tests/fixtures/requirements.txt

# tauri-driver drives the real app window in the end-to-end tests. Pinned: crates.io's
# "latest" is a 3.0 alpha.
if ! command -v tauri-driver >/dev/null 2>&1; then
  cargo install --quiet tauri-driver --version 2.1.0 --locked
fi
