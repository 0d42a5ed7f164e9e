#!/bin/sh
# Upgrade the agent OFFLINE from a new wheelhouse, keeping the previous virtualenv for rollback. (The signed,
# staged path with its automatic rollback is `edge-gateway update BUNDLE`: docs/operations.md, "Updating gateways".)
#
#   upgrade.sh --wheelhouse DIR [--root DIR] [--python PY]      install the new version, switch, check
#   upgrade.sh --rollback [--root DIR]                          switch back to the previous venv
#
# Steps: build venvs/<new> beside the current one; it must pass `edge-gateway --version` and
# `edge-gateway doctor --quick` (config and key) BEFORE the switch; then the `current` symlink is replaced
# atomically and the service restarted. If the service is not active HEALTH_WAIT seconds later (default 15), the
# symlink goes back to the previous venv and the service is restarted on it. Only the current and the previous
# venvs are kept. With --root other than /, systemd is not touched (the doctor check is the only gate).
set -eu
ROOT=${DESTDIR:-/} WHEELHOUSE= PYTHON=${PYTHON:-python3} ROLLBACK=0
HEALTH_WAIT=${HEALTH_WAIT:-15}
while [ $# -gt 0 ]; do
    case "$1" in
        --wheelhouse) WHEELHOUSE=$2; shift 2 ;;
        --root) ROOT=$2; shift 2 ;;
        --python) PYTHON=$2; shift 2 ;;
        --rollback) ROLLBACK=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "upgrade.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
R=$(cd "$ROOT" && pwd); R=${R%/}
BASE=$R/opt/edge-gateway
MANIFEST=$BASE/install-manifest
CONFIG=$R/etc/edge-gateway/config.toml
[ -f "$MANIFEST" ] || { echo "upgrade.sh: not installed ($MANIFEST missing); run install.sh" >&2; exit 1; }
REAL=0
[ "$R" = "" ] && [ "$(id -u)" = 0 ] && REAL=1
CURRENT=$(readlink "$BASE/current")

switch_to() {  # atomically point current at $1 (venvs/NAME)
    ln -sfn "$1" "$BASE/current.new" && mv -T "$BASE/current.new" "$BASE/current"
}
healthy() {
    if [ "$REAL" = 1 ]; then
        systemctl restart edge-gateway.service || return 1
        sleep "$HEALTH_WAIT"
        systemctl is-active --quiet edge-gateway.service
    else
        "$BASE/current/bin/python" -m gateway.cli doctor --quick --config "$CONFIG" >/dev/null
    fi
}
version_of() { "$BASE/$1/bin/edge-gateway" --version 2>/dev/null | sed 's/^edge-gateway //'; }
# Before the script restarts the service: tell the agent's next start that an update stopped it ("last stop update",
# gateway/adapters/restart_reason.py). Written as the service user, so root never writes into its directory.
mark_update() {
    [ "$REAL" = 1 ] && [ -d /var/lib/edge-gateway ] || return 0
    as_service sh -c 'umask 077 && printf "%s\n" "$1" >"$2.tmp" && mv "$2.tmp" "$2"' mark "$1" \
        /var/lib/edge-gateway/update-pending || echo "upgrade.sh: could not mark the update for the agent" >&2
}
as_service() { if [ "$REAL" = 1 ]; then runuser -u edge-gateway -- "$@"; else "$@"; fi; }
set_previous() { echo "$1" >"$BASE/previous.tmp" && mv "$BASE/previous.tmp" "$BASE/previous"; }

if [ "$ROLLBACK" = 1 ]; then
    [ -f "$BASE/previous" ] || { echo "upgrade.sh: no previous venv recorded" >&2; exit 1; }
    PREV=$(cat "$BASE/previous")
    [ -x "$BASE/$PREV/bin/edge-gateway" ] || { echo "upgrade.sh: $PREV is gone" >&2; exit 1; }
    switch_to "$PREV"; set_previous "$CURRENT"
    mark_update "rollback $(version_of "$CURRENT") -> $(version_of "$PREV")"
    [ "$REAL" = 1 ] && systemctl restart edge-gateway.service
    echo "rolled back to $PREV"; exit 0
fi

[ -n "$WHEELHOUSE" ] && [ -d "$WHEELHOUSE" ] || { echo "upgrade.sh: --wheelhouse DIR is required" >&2; exit 2; }
WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
PIPWHL=$(ls "$WHEELHOUSE"/pip-*.whl 2>/dev/null | head -n 1)
[ -n "$PIPWHL" ] || { echo "upgrade.sh: $WHEELHOUSE has no pip-*.whl" >&2; exit 2; }
NAME=v-$(date +%Y%m%d%H%M%S)-$$
NEW=$BASE/venvs/$NAME
if [ ! -d "$BASE/venvs" ]; then  # installs since versions/ have no venvs/: recorded before the venv, removed after it
    mkdir -m 0755 "$BASE/venvs" && printf 'd\t%s\n' /opt/edge-gateway/venvs >>"$MANIFEST"
fi
"$PYTHON" -m venv --without-pip "$NEW"
if ! PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$NEW/bin/python" "$PIPWHL/pip" install --quiet --no-index \
        --find-links "$WHEELHOUSE" --no-cache-dir --disable-pip-version-check edge-gateway \
   || ! "$NEW/bin/edge-gateway" --version \
   || ! as_service "$NEW/bin/python" -m gateway.cli doctor --quick --config "$CONFIG"; then
    rm -rf "$NEW"
    echo "upgrade.sh: the new version failed its checks; still running $CURRENT" >&2
    exit 1
fi
printf 't\t%s\n' "/opt/edge-gateway/venvs/$NAME" >>"$MANIFEST"
switch_to "venvs/$NAME"
set_previous "$CURRENT"
grep -q "	/opt/edge-gateway/previous\$" "$MANIFEST" || printf 'f\t%s\n' /opt/edge-gateway/previous >>"$MANIFEST"
mark_update "$(version_of "$CURRENT") -> $(version_of "venvs/$NAME")"
if ! healthy; then
    switch_to "$CURRENT"
    mark_update "rollback $(version_of "venvs/$NAME") -> $(version_of "$CURRENT")"
    [ "$REAL" = 1 ] && systemctl restart edge-gateway.service
    echo "upgrade.sh: the service did not come up on $NAME; rolled back to $CURRENT" >&2
    exit 1
fi
# Keep only current and previous.
for v in "$BASE"/venvs/* "$BASE"/versions/*; do
    [ -d "$v" ] || continue
    n=$(basename "$(dirname "$v")")/$(basename "$v")
    [ "$n" = "venvs/$NAME" ] || [ "$n" = "$CURRENT" ] && continue
    rm -rf "$v"
    grep -v "	/opt/edge-gateway/$n\$" "$MANIFEST" >"$MANIFEST.tmp" && mv "$MANIFEST.tmp" "$MANIFEST"
done
echo "upgraded to $NAME ($("$BASE/current/bin/edge-gateway" --version)); previous: $CURRENT"
