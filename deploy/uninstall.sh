#!/bin/sh
# Remove exactly what install.sh (and upgrade.sh) added, as listed in opt/edge-gateway/install-manifest.
#
#   uninstall.sh [--root DIR] [--purge]
#
# Files the agent wrote itself (the queue in /var/lib/edge-gateway) are not in the manifest: they stay, and so do
# the directories holding them, unless --purge also deletes /var/lib/edge-gateway and /etc/edge-gateway.
# Careful: --purge deletes the gateway's private key and any batches not yet delivered.
set -eu
ROOT=${DESTDIR:-/} PURGE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=$2; shift 2 ;;
        --purge) PURGE=1; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "uninstall.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
R=$(cd "$ROOT" && pwd); R=${R%/}
MANIFEST=$R/opt/edge-gateway/install-manifest
[ -f "$MANIFEST" ] || { echo "uninstall.sh: $MANIFEST not found: nothing installed here" >&2; exit 1; }
REAL=0
[ "$R" = "" ] && [ "$(id -u)" = 0 ] && REAL=1
if [ "$REAL" = 1 ]; then
    systemctl disable --now edge-gateway.service 2>/dev/null || true
fi
if [ "$PURGE" = 1 ]; then
    rm -rf "$R/var/lib/edge-gateway" "$R/etc/edge-gateway"
fi
# Reverse order: children before their directories.
tac "$MANIFEST" | while IFS="$(printf '\t')" read -r kind path; do
    case "$path" in ''|*..*) echo "uninstall.sh: skipping suspicious manifest entry '$path'" >&2; continue ;; esac
    case "$kind" in
        f|l) rm -f "$R$path" ;;
        t) rm -rf "$R$path" ;;
        d) [ -d "$R$path" ] || continue
           rmdir "$R$path" 2>/dev/null || echo "uninstall.sh: kept $path (holds files the agent wrote; --purge removes them)" ;;
        u) [ "$REAL" = 1 ] && userdel "$path" 2>/dev/null || true ;;
        *) echo "uninstall.sh: unknown manifest entry '$kind'" >&2 ;;
    esac
done
if [ "$REAL" = 1 ]; then
    systemctl daemon-reload || true
    udevadm control --reload 2>/dev/null || true
fi
echo "uninstalled edge-gateway from ${R:-/}"
