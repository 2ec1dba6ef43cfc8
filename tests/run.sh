#!/usr/bin/env bash
# Install everything the test suite needs (Debian packages for the real peers, the project and its
# test extras in ./.venv) and run the suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(libcoap3-bin mosquitto mosquitto-clients libcbor-xs-perl libjson-perl curl systemd sqlite3
  autoconf automake libtool gcc python3-dev  # these five build DTLSSocket (coaps) from source
  libcoap3-dev make pkgconf)  # build firmware_examples/c_libcoap (tests/test_firmware_examples.py)
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

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
exec .venv/bin/python -m pytest -q "$@"
