"""Fetch an update bundle over HTTP(S), resuming where an earlier try stopped (HTTP Range), and check its digest.

``fetch(url, dest, sha256_hex)`` keeps what arrived in ``dest + ".part"``: the next call asks for the rest
(``Range: bytes=N-``) and appends when the server answers 206 from byte N, or starts over when it answers 200.
When the file is whole its sha256 must equal the one the signed command named; otherwise the part is deleted
(``UpdateError("digest")``) so the next try starts clean. TLS certificates are verified (``ca_file`` adds a CA).
Size is bounded (``max_bytes``); every network failure is ``UpdateError("fetch")`` and keeps the part.
"""

import hashlib
import http.client
import os
import re
import ssl
import urllib.error
import urllib.request

from gateway.adapters.files import fsync_dir
from gateway.core.update import UpdateError

CHUNK = 1 << 16
MAX_BUNDLE_BYTES = 512 << 20
_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def fetch(url, dest, sha256_hex, max_bytes=MAX_BUNDLE_BYTES, timeout=30.0, ca_file=None):
    """Download ``url`` to ``dest`` (resumable); returns ``(dest, bytes fetched by this call)``."""
    if not url.startswith(("http://", "https://")):
        raise UpdateError("bundle URL must be http:// or https://, got %r" % url[:60], "fetch")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256_hex or ""):
        raise UpdateError("sha256 must be 64 lowercase hex digits", "fetch")
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if have > max_bytes:
        os.unlink(part)
        have = 0
    got = 0
    if have == 0 or not _whole(part, sha256_hex):
        got = _download(url, part, have, max_bytes, timeout, ca_file)
    if not _whole(part, sha256_hex):
        os.unlink(part)
        raise UpdateError("bundle from %s does not match the sha256 the command named (deleted; the next try "
                          "fetches it again)" % _safe(url), "digest")
    os.replace(part, dest)
    fsync_dir(os.path.dirname(os.path.abspath(dest)))
    return dest, got


def _whole(path, sha256_hex):
    if not os.path.exists(path):
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest() == sha256_hex


def _safe(url):
    return re.sub(r"//[^/@]*@", "//<redacted>@", url)[:200]


def _download(url, part, have, max_bytes, timeout, ca_file):
    request = urllib.request.Request(url, headers={"Range": "bytes=%d-" % have} if have else {})
    context = ssl.create_default_context(cafile=ca_file or None) if url.startswith("https://") else None
    try:
        response = urllib.request.urlopen(request, timeout=timeout, context=context)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after byte ``have``: what we hold is all there is (checked next)
            return 0
        raise UpdateError("bundle %s: HTTP %d" % (_safe(url), exc.code), "fetch") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        raise UpdateError("bundle %s: %s (what arrived is kept; the next try resumes)"
                          % (_safe(url), getattr(exc, "reason", exc)), "fetch") from None
    with response:
        mode = "ab"
        if response.status == 206:
            m = _RANGE_RE.match(response.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise UpdateError("bundle %s: the server resumed at the wrong offset" % _safe(url), "fetch")
        else:
            mode, have = "wb", 0  # 200: the whole file again
        length = response.headers.get("Content-Length")
        got = 0
        try:
            with open(part, mode) as out:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    got += len(chunk)
                    if have + got > max_bytes:
                        raise UpdateError("bundle %s is over %d bytes: refused" % (_safe(url), max_bytes), "fetch")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except (OSError, ValueError, http.client.HTTPException) as exc:  # a dropped connection mid-body
            raise UpdateError("bundle %s: %s after %d bytes (kept; the next try resumes)"
                              % (_safe(url), exc, have + got), "fetch") from None
        if length is not None and length.isdigit() and got != int(length):  # read(n) takes a cut body silently
            raise UpdateError("bundle %s: connection closed after %d of %d bytes (kept; the next try resumes)"
                              % (_safe(url), have + got, have + int(length)), "fetch")
    return got
