#!/bin/sh
# First boot of a freshly flashed Raspberry Pi OS card: install edge-gateway OFFLINE from this bundle.
#
# The bundle (made by `edge-gateway provision ... --bundle DIR`) is copied to the boot partition as
#   /boot/firmware/edge-gateway/{firstboot.sh,SHA256SUMS,config.toml,key.pem,wheelhouse/,deploy/}
# and this script runs once as root: from cloud-init (user-data.example, runcmd) or from a cmdline.txt
# `systemd.run=` hook. It logs to /var/log/edge-gateway-firstboot.log and is safe to run again (it stops early
# when the agent is already installed).
#
# What it does: check SHA256SUMS; deploy/install.sh (venv from the wheelhouse, service user edge-gateway in
# dialout+bluetooth, config 0600 edge-gateway in /etc/edge-gateway (it holds the console PIN hash and any broker
# password; the console may rewrite it), key 0600 edge-gateway, systemd unit enabled and started, udev rules);
# then shred every secret from the boot partition, which a FAT file system cannot protect: key.pem (the private
# key) and config.toml (the PIN hash, broker credentials). They now live only in /var/lib and /etc/edge-gateway.
#
# DESTDIR=DIR runs it against DIR as the root (the tests do; install.sh takes DESTDIR too).
set -eu
BUNDLE=$(cd "$(dirname "$0")" && pwd)
R=${DESTDIR:-}
R=${R%/}
LOG=${FIRSTBOOT_LOG:-$R/var/log/edge-gateway-firstboot.log}
mkdir -p "$(dirname "$LOG")"
exec >>"$LOG" 2>&1
echo "== edge-gateway first boot $(date -Is) from $BUNDLE"
# When started from cmdline.txt (systemd.run=), take that hook out first, or every boot would run it again.
for c in "$R/boot/firmware/cmdline.txt" "$R/boot/cmdline.txt"; do
    [ -f "$c" ] && grep -q "edge-gateway/firstboot.sh" "$c" && \
        sed -i 's| systemd.run=[^ ]*edge-gateway/firstboot.sh||; s| systemd.run_success_action=[^ ]*||; s| systemd.unit=kernel-command-line.target||' "$c"
done

# Overwrite, then delete: a FAT partition keeps no permissions, so a file left there is readable by anyone.
scrub() {
    for f in "$@"; do
        [ -f "$f" ] || continue
        shred -u "$f" 2>/dev/null || rm -f "$f"
        echo "removed $f from the boot partition"
    done
}

if [ -e "$R/opt/edge-gateway/install-manifest" ]; then
    echo "already installed; nothing to do"
    scrub "$BUNDLE/key.pem" "$BUNDLE/config.toml"  # left by an earlier run that stopped half-way
    exit 0
fi
cd "$BUNDLE"
if ! sha256sum --quiet -c SHA256SUMS; then
    echo "bundle is damaged (SHA256SUMS mismatch): copy it again from the provisioning machine"; exit 1
fi
PY=${PYTHON:-$(command -v python3)} || { echo "python3 missing: this is not Raspberry Pi OS?"; exit 1; }
sh "$BUNDLE/deploy/install.sh" --root "${R:-/}" --wheelhouse "$BUNDLE/wheelhouse" --config "$BUNDLE/config.toml" \
    --key "$BUNDLE/key.pem" --python "$PY"
# The key lives in /var/lib/edge-gateway (0600) now, the config with the PIN hash in /etc/edge-gateway (0600):
# nothing secret may stay on the boot partition.
[ -f "$R/etc/edge-gateway/config.toml" ] && [ -f "$R/var/lib/edge-gateway/key.pem" ] || {
    echo "install.sh left no config or key in place: keeping the bundle's copies for another try"; exit 1; }
scrub "$BUNDLE/key.pem" "$BUNDLE/config.toml"
echo "== done: $(systemctl is-active edge-gateway.service 2>/dev/null || true)"
