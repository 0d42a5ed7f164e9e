"""The boot epoch: the first half of a batch's identity ``(gw, boot, seq)``, which must never repeat for a gateway.

``boot = counter << 32 | r``: ``counter`` is a start counter, persisted twice (the queue's ``meta`` table and a
small file beside the queue, ``<queue>.boot``); ``r`` is 32 fresh random bits (``os.urandom``) drawn at every
start. A start takes the larger of the two persisted values, adds one to its counter, draws ``r``, and writes the
new boot to the file (atomically, fsynced) and to ``meta`` before any batch carries it.

* While local state persists, ``boot`` strictly increases from start to start, so ``(boot, seq)`` still orders
  batches.
* When state is lost or rolled back (a corrupt queue moved aside, a wiped or replaced SD card, a restored backup),
  the counter may repeat, but a repeated ``boot`` also needs the same 32 random bits: at most ``k * 2**-32`` per
  such start, where ``k`` is how many earlier starts used that counter (1 unless state was rolled back repeatedly).
* ``counter`` stays below ``2**31``, so ``boot`` fits an int64 (a backend's BIGINT column).

Old stores held ``boot`` as a bare counter (1, 2, 3 ...): every new boot is at least ``2**32``, above all of them.
"""

import errno
import logging
import os

from gateway.adapters.files import write_atomic
from gateway.core.errors import StoreError

log = logging.getLogger(__name__)

SHIFT = 32
MAX_COUNTER = (1 << 31) - 1
SUFFIX = ".boot"


def counter_of(boot):
    return boot >> SHIFT


def following(last, random_bytes=os.urandom):
    """The boot after ``last`` (0 if none): the next counter and 32 fresh random bits."""
    counter = counter_of(last) + 1
    if counter > MAX_COUNTER:
        raise StoreError("the boot counter is exhausted (%d starts); re-provision the gateway with a new id"
                         % counter, kind="io")
    return counter << SHIFT | int.from_bytes(random_bytes(4), "big")


def read(path):
    """The boot recorded in ``path``, or 0 if there is none. A damaged file is reported, and counts as 0 (the
    queue's copy and the random bits still keep the identity apart)."""
    try:
        with open(path, "rb") as f:
            text = f.read(64)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("boot epoch file %s unreadable (%s); using the queue's copy", path, exc)
        return 0
    try:
        value = int(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        log.warning("boot epoch file %s is damaged (%r); using the queue's copy", path, text[:20])
        return 0
    return value if 0 <= value < 1 << 63 else 0


def write(path, boot):
    """Replace ``path`` with ``boot`` atomically and durably (write a temporary file, fsync, rename, fsync the
    directory): two fsyncs per start, none on the hot path."""
    try:
        write_atomic(path, b"%d\n" % boot, 0o600)
    except OSError as exc:
        raise StoreError("cannot write the boot epoch to %s: %s" % (path, exc),
                         kind="full" if exc.errno == errno.ENOSPC else
                         "readonly" if exc.errno in (errno.EPERM, errno.EACCES, errno.EROFS) else "io"
                         ) from exc
