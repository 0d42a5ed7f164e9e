"""Directory uplink ("sneakernet"): each batch becomes one file, for sites with no network.

``kind = "directory"`` with ``url = "dir:///media/usb/edge"`` (or ``demo --uplink dir:///PATH``). Each batch is
written as ``<dir>/<gw>-<boot>-<seq>.cose``, exactly the signed bytes; someone carries the files to the backend,
where ``edge-gateway verify --trust jwks.json DIR/*.cose`` checks them (or a script POSTs them to the receiver).

* Atomic and durable before the acknowledgement: written to a hidden temporary file in the same directory, fsynced,
  renamed into place, then the directory is fsynced. Only then does ``send`` return, and the store deletes the batch.
* A full disk, a read-only or missing directory (a drive not mounted) is a retryable ``UplinkError``: the batch
  stays in the store and goes out when there is room again. Nothing is created: a missing directory is most likely
  a drive that is not mounted, and writing to the mount point would fill the gateway's own disk.
* The same ``(gw, boot, seq)`` again with the same bytes (a re-send after a crash) is acknowledged; with other bytes
  it is a conflict (``retryable=False``, status 409), as the receiver answers.
* ``gw``, ``boot`` and ``seq`` are read from the signed payload itself, so the name always matches what was signed.
"""

import errno
import os
import shutil
import time
import urllib.parse

import cbor2

from gateway.adapters import files
from gateway.adapters.uplink.base import FAIL, OK, Probe, SectionError, Uplink
from gateway.core.errors import UplinkError

_WHY = {errno.ENOSPC: "is full", errno.EDQUOT: "is over its quota", errno.EROFS: "is read-only",
        errno.EACCES: "is not writable", errno.EPERM: "is not writable",
        errno.ENOENT: "does not exist (is the drive mounted?)", errno.ENOTDIR: "is not a directory"}
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:._-")


def _path_of(url):
    parts = urllib.parse.urlsplit(url or "")
    if parts.scheme != "dir" or parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ValueError("a directory uplink URL is dir:///ABSOLUTE/PATH, got %r" % (url,))
    return urllib.parse.unquote(parts.path)


def batch_name(data):
    """``<gw>-<boot>-<seq>.cose`` from the signed payload (read without verifying; the backend verifies)."""
    try:
        payload = cbor2.loads(cbor2.loads(data).value[2])
        gw, boot, seq = payload["gw"], payload["boot"], payload["seq"]
    except (cbor2.CBORDecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise UplinkError("batch is not a COSE_Sign1 with gw, boot and seq: %s" % exc, retryable=False) from exc
    if not isinstance(gw, str) or not gw or gw[0] == "." or not set(gw) <= _NAME_CHARS \
            or not all(isinstance(n, int) and n >= 0 for n in (boot, seq)):
        raise UplinkError("gw %r, boot %r, seq %r cannot name a file" % (gw, boot, seq), retryable=False)
    return "%s-%d-%d.cose" % (gw, boot, seq)


class DirectoryUplink(Uplink):
    kind = "directory"
    schemes = ("dir",)

    def __init__(self, path):
        if not os.path.isabs(path):
            raise ValueError("the directory uplink needs an absolute path, not %r" % (path,))
        self.path = path

    @classmethod
    def check_section(cls, section):
        try:
            _path_of(section.url)
        except ValueError as exc:
            raise SectionError(str(exc), "uplink.url") from None

    @classmethod
    def from_section(cls, section):
        cls.check_section(section)
        return cls(_path_of(section.url))

    @classmethod
    def from_url(cls, url, timeout=10.0, retry_max_s=None):
        return cls(_path_of(url))

    def describe(self):
        return "dir://" + urllib.parse.quote(self.path)

    @classmethod
    def transport(cls, section):
        return Probe(OK, "%s: signed files, readable by whoever carries them" % section.url)

    def _problem(self, exc):
        return "directory %s %s" % (self.path, _WHY.get(exc.errno, "failed: %s" % (exc.strerror or exc)))

    def _error(self, exc, what):
        return UplinkError("%s (%s); keeping the batch" % (self._problem(exc), what), retryable=True)

    def _write(self, name, data):
        """Write ``data`` to ``name`` in the directory: temporary file, fsync, rename, fsync the directory."""
        files.write_atomic(os.path.join(self.path, name), data, 0o644)

    def send(self, batch):
        name = batch_name(batch.data)
        try:
            with open(os.path.join(self.path, name), "rb") as f:
                held = f.read()
        except FileNotFoundError:
            held = None
        except OSError as exc:
            raise self._error(exc, "reading %s" % name) from exc
        if held is not None:
            if held == batch.data:
                return 200  # already written (a re-send after a crash): a duplicate, acknowledged
            raise UplinkError("directory %s holds different content as %s" % (self.path, name), retryable=False,
                              status=409)
        try:
            self._write(name, batch.data)
        except OSError as exc:
            raise self._error(exc, "writing %s" % name) from exc
        return 201

    def probe(self, timeout, monotonic=time.monotonic):
        """Write, fsync and remove a probe file: the round trip a batch makes."""
        start = monotonic()
        try:
            self._write(".probe", b"")
            os.unlink(os.path.join(self.path, ".probe"))
            free = shutil.disk_usage(self.path).free
        except OSError as exc:
            return Probe(FAIL, self._problem(exc), "mount the drive, make room or make it writable",
                         monotonic() - start)
        return Probe(OK, "%s writable, %d MiB free" % (self.describe(), free >> 20), latency_s=monotonic() - start)
