#!/bin/sh
# Install the edge-gateway agent OFFLINE from a wheelhouse (docs/operations.md, "Installer's guide").
#
#   install.sh --wheelhouse DIR [--config FILE] [--key FILE] [--root DIR] [--python PY] [--no-start]
#
# --root DIR (or DESTDIR=DIR) installs into DIR as if it were /, for tests and chroots: the virtualenv is built in
# place (DIR/opt/edge-gateway/...), so DIR is a sandbox root, not a staging area to copy elsewhere. With a root
# other than /, no user is created, nothing is chowned and systemd/udev are not touched.
#
# Layout (relative to the root):
#   opt/edge-gateway/versions/<version>/         the virtualenv (`edge-gateway update` adds the next one beside it;
#                                                installs before versions/ used venvs/<stamp>/, still understood)
#   opt/edge-gateway/current -> versions/...     the active venv; the unit runs current/bin/edge-gateway
#   opt/edge-gateway/supervise.sh                the update supervisor (the unit's ExecStartPre=/ExecStopPost=)
#   usr/local/bin/edge-gateway -> ../../../opt/edge-gateway/current/bin/edge-gateway
#   etc/edge-gateway/config.toml                 0600, owned by edge-gateway (it holds the console PIN hash and any
#                                                broker password; the console rewrites it); not replaced if present
#   var/lib/edge-gateway/key.pem                 0600, owned by edge-gateway (not replaced if present)
#   etc/systemd/system/edge-gateway.service, edge-gateway-update.path and .service (installs staged updates),
#   etc/udev/rules.d/99-edge-gateway-serial.rules
#   opt/edge-gateway/install-manifest            every path this script created; uninstall.sh removes exactly those
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=${DESTDIR:-/}
WHEELHOUSE= CONFIG= KEY= PYTHON=${PYTHON:-python3} START=1
while [ $# -gt 0 ]; do
    case "$1" in
        --wheelhouse) WHEELHOUSE=$2; shift 2 ;;
        --config) CONFIG=$2; shift 2 ;;
        --key) KEY=$2; shift 2 ;;
        --root) ROOT=$2; shift 2 ;;
        --python) PYTHON=$2; shift 2 ;;
        --no-start) START=0; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$WHEELHOUSE" ] && [ -d "$WHEELHOUSE" ] || { echo "install.sh: --wheelhouse DIR is required" >&2; exit 2; }
WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
ROOT=$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)
R=${ROOT%/}
BASE=$R/opt/edge-gateway
MANIFEST=$BASE/install-manifest
SERVICE_USER=edge-gateway
if [ -e "$MANIFEST" ]; then
    echo "install.sh: already installed ($MANIFEST exists); use upgrade.sh, or uninstall.sh first" >&2
    exit 1
fi
REAL=0
[ "$R" = "" ] && [ "$(id -u)" = 0 ] && REAL=1

ENTRIES=$(mktemp)
trap 'rm -f "$ENTRIES"' EXIT
note() { printf '%s\t%s\n' "$1" "$2" >>"$ENTRIES"; }
mkdirs() {  # create a directory and each missing parent, recording the ones we made (parents first)
    d=$1 missing=
    while [ ! -d "$R$d" ]; do missing="$d $missing"; d=$(dirname "$d"); done
    for m in $missing; do mkdir -m "${2:-0755}" "$R$m"; note d "$m"; done
}
put() {  # put SRC DEST MODE: copy a file unless DEST exists
    if [ -e "$R$2" ]; then echo "install.sh: keeping existing $2"; return 1; fi
    mkdirs "$(dirname "$2")"
    cp "$1" "$R$2.tmp.$$" && chmod "$3" "$R$2.tmp.$$" && mv "$R$2.tmp.$$" "$R$2"
    note f "$2"
}

PIPWHL=$(ls "$WHEELHOUSE"/pip-*.whl 2>/dev/null | head -n 1)
[ -n "$PIPWHL" ] || { echo "install.sh: $WHEELHOUSE has no pip-*.whl" >&2; exit 2; }

# 1. The virtualenv, offline. pip runs from its own wheel, so python3-venv's ensurepip is not needed.
mkdirs /opt/edge-gateway
mkdirs /opt/edge-gateway/versions
# The venv is built under its final name (its scripts name their interpreter by absolute path, so it cannot be
# moved); `.complete` inside it says it was finished and checked (edge-gateway update removes unfinished ones).
WHL=$(ls "$WHEELHOUSE"/edge_gateway-*.whl 2>/dev/null | sort -V | tail -n 1)
[ -n "$WHL" ] || { echo "install.sh: $WHEELHOUSE has no edge_gateway-*.whl" >&2; exit 2; }
NAME=$(basename "$WHL" | cut -d- -f2)
VENV=$BASE/versions/$NAME
rm -rf "$VENV"  # a leftover of an interrupted install of this very version
"$PYTHON" -m venv --without-pip "$VENV"
note t "/opt/edge-gateway/versions/$NAME"
if ! PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$VENV/bin/python" "$PIPWHL/pip" install --quiet --no-index \
        --find-links "$WHEELHOUSE" --no-cache-dir --disable-pip-version-check "edge-gateway==$NAME" \
   || ! "$VENV/bin/edge-gateway" --version; then
    echo "install.sh: pip could not install edge-gateway $NAME from $WHEELHOUSE" >&2
    rm -rf "$VENV"; exit 1
fi
: >"$VENV/.complete"
ln -s "versions/$NAME" "$BASE/current"
note l /opt/edge-gateway/current
put "$HERE/supervise.sh" /opt/edge-gateway/supervise.sh 0755 || true
mkdirs /usr/local/bin
if [ ! -e "$R/usr/local/bin/edge-gateway" ] && [ ! -L "$R/usr/local/bin/edge-gateway" ]; then
    ln -s ../../../opt/edge-gateway/current/bin/edge-gateway "$R/usr/local/bin/edge-gateway"
    note l /usr/local/bin/edge-gateway
fi

# 2. The service user (real installs only).
if [ "$REAL" = 1 ] && ! id "$SERVICE_USER" >/dev/null 2>&1; then
    groups=
    for g in dialout bluetooth; do getent group "$g" >/dev/null && groups="${groups:+$groups,}$g"; done
    useradd --system --user-group --home-dir /var/lib/edge-gateway --no-create-home \
        --shell /usr/sbin/nologin ${groups:+--groups "$groups"} "$SERVICE_USER"
    note u "$SERVICE_USER"
fi

# 3. Config and key.
mkdirs /etc/edge-gateway 0770  # group-writable: the console's `config set` rewrites config.toml
mkdirs /var/lib/edge-gateway 0700
if [ -n "$CONFIG" ]; then put "$CONFIG" /etc/edge-gateway/config.toml 0600 || true
elif [ ! -e "$R/etc/edge-gateway/config.toml" ]; then
    put "$HERE/config.example.toml" /etc/edge-gateway/config.toml 0600
    echo "install.sh: installed the EXAMPLE config; edit /etc/edge-gateway/config.toml before starting"
    START=0
fi
if [ -n "$KEY" ]; then put "$KEY" /var/lib/edge-gateway/key.pem 0600 || true; fi
if [ "$REAL" = 1 ]; then
    chown root:"$SERVICE_USER" "$R/etc/edge-gateway"
    chown "$SERVICE_USER:$SERVICE_USER" "$R/etc/edge-gateway/config.toml"
    chown -R "$SERVICE_USER:$SERVICE_USER" "$R/var/lib/edge-gateway"
fi

# 4. systemd unit and udev rules.
put "$HERE/systemd/edge-gateway.service" /etc/systemd/system/edge-gateway.service 0644 || true
put "$HERE/systemd/edge-gateway-update.path" /etc/systemd/system/edge-gateway-update.path 0644 || true
put "$HERE/systemd/edge-gateway-update.service" /etc/systemd/system/edge-gateway-update.service 0644 || true
put "$HERE/udev/99-edge-gateway-serial.rules" /etc/udev/rules.d/99-edge-gateway-serial.rules 0644 || true

# 5. The manifest (written last: its presence means "installed").
note f /opt/edge-gateway/install-manifest
cp "$ENTRIES" "$MANIFEST.tmp" && mv "$MANIFEST.tmp" "$MANIFEST"

if [ "$REAL" = 1 ]; then
    udevadm control --reload 2>/dev/null && udevadm trigger --subsystem-match=tty 2>/dev/null || true
    systemctl daemon-reload
    systemctl enable edge-gateway.service edge-gateway-update.path
    systemctl start edge-gateway-update.path || true
    if [ "$START" = 1 ]; then
        systemctl restart edge-gateway.service
        runuser -u edge-gateway -- /opt/edge-gateway/current/bin/python -m gateway.cli doctor --config /etc/edge-gateway/config.toml || \
            echo "install.sh: doctor reported problems (see above); the service is installed" >&2
    fi
fi
echo "installed edge-gateway into ${R:-/} (versions/$NAME)"
