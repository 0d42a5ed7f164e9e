"""Salvage a corrupt queue: copy every batch SQLite can still read into the new queue, and count the rest.

``Store`` moves a database that fails to open or fails ``PRAGMA quick_check`` aside to ``<name>.corrupt-<n>``
and creates a new one; this module then reads the old file **read-only** (it stays as it was, for an operator to
inspect and delete) and copies into the new queue, in one transaction:

* every readable batch (queued and quarantined), with its priority, boot, seq and times, under its old id so the
  order (alarms first, then oldest first) is kept. Each row is read on its own by id, so a damaged page costs the
  rows on it and not the rest: the id walk skips a damaged region by galloping past it, then probes the ids in
  the gap one by one. A blob must inflate (zlib checks it) and be a tagged COSE_Sign1 (first byte 0xd2), or it is
  counted lost: a damaged batch is never sent;
* the boot epoch and the drop counters from ``meta``, if readable; the automatic-retry attempts, if readable.

``lost`` counts the rows found but unreadable, plus every id in a damaged region up to the highest id the old
queue ever assigned (``sqlite_sequence``), so it is an upper bound: a batch acknowledged before the damage may be
counted. If even that bound is unreadable, ``unknown`` says so. SQLite is the only reader: no page parsing.
"""

import logging
import sqlite3
import urllib.parse
import zlib
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

_COLUMNS = ("prio", "boot", "seq", "created", "readings", "events", "data")
_EXTRA = {"batches": (), "quarantine": ("reason", "at")}
_WALK = 256  # ids read per step
_MAX_PROBES = 1 << 16  # point lookups per damaged region, at most
_COSE_SIGN1 = 0xD2


@dataclass
class Salvage:
    source: str
    batches: int = 0  # queued batches copied
    quarantined: int = 0  # quarantined batches copied
    lost: int = 0  # rows found but unreadable or damaged, and ids in damaged regions (an upper bound)
    unknown: bool = False  # a damaged region whose size could not be bounded, or nothing readable at all
    meta: dict = field(default_factory=dict)
    damaged: list = field(default_factory=list)  # (table, first id, last id) of each damaged region

    def summary(self):
        lost = "%d" % self.lost
        if self.unknown:
            lost = "at least %d (some damage could not be sized)" % self.lost if self.lost else "an unknown number"
        text = "salvaged %d queued and %d quarantined batches from %s; lost %s" % (
            self.batches, self.quarantined, self.source, lost)
        if self.damaged:
            text += " (damaged id ranges: %s)" % ", ".join("%s %d-%d" % d for d in self.damaged[:5])
        return text


def _connect(path, immutable):
    uri = "file:%s?mode=ro%s" % (urllib.parse.quote(path), "&immutable=1" if immutable else "")
    db = sqlite3.connect(uri, uri=True, isolation_level=None)
    db.execute("PRAGMA cell_size_check=ON")
    return db


def _valid(blob):
    if not isinstance(blob, bytes) or not blob:
        return False
    try:
        data = zlib.decompress(blob) if blob[:1] == b"\x78" else blob
    except zlib.error:
        return False
    return data[0] == _COSE_SIGN1


class _Reader:
    def __init__(self, db, table, hi, sink):
        self.db, self.table, self.hi, self.sink = db, table, hi, sink
        cols = _COLUMNS + _EXTRA[table]
        self.sql_row = "SELECT %s FROM %s WHERE id = ?" % (", ".join(cols), table)
        self.sql_ids = "SELECT id FROM %s WHERE id > ? ORDER BY id LIMIT ?" % table
        self.copied, self.top, self.lost, self.unknown, self.damaged = 0, 0, 0, False, []

    def _ids_after(self, cursor, limit):
        got = []
        try:
            for (i,) in self.db.execute(self.sql_ids, (cursor, limit)):
                got.append(i)
        except sqlite3.DatabaseError:
            return got, True
        return got, False

    def _read(self, i):
        """Copy row ``i``: True if it was there and good, False if it was not there; counts it lost if damaged."""
        try:
            row = self.db.execute(self.sql_row, (i,)).fetchone()
        except sqlite3.DatabaseError:
            self.lost += 1
            return False
        if row is None:
            return False
        if not _valid(row[6]) or not all(isinstance(v, (int, float)) for v in row[:6]):
            self.lost += 1
            return False
        row = list(row)
        if len(row) > 7:  # a quarantined batch: its reason and time are bookkeeping, never a reason to lose it
            row[7] = row[7] if isinstance(row[7], str) else "salvaged"
            row[8] = row[8] if isinstance(row[8], (int, float)) else 0.0
        self.sink(self.table, [i] + row)
        self.copied += 1
        self.top = max(self.top, i)
        return True

    def walk(self):
        cursor = 0
        for _ in range(1 << 20):  # bounded: each step moves the cursor forward
            ids, broken = self._ids_after(cursor, _WALK)
            for i in ids:
                self._read(i)
            if ids:
                cursor = ids[-1]
            if not broken:
                if len(ids) < _WALK:
                    return self
                continue
            cursor = self._skip(cursor)
            if cursor is None:
                return self
        return self

    def _skip(self, cursor):
        """Past a damaged region after ``cursor``: gallop to an id from which the walk reads again, probe the gap id
        by id. Returns the new cursor, or None when nothing after it can be read."""
        step, resume = 1, None
        while step < 1 << 62:
            ids, broken = self._ids_after(cursor + step, 1)
            if not broken:
                resume = cursor + step
                break
            step *= 2
        end = resume if resume is not None else self.hi
        if end is None or (self.hi is not None and end > self.hi):
            end = self.hi
        if end is None:
            self.unknown = True
            self.damaged.append((self.table, cursor + 1, -1))
            return resume
        first_lost = self.lost
        for i in range(cursor + 1, min(end, cursor + _MAX_PROBES) + 1):
            self._read(i)
        if end > cursor + _MAX_PROBES:
            self.unknown = True
        if self.lost > first_lost:
            self.damaged.append((self.table, cursor + 1, end))
        return resume


def _read_meta(db):
    try:
        return dict(db.execute("SELECT k, v FROM meta").fetchall())
    except sqlite3.DatabaseError:
        pass
    out = {}
    for key in ("boot", "dropped_batches", "dropped_readings", "dropped_alarm_batches", "expired_batches",
                "quarantined", "conflict_batches", "poison_batches", "salvaged_batches", "lost_batches"):
        try:
            row = db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None:
            out[key] = row[0]
    return out


def _one(db, sql):
    try:
        row = db.execute(sql).fetchone()
    except sqlite3.DatabaseError:
        return None
    return row[0] if row else None


def salvage_into(path, db, counters):
    """Copy everything readable in the corrupt queue at ``path`` (opened read-only) into the new queue ``db``, row by
    row (memory stays bounded), inside the caller's transaction. ``counters`` are the ``meta`` keys to carry over;
    the boot epoch is carried too. Returns a ``Salvage`` report."""
    report = Salvage(path)
    inserts = {table: "INSERT INTO %s (id, %s%s) VALUES (%s)" % (
        table, ", ".join(_COLUMNS), "".join(", " + c for c in extra), ", ".join("?" * (1 + len(_COLUMNS) + len(extra))))
        for table, extra in _EXTRA.items()}

    def sink(table, row):
        db.execute(inserts[table], row)

    readers, hi = [], None
    for immutable in (False, True):  # with its WAL if that can be read, else the main file as it is
        try:
            src = _connect(path, immutable)
        except sqlite3.Error:
            continue
        try:
            names = _one(src, "SELECT group_concat(name) FROM sqlite_master WHERE type = 'table'")
            if names is None:
                continue  # the schema is unreadable this way
            names = names.split(",")
            hi = _one(src, "SELECT seq FROM sqlite_sequence WHERE name = 'batches'")
            report.meta = _read_meta(src)
            readers = [_Reader(src, table, hi, sink).walk() for table in ("batches", "quarantine") if table in names]
            if "retries" in names:
                try:
                    db.executemany("INSERT OR REPLACE INTO retries VALUES (?, ?, ?)",
                                   src.execute("SELECT boot, seq, attempts FROM retries").fetchall())
                except sqlite3.DatabaseError:
                    pass  # bookkeeping only: a batch may get its automatic retries again
            break
        finally:
            src.close()
    if not readers:
        report.unknown = True  # not even the schema could be read
    for reader in readers:
        report.lost += reader.lost
        report.unknown = report.unknown or reader.unknown
        report.damaged += reader.damaged
        if reader.table == "batches":
            report.batches = reader.copied
        else:
            report.quarantined = reader.copied
    top = max([hi or 0] + [reader.top for reader in readers])
    if top:  # new ids stay above every salvaged one (a quarantined batch keeps its id)
        db.execute("DELETE FROM sqlite_sequence WHERE name = 'batches'")
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('batches', ?)", (top,))
    for key in counters + ("boot",):
        value = report.meta.get(key)
        if isinstance(value, int) and value > 0:
            db.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = MAX(v, ?)",
                       (key, value, value))
    for key, n in (("salvaged_batches", report.batches + report.quarantined), ("lost_batches", report.lost)):
        if n:
            db.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = v + ?", (key, n, n))
    return report
