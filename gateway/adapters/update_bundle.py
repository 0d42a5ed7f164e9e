"""Update bundles on disk: one uncompressed tar holding ``manifest.cose`` (first) and the wheels it lists
(docs/operations.md, "Updating gateways"; the manifest is ``gateway.core.update``).

A bundle is hostile until its manifest verifies and every wheel matches it: ``read_manifest`` takes nothing but
the manifest member (bounded), and ``extract`` writes only the members the verified manifest names, each bounded
by its listed size and checked against its sha256 before it is renamed into place; any other member, a link, a
directory or a path is refused (``extra_file``), and a listed wheel that is absent is ``missing_file``.
"""

import hashlib
import os
import tarfile

from gateway.adapters.files import fsync_dir
from gateway.core.update import MANIFEST_NAME, MAX_FILES, MAX_MANIFEST_BYTES, UpdateError, verify_manifest

CHUNK = 1 << 16


def _open(path):
    try:
        return tarfile.open(path, "r:")
    except FileNotFoundError:
        raise UpdateError("bundle %s does not exist" % path, "malformed") from None
    except (tarfile.TarError, OSError) as exc:
        raise UpdateError("bundle %s is not an update bundle (an uncompressed tar): %s" % (path, exc),
                          "malformed") from None


def read_manifest(path, operators):
    """The bundle's verified ``Manifest`` and its signed bytes; raises ``UpdateError``."""
    with _open(path) as tar:
        try:
            member = tar.next()
        except tarfile.TarError as exc:
            raise UpdateError("bundle %s: %s" % (path, exc), "malformed") from None
        if member is None or member.name != MANIFEST_NAME or not member.isfile():
            raise UpdateError("bundle %s does not start with %s: not built by 'edge-gateway update build'"
                              % (path, MANIFEST_NAME), "unsigned")
        if member.size > MAX_MANIFEST_BYTES:
            raise UpdateError("bundle %s: manifest of %d bytes is over the limit" % (path, member.size), "malformed")
        data = tar.extractfile(member).read(MAX_MANIFEST_BYTES + 1)
    return verify_manifest(data, operators), data


def extract(path, manifest, dest):
    """Write the wheels of the verified ``manifest`` from bundle ``path`` into ``dest`` (created); return their
    paths. Every byte is checked against the manifest before a wheel gets its name."""
    os.makedirs(dest, mode=0o755, exist_ok=True)
    wanted = {f.name: f for f in manifest.files}
    done = []
    with _open(path) as tar:
        count = 0
        while True:
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                raise UpdateError("bundle %s is damaged after %d members: %s" % (path, count, exc),
                                  "digest") from None
            if member is None:
                break
            count += 1
            if count > MAX_FILES + 1:
                raise UpdateError("bundle %s holds more members than its manifest lists" % path, "extra_file")
            if member.name == MANIFEST_NAME and count == 1:
                continue
            entry = wanted.pop(member.name, None)
            if entry is None or not member.isfile():
                raise UpdateError("bundle %s holds %r, which its manifest does not list" % (path, member.name[:80]),
                                  "extra_file")
            if member.size != entry.size:
                raise UpdateError("%s is %d bytes in the bundle, the manifest says %d" % (entry.name, member.size,
                                                                                          entry.size), "digest")
            done.append(_write_checked(tar.extractfile(member), entry, dest))
    if wanted:
        raise UpdateError("bundle %s lacks %s, listed in its manifest" % (path, ", ".join(sorted(wanted))),
                          "missing_file")
    fsync_dir(dest)
    return done


def _write_checked(src, entry, dest):
    target = os.path.join(dest, entry.name)
    tmp = target + ".part"
    digest, size = hashlib.sha256(), 0
    with open(tmp, "wb") as out:
        while True:
            chunk = src.read(min(CHUNK, entry.size + 1 - size))
            if not chunk:
                break
            size += len(chunk)
            if size > entry.size:
                break
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if size != entry.size or digest.digest() != entry.sha256:
        os.unlink(tmp)
        raise UpdateError("%s does not match its sha256 in the manifest (altered or damaged bundle): refused"
                          % entry.name, "digest")
    os.replace(tmp, target)
    return target

