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
# dialout+bluetooth, config 0660 root:edge-gateway (the console may rewrite it), key 0600 edge-gateway, systemd unit enabled and started, udev
# rules); then remove the private key from the boot partition (a FAT partition cannot protect it).
set -eu
BUNDLE=$(cd "$(dirname "$0")" && pwd)
LOG=${FIRSTBOOT_LOG:-/var/log/edge-gateway-firstboot.log}
exec >>"$LOG" 2>&1
echo "== edge-gateway first boot $(date -Is) from $BUNDLE"
# When started from cmdline.txt (systemd.run=), take that hook out first, or every boot would run it again.
for c in /boot/firmware/cmdline.txt /boot/cmdline.txt; do
    [ -f "$c" ] && grep -q "edge-gateway/firstboot.sh" "$c" && \
        sed -i 's| systemd.run=[^ ]*edge-gateway/firstboot.sh||; s| systemd.run_success_action=[^ ]*||; s| systemd.unit=kernel-command-line.target||' "$c"
done

if [ -e /opt/edge-gateway/install-manifest ]; then
    echo "already installed; nothing to do"; exit 0
fi
cd "$BUNDLE"
if ! sha256sum --quiet -c SHA256SUMS; then
    echo "bundle is damaged (SHA256SUMS mismatch): copy it again from the provisioning machine"; exit 1
fi
PY=$(command -v python3) || { echo "python3 missing: this is not Raspberry Pi OS?"; exit 1; }
sh "$BUNDLE/deploy/install.sh" --wheelhouse "$BUNDLE/wheelhouse" --config "$BUNDLE/config.toml" \
    --key "$BUNDLE/key.pem" --python "$PY"
# The key now lives in /var/lib/edge-gateway (0600); overwrite and delete the boot partition's copy.
if [ -f "$BUNDLE/key.pem" ]; then
    shred -u "$BUNDLE/key.pem" 2>/dev/null || rm -f "$BUNDLE/key.pem"
fi
echo "== done: $(systemctl is-active edge-gateway.service 2>/dev/null || true)"
