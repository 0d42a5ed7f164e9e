"""``edge-gateway update build``: an update bundle from a wheelhouse, signed with an operator key (an operator's
tool; it runs from a checkout, never on a gateway; docs/operations.md, "Updating gateways").

    edge-gateway update build --key operator.pem --wheelhouse DIR --version V --min-version V --out FILE

The bundle is one uncompressed tar: ``manifest.cose`` first (``gateway.core.update``: the version, the minimum
version it may replace, every wheel's name, sha256 and size, signed as COSE_Sign1), then the wheels in the
manifest's order. Wheels are already compressed; a plain tar lets a technician list it with ``tar tf``. Members
carry no owner and a fixed time, so the same inputs give the same bytes. The wheelhouse is what
``provision --bundle`` builds (``tools/wheelhouse.py``): the agent's wheel for ``--version``, its dependencies
for the gateway's platform, and pip.
"""

import argparse
import hashlib
import io
import os
import sys
import tarfile
import time

from gateway.adapters import keys
from gateway.adapters.files import write_atomic
from gateway.core.errors import GatewayError
from gateway.core.update import MANIFEST_NAME, sign_manifest


def build(wheelhouse, key, version, min_version, out, created=None):
    """Write the bundle to ``out`` (atomically); returns ``(out, manifest bytes, [(name, sha256, size), ...])``."""
    names = sorted(n for n in os.listdir(wheelhouse) if n.endswith(".whl"))
    files = []
    for name in names:
        with open(os.path.join(wheelhouse, name), "rb") as f:
            data = f.read()
        files.append((name, hashlib.sha256(data).digest(), len(data)))
    manifest = sign_manifest(key, version, min_version, int(time.time() if created is None else created), files)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _add(tar, MANIFEST_NAME, manifest)
        for name, _, _ in files:
            with open(os.path.join(wheelhouse, name), "rb") as f:
                _add(tar, name, f.read())
    write_atomic(out, buf.getvalue(), 0o644)
    return out, manifest, files


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def main(argv):
    p = argparse.ArgumentParser(prog="edge-gateway update build", description="Build a signed update bundle from "
                                "a wheelhouse (the agent's wheel, its dependencies for the gateway, pip).")
    p.add_argument("--key", required=True, metavar="FILE", help="the operator's private key (operator.pem)")
    p.add_argument("--wheelhouse", required=True, metavar="DIR", help="the wheels (provision --bundle builds them)")
    p.add_argument("--version", required=True, metavar="V", help="the agent version the bundle installs")
    p.add_argument("--min-version", required=True, metavar="V", help="the oldest running version it may replace")
    p.add_argument("--out", required=True, metavar="FILE", help="the bundle to write (e.g. edge-gateway-V.bundle)")
    args = p.parse_args(argv)
    try:
        key = keys.load_private(args.key)
        out, manifest, files = build(args.wheelhouse, key, args.version, args.min_version, args.out)
    except (GatewayError, OSError) as exc:
        print("edge-gateway: %s" % exc, file=sys.stderr)
        return 1
    with open(out, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    print("%s: edge-gateway %s (replaces %s or later), %d wheels, key %s\nsha256 %s"
          % (out, args.version, args.min_version, len(files), key.kid, digest))
    return 0
