"""The BTHome replay state on disk: the last accepted encryption counter of each keyed device.

A small JSON file in the agent's state directory (``bthome-counters-<source>.json``)::

    {"version": 1, "counters": {"54:48:E6:8F:80:A5": 1122868}}

Written atomically (a temporary file in the same directory, fsync, rename, fsync of the directory), so a power cut
leaves either the old or the new file, never a torn one. The BLE source writes it behind, at most once per
``replay_flush_s`` and only when a counter moved, and once more when it stops, so the SD card sees one small write
per interval, not one per advert. The window this leaves: after a power cut (not a clean stop), counters accepted
in the last interval are forgotten, so an advert captured in that interval could be accepted once after the
restart; with a clean stop (SIGTERM) there is no window.

Reading never raises for bad content: a missing file is an empty state, an unreadable or malformed one is reported
(``StateFileError``, logged by the caller) and treated as empty, because refusing to start would take every
sensor down for the sake of one.
"""

import asyncio
import json
import logging
import os

from gateway.adapters.files import write_atomic
from gateway.core.errors import GatewayError

VERSION = 1

log = logging.getLogger(__name__)


class StateFileError(GatewayError):
    """The replay state file could not be read or written. ``kind`` is ``corrupt`` or ``io``."""

    def __init__(self, message, kind="io"):
        super().__init__(message)
        self.kind = kind


def state_path(state_dir, source_name):
    """Where the source ``source_name`` keeps its counters inside ``state_dir``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source_name) or "ble"
    return os.path.join(state_dir, "bthome-counters-%s.json" % safe)


def load(path):
    """``{MAC: counter}`` from ``path``; ``{}`` when it does not exist. Raises ``StateFileError``."""
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StateFileError("cannot read %s: %s" % (path, exc.strerror or exc), "io") from exc
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise StateFileError("%s is not valid JSON: %s" % (path, exc), "corrupt") from exc
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("counters"), dict):
        raise StateFileError("%s is not a version %d counter file" % (path, VERSION), "corrupt")
    return doc["counters"]


def save(path, counters):
    """Write ``{MAC: counter}`` to ``path`` atomically and durably. Raises ``StateFileError``."""
    data = json.dumps({"version": VERSION, "counters": dict(sorted(counters.items()))}, indent=0).encode()
    try:
        write_atomic(path, data, 0o600)
    except OSError as exc:
        raise StateFileError("cannot write %s: %s" % (path, exc.strerror or exc), "io") from exc


class Keeper:
    """The scanner's replay state on disk: loads it at start, writes it behind at most every ``flush_s`` when a
    counter moved, and at stop. ``decoder`` is the ``BTHomeDecoder``; ``count(key)`` the source's counter. A write
    failure is counted (``state_write_failed``) and logged at ERROR; the next interval tries again."""

    def __init__(self, path, decoder, flush_s, count, name):
        self.path = path
        self.decoder = decoder
        self.flush_s = flush_s
        self.count = count
        self.name = name

    def load(self):
        if self.path is None:
            return 0
        try:
            counters = load(self.path)
        except StateFileError as exc:
            self.count("state_" + exc.kind)
            log.error("%s: %s; starting without saved BTHome counters (captured adverts from before this start "
                      "may be accepted once)", self.name, exc)
            return 0
        loaded = self.decoder.restore(counters)
        log.info("%s: loaded %d BTHome counters from %s", self.name, loaded, self.path)
        return loaded

    def _snapshot(self, force):
        if self.path is None or not (self.decoder.dirty or force):
            return None
        return self.decoder.state()

    def _saved(self, error):
        if error is not None:
            self.decoder.dirty = True  # try again at the next interval
            self.count("state_write_failed")
            log.error("%s: %s", self.name, error)
            return False
        self.count("state_writes")
        return True

    def save(self, force=False):
        snapshot = self._snapshot(force)
        if snapshot is None:
            return False
        try:
            save(self.path, snapshot)
        except StateFileError as exc:
            return self._saved(exc)
        return self._saved(None)

    async def flush(self):
        snapshot = self._snapshot(False)
        if snapshot is None:
            return False
        try:
            await asyncio.to_thread(save, self.path, snapshot)
        except StateFileError as exc:
            return self._saved(exc)
        return self._saved(None)

    async def write_behind(self):
        """At most one write per ``flush_s``, until cancelled."""
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()
