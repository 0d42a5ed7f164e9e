"""The journal of the open batch: what the batcher holds, kill-safe without an fsync (issue 21).

The byte budget lets a batch stay open up to a second (``gateway.core.batcher``), longer than the kill window
(``batch.hold_s``). So each reading (and non-alarm event) that enters the batcher is appended to this file as it
arrives, and each sealed batch is appended, signed bytes and all, **before it leaves memory** (before it is sent or
committed). The writes are plain ``write(2)`` calls into the page cache, never fsynced: a ``kill -9``, an OOM kill
or a crash of the agent loses nothing written, and a power cut loses what the kernel had not written back (the
store's ``sync_interval_s`` is the power-cut window for what was committed; see docs/store-and-forward.md).

The file is a CBOR sequence (RFC 8742) of lists:

* ``["J", 1, gen]``: the header; ``gen`` grows by one per file;
* ``["r", sensor, name, value, unit, t, resolution]``, ``["e", sensor, name, state, reason, t, value, level]``: an
  item that entered the batcher (``t`` on the wire's time scale, so it survives a reboot's new monotonic clock);
* ``["s", consumed, boot, seq, priority, readings, events, created, data]``: a sealed batch. ``consumed``: it holds
  every item before it back to the previous consuming ``"s"`` (an alarm's batch holds none of them);
* ``["c"]``: the file is complete: everything an older file held that still mattered was copied into it.

**Replay** (``recover``) takes the newest complete file: its sealed batches go to the store under their own
``(boot, seq)`` (sent again if they were delivered already: the backend drops the repeat), and the items after its
last consuming ``"s"`` go back into the batcher, to be sealed under the new boot. Those items were never in a sent
batch, because a batch is journaled before it can be sent, so no reading is ever sent under two identities (the
backend could not tell such a duplicate). A torn last record (killed in the middle of a write) is skipped.

**Rotation** keeps the file small and, on ext4, mostly never written back: every ``rotate_s`` seconds (or
``rotate_bytes``) a new file is started with what is still live (the sealed batches still only in memory, the open
items), marked complete, and the old one unlinked: its dirty pages are dropped before the kernel's write-back
(30 s by default) reaches them. Writes are batched: ``append`` encodes, ``flush`` writes.
"""

import logging
import os

import cbor2

from gateway.core.errors import StoreError
from gateway.core.model import EncodedBatch, Event, Reading

log = logging.getLogger(__name__)

VERSION = 1
SUFFIX = ".journal"


def _encode(entry, offset):
    """One journal record for a pipeline log entry (``Pipeline.take_log``)."""
    cls = entry.__class__
    if cls is Reading:
        return cbor2.dumps(["r", entry.sensor, entry.name, entry.value, entry.unit, entry.t + offset,
                            entry.resolution])
    if cls is Event:
        return cbor2.dumps(["e", entry.sensor, entry.name, entry.state, entry.reason, entry.t + offset, entry.value,
                            entry.level])
    batch, consumed = entry
    return cbor2.dumps(["s", consumed, batch.boot, batch.seq, batch.priority, batch.readings, batch.events,
                        batch.created, batch.data])


class Recovered:
    """What a journal held: ``sealed`` batches (``EncodedBatch``), ``items`` still open (``Reading``/``Event`` with
    wire times), ``torn`` records skipped, and the ``files`` read."""

    def __init__(self):
        self.sealed, self.items, self.torn, self.files = [], [], 0, []

    def __bool__(self):
        return bool(self.sealed or self.items)


def _read(path):
    """``(records, complete, torn)`` of one journal file."""
    records, torn = [], 0
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        while f.tell() < size:
            try:
                rec = cbor2.load(f)
            except (EOFError, cbor2.CBORDecodeError, ValueError, TypeError):
                torn += 1  # the tail a kill cut in the middle of a write: nothing after it was written whole
                break
            records.append(rec)
    complete = any(isinstance(r, list) and r[:1] == ["c"] for r in records)
    return records, complete, torn


def _parse(records, out):
    open_items = []
    for rec in records:
        if not isinstance(rec, list) or not rec:
            out.torn += 1
            continue
        kind = rec[0]
        if kind == "r" and len(rec) == 7:
            open_items.append(Reading(rec[1], rec[2], rec[3], rec[4], rec[5], rec[6]))
        elif kind == "e" and len(rec) == 8:
            open_items.append(Event(rec[1], rec[2], rec[3], rec[4], rec[5], rec[6], rec[7]))
        elif kind == "s" and len(rec) == 9:
            consumed, boot, seq, prio, readings, events, created, data = rec[1:]
            out.sealed.append(EncodedBatch(boot, seq, data, prio, readings, events, created))
            if consumed:
                open_items = []
        elif kind not in ("J", "c"):
            out.torn += 1
    out.items = open_items


class Journal:
    def __init__(self, path, rotate_s=10.0, rotate_bytes=1 << 20):
        """``path`` names the journal; its files are ``<path>.<gen>``. Nothing is opened before ``start``."""
        self.path = os.fspath(path)
        self.rotate_s = rotate_s
        self.rotate_bytes = rotate_bytes
        self.gen = 0
        self.fd = None
        self.size = 0
        self.started_at = None
        self.rotations = 0
        self._buf = []
        self._old = []

    # -- files ---------------------------------------------------------------------------------------------------
    def _files(self):
        directory, base = os.path.split(self.path)
        out = []
        for name in os.listdir(directory or "."):
            if name.startswith(base + ".") and name[len(base) + 1:].isdigit():
                out.append((int(name[len(base) + 1:]), os.path.join(directory, name)))
        return sorted(out)

    def recover(self):
        """Read the newest complete journal file (``Recovered``); files are left for ``start`` to replace."""
        out = Recovered()
        try:
            files = self._files()
        except OSError as exc:
            raise StoreError("cannot list the journal %s: %s" % (self.path, exc), kind="io") from exc
        self._old = [p for _, p in files]
        self.gen = files[-1][0] if files else 0
        for _, path in reversed(files):
            try:
                records, complete, torn = _read(path)
            except OSError as exc:
                log.error("journal: cannot read %s: %s", path, exc)
                continue
            if complete:
                out.torn = torn
                out.files.append(path)
                _parse(records, out)
                break
        return out

    def start(self, now):
        """Open a new file (after ``recover``). It counts as complete only after ``complete``."""
        self.gen += 1
        name = "%s.%d" % (self.path, self.gen)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        except OSError as exc:
            raise StoreError("cannot create the journal %s: %s" % (name, exc), kind="io") from exc
        if self.fd is not None:
            self._old.append("%s.%d" % (self.path, self.gen - 1))
            os.close(self.fd)
        self.fd, self.size, self.started_at = fd, 0, now
        self._buf = [cbor2.dumps(["J", VERSION, self.gen])]

    def complete(self):
        """Mark the current file complete (write it through) and unlink the older ones."""
        self._buf.append(cbor2.dumps(["c"]))
        self.flush()
        for path in self._old:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("journal: cannot remove %s: %s", path, exc)
        self._old = []

    # -- the hot path ----------------------------------------------------------------------------------------------
    def append(self, entries, offset):
        """Pipeline log entries (``Pipeline.take_log``) to write at the next ``flush``; ``offset`` turns their
        monotonic times into wire times. Encoded at the flush: one pass per write, not one call per reading."""
        if entries:
            self._buf.append((entries, offset))

    @property
    def buffered(self):
        return bool(self._buf)

    def flush(self):
        """Write what ``append`` buffered, in one ``write(2)``: into the page cache, no fsync."""
        if not self._buf or self.fd is None:
            return
        parts = []
        for chunk in self._buf:
            if chunk.__class__ is bytes:
                parts.append(chunk)
            else:
                entries, offset = chunk
                parts.extend(_encode(entry, offset) for entry in entries)
        data = b"".join(parts)
        self._buf = []
        try:
            while data:
                n = os.write(self.fd, data)
                self.size += n
                data = data[n:]
        except OSError as exc:
            raise StoreError("cannot write the journal %s.%d: %s" % (self.path, self.gen, exc), kind="io") from exc

    def rotate_due(self, now):
        return self.fd is not None and (self.size >= self.rotate_bytes or now - self.started_at >= self.rotate_s)

    def rotate(self, live, items, offset, now):
        """Start a new file holding only what still matters: ``live`` sealed batches (still only in memory) and the
        open ``items``; then drop the old file."""
        self.flush()
        self.start(now)
        self.append([(b, False) for b in live], offset)
        self.append(items, offset)
        self.complete()
        self.rotations += 1

    def close(self, remove):
        """Close; ``remove``: everything in it is safe elsewhere (a clean stop), so delete the file too."""
        if self.fd is None:
            return
        if not remove:
            self.flush()
        os.close(self.fd)
        self.fd = None
        if remove:
            try:
                os.unlink("%s.%d" % (self.path, self.gen))
            except OSError as exc:
                log.error("journal: cannot remove %s.%d: %s", self.path, self.gen, exc)
