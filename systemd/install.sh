#!/usr/bin/env bash
# Install matrix-gateway as a service on Raspberry Pi OS (Bookworm) or any Debian with systemd:
#   sudo bash systemd/install.sh
# It installs the hub into its own venv (/opt/matrix-gateway/venv), the hardened unit, a system
# user, a config bound to the LAN with authentication on and mDNS discovery, then creates the first
# admin account and a device token and prints them once. Re-running upgrades the code and keeps the
# hub's data, config and accounts.
#
# Options:
#   --root DIR           install into DIR as if it were / (for CI and for image builders); nothing
#                        is started and the running system is not touched
#   --prefix DIR         where the venv goes (default /opt/matrix-gateway)
#   --server-name NAME   Matrix server name (default: HOSTNAME.local)
#   --bind ADDR          listen address (default 0.0.0.0: the LAN)
#   --admin NAME         first admin account (default admin)
#   --device NAME        device id for the first token (default first-device)
#   --preseed FILE       start from this matrix-gateway.toml (default: /boot/firmware/matrix-gateway.toml
#                        if it exists: a file put on the SD card's boot partition before first boot)
#   --credentials-file F also write the first credentials to F (mode 0600)
#   --at-next-boot       only schedule the installation for the next boot with network (for
#                        Raspberry Pi Imager's firstrun.sh, which runs before the network is up)
#   --no-start           do not enable and start the service
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT=""
PREFIX=/opt/matrix-gateway
SERVER_NAME=""
BIND=""
ADMIN=admin
DEVICE=first-device
PRESEED=""
CREDENTIALS=""
AT_NEXT_BOOT=0
START=1
STATE=/var/lib/matrix-gateway
UNIT=matrix-gateway.service

die() { echo "install.sh: error: $*" >&2; exit 2; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) need_value "$@"; ROOT="$(realpath -m "$2")"; START=0; shift 2 ;;
    --prefix) need_value "$@"; PREFIX="$2"; shift 2 ;;
    --server-name) need_value "$@"; SERVER_NAME="$2"; shift 2 ;;
    --bind) need_value "$@"; BIND="$2"; shift 2 ;;
    --admin) need_value "$@"; ADMIN="$2"; shift 2 ;;
    --device) need_value "$@"; DEVICE="$2"; shift 2 ;;
    --preseed) need_value "$@"; PRESEED="$2"; shift 2 ;;
    --credentials-file) need_value "$@"; CREDENTIALS="$2"; shift 2 ;;
    --at-next-boot) AT_NEXT_BOOT=1; shift ;;
    --no-start) START=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
[ -n "$ROOT" ] || [ "$(id -u)" -eq 0 ] || die "run it as root (sudo bash $0), or with --root DIR"
if [ -z "$PRESEED" ] && [ -f "$ROOT/boot/firmware/matrix-gateway.toml" ]; then
  PRESEED="$ROOT/boot/firmware/matrix-gateway.toml"
fi
[ -z "$PRESEED" ] || [ -f "$PRESEED" ] || die "preseed file $PRESEED not found"

install -d -m 0755 "$ROOT/etc/systemd/system" "$ROOT/usr/lib/sysusers.d" "$ROOT/usr/lib/tmpfiles.d"

if [ "$AT_NEXT_BOOT" -eq 1 ]; then
  # A one-shot unit that runs this script once the network is up, then never again.
  args=(--admin "$ADMIN" --device "$DEVICE" --credentials-file "$STATE/initial-credentials.txt")
  [ -z "$SERVER_NAME" ] || args+=(--server-name "$SERVER_NAME")
  [ -z "$BIND" ] || args+=(--bind "$BIND")
  [ -z "$PRESEED" ] || args+=(--preseed "${PRESEED#"$ROOT"}")
  cat > "$ROOT/etc/systemd/system/matrix-gateway-install.service" <<UNIT
[Unit]
Description=Install matrix-gateway once the network is up (scheduled by install.sh --at-next-boot)
Wants=network-online.target
After=network-online.target
ConditionPathExists=!$PREFIX/venv/bin/matrix-gateway

[Service]
Type=oneshot
ExecStart=/bin/bash ${SRC#"$ROOT"}/systemd/install.sh ${args[*]}

[Install]
WantedBy=multi-user.target
UNIT
  install -d -m 0755 "$ROOT/etc/systemd/system/multi-user.target.wants"
  ln -sf ../matrix-gateway-install.service "$ROOT/etc/systemd/system/multi-user.target.wants/matrix-gateway-install.service"
  echo "matrix-gateway will be installed at the next boot with network; then read the first credentials with:"
  echo "  sudo cat $STATE/initial-credentials.txt && sudo rm $STATE/initial-credentials.txt"
  exit 0
fi

command -v python3 >/dev/null || die "python3 is missing (apt-get install python3)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11 or newer is needed"
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  [ -z "$ROOT" ] || die "python3-venv is missing"
  apt-get install -y python3-venv
fi

echo "==> installing the hub into $PREFIX/venv"
VENV="$ROOT$PREFIX/venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$SRC"

echo "==> installing the unit, the system user and the state directory"
sed "s#@VENV@#$PREFIX/venv#g" "$SRC/systemd/$UNIT" > "$ROOT/etc/systemd/system/$UNIT"
chmod 0644 "$ROOT/etc/systemd/system/$UNIT"
install -m 0644 "$SRC/systemd/matrix-gateway.sysusers.conf" "$ROOT/usr/lib/sysusers.d/matrix-gateway.conf"
install -m 0644 "$SRC/systemd/matrix-gateway.tmpfiles.conf" "$ROOT/usr/lib/tmpfiles.d/matrix-gateway.conf"
root_args=()
[ -z "$ROOT" ] || root_args=(--root="$ROOT")
systemd-sysusers "${root_args[@]}" "$ROOT/usr/lib/sysusers.d/matrix-gateway.conf"
systemd-tmpfiles --create "${root_args[@]}" "$ROOT/usr/lib/tmpfiles.d/matrix-gateway.conf"

echo "==> setting up the hub in $STATE"
first=(--data-dir "$ROOT$STATE" --admin "$ADMIN" --device "$DEVICE")
[ -z "$SERVER_NAME" ] || first+=(--server-name "$SERVER_NAME")
[ -z "$BIND" ] || first+=(--bind "$BIND")
[ -z "$PRESEED" ] || first+=(--preseed "$PRESEED")
[ -z "$CREDENTIALS" ] || first+=(--credentials-file "$ROOT$CREDENTIALS")
"$VENV/bin/python" -m gateway.ops.firstrun "${first[@]}"
# The files belong to the service's user (numeric ids from the target's own /etc/passwd).
ids="$(awk -F: '$1 == "matrix-gateway" {print $3 ":" $4}' "$ROOT/etc/passwd")"
[ -n "$ids" ] || die "the matrix-gateway user was not created"
chown -R "$ids" "$ROOT$STATE"
chmod 0700 "$ROOT$STATE"

if [ "$START" -eq 1 ] && [ -d /run/systemd/system ]; then
  echo "==> starting matrix-gateway"
  systemctl daemon-reload
  systemctl enable --now "$UNIT"
  systemctl disable matrix-gateway-install.service 2>/dev/null || true
  echo "running: see 'systemctl status matrix-gateway' and 'sudo -u matrix-gateway $PREFIX/venv/bin/matrix-gateway status --data-dir $STATE'"
else
  echo "installed; start it with: systemctl enable --now $UNIT"
fi
