"""The receiver's storage role: one small interface, two engines, chosen in one function
(``backend.engines.open_storage``).

* ``backend.receiver_db.SqliteStorage``: the embedded default, one file (``--db FILE``).
* ``backend.receiver_pg.PostgresStorage``: PostgreSQL (``--db postgresql://...``), for a fleet.

Both keep the same promises (docs/wire-format.md, "The reference receiver's answers"; docs/backend.md):

* ``store`` returns only after the batch's transaction committed, so the receiver acknowledges only what is durable;
* ``(gw, boot, seq)`` is unique and a repeat is idempotent: the same content digest is ``DUPLICATE``, another digest
  is ``CONFLICT`` (the new bytes kept apart in ``conflicts``, never merged into ``records``);
* a value a column cannot hold raises ``UnstorableError`` before the transaction starts (a permanent 4xx);
* a failure of the database itself raises ``StorageError`` (the receiver answers 503 with ``Retry-After``; the
  gateway keeps the batch and retries). Any other exception is a bug, after the transaction was rolled back.
* the schema is versioned (table ``schema_version``) and migrated when the storage opens.
* the command queue and the commands' outcomes (``backend.command_queue``: the SQL once, each engine's
  ``transaction`` runs it); a stored batch's outcome records are recorded in its own transaction.

The read side (``gateway_ids`` ... ``buckets``) is what the read API (``backend.readapi``) builds on. Each query is
an index lookup (a seek, or a "loose index scan": a recursive query that seeks to the next distinct key) or a range
of one name's readings bounded by time; the SQL is shared here (``?`` placeholders, run through ``_rows``) and an
engine overrides a query only where its planner wants another form (PostgreSQL prunes day partitions by time).
"""

import abc
import contextlib
import math
import urllib.parse

from gateway.core.errors import GatewayError

STORED, DUPLICATE, CONFLICT = "stored", "duplicate", "conflict"
#: what ``Storage.store`` returns as its first item
OUTCOMES = (STORED, DUPLICATE, CONFLICT)
#: the URL schemes that select PostgreSQL; anything else is a SQLite file name
POSTGRES_SCHEMES = ("postgresql", "postgres")


class UnstorableError(GatewayError, ValueError):
    """A verified batch holds a value no column can hold (an integer beyond 64 bits, NaN, a lone surrogate, NUL in
    text for PostgreSQL): these bytes will never be stored, so the answer is a permanent rejection."""

    reason = "unstorable"


class StorageError(GatewayError):
    """The database failed (locked, gone, disk full, connection lost). The same batch may be stored later."""

    reason = "store_failed"


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def _int(value, what):
    if value.__class__ is bool or not isinstance(value, int):
        raise UnstorableError("%s must be an integer, not %s" % (what, type(value).__name__))
    if not INT64_MIN <= value <= INT64_MAX:
        raise UnstorableError("%s does not fit in 64 bits" % what)
    return int(value)


def _real(value, what):
    if value is None:
        return None
    if isinstance(value, int) and value.__class__ is not bool:
        return _int(value, what)
    if not isinstance(value, float):
        raise UnstorableError("%s must be a number, not %s" % (what, type(value).__name__))
    if not math.isfinite(value):
        raise UnstorableError("%s is not a finite number" % what)
    return float(value)


def _text(value, what):
    if value is None:
        return None
    if not isinstance(value, str):
        raise UnstorableError("%s must be text, not %s" % (what, type(value).__name__))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UnstorableError("%s is not valid Unicode text" % what) from None
    return str(value)


#: the ``records`` columns of one row of ``batch_rows``, in order (``v_exact``: the exact decimal text of a format-2
#: value, NULL for format 1, which carried none; docs/backend.md "Exact values")
RECORD_COLUMNS = ("gw", "boot", "seq", "n", "t", "u", "v", "vs", "vb", "v_exact")


def batch_rows(batch):
    """``(head, meta, rows)``: the ``batches`` key columns, its other columns and the ``records`` rows
    (``RECORD_COLUMNS``), converted or ``UnstorableError``.

    A record of the common shape (text name, float or int64 time and value, ASCII texts: what ``wire.verify``
    resolves from a reading) is checked inline; any other goes through the per-value checks (``_row``), which name
    the record and the field that cannot be held. Both accept and refuse exactly the same values."""
    head = (_text(batch.gw, "gw"), _int(batch.boot, "boot"), _int(batch.seq, "seq"))
    rows = []
    append = rows.append
    for i, r in enumerate(batch.records):
        get = r.get
        n, t, u, v, vs, vb, exact = get("n"), get("t"), get("u"), get("v"), get("vs"), get("vb"), get("exact")
        if n.__class__ is str and n.isascii() and vs is None and vb is None \
                and ((t.__class__ is float and t - t == 0.0) or (t.__class__ is int and INT64_MIN <= t <= INT64_MAX)) \
                and (v is None or (v.__class__ is float and v - v == 0.0)
                     or (v.__class__ is int and INT64_MIN <= v <= INT64_MAX)) \
                and (u is None or (u.__class__ is str and u.isascii())) \
                and (exact is None or (exact.__class__ is str and exact.isascii())):
            append(head + (n, t, u, v, None, None, exact))
        else:
            append(_row(head, r, i))
    anchor = batch.anchor or (None, None)
    meta = (_text(batch.kid, "kid"), int(bool(batch.clock)), _real(anchor[0], "anchor mono"),
            _real(anchor[1], "anchor wall"))
    return head, meta, rows


def _row(head, r, i):
    """One ``records`` row, each value checked for its column (``UnstorableError`` names the record and field)."""
    vb = r.get("vb")
    if vb is not None and vb.__class__ is not bool:
        raise UnstorableError("record %d: vb must be a boolean" % i)
    row = head + (_text(r.get("n"), "record %d: n" % i) or "", _real(r.get("t"), "record %d: t" % i),
                  _text(r.get("u"), "record %d: u" % i), _real(r.get("v"), "record %d: v" % i),
                  _text(r.get("vs"), "record %d: vs" % i), None if vb is None else int(vb),
                  _text(r.get("exact"), "record %d: exact" % i))
    if row[4] is None:
        raise UnstorableError("record %d has no time" % i)
    return row


CONFLICT_REASON = "same (gw, boot, seq), different content"


class Storage(abc.ABC):
    """One receiver's database. Not thread-safe: the receiver holds its lock around every call."""

    #: the engine's name (``sqlite``, ``postgresql``), for ``stats`` and logs
    engine = ""

    @classmethod
    @abc.abstractmethod
    def from_target(cls, target, timeout):
        """Open (and migrate) the database ``--db`` names; ``timeout`` bounds waiting for it (seconds)."""

    @abc.abstractmethod
    def store(self, batch, digest, data, received):
        """Store one verified batch whose signed payload hashes to ``digest``; ``data`` (the signed bytes) is kept
        if it conflicts; ``received`` is the receiver's clock. Returns ``(outcome, records)``, ``outcome`` one of
        ``STORED``, ``DUPLICATE``, ``CONFLICT``, after the commit. Raises ``UnstorableError`` or ``StorageError``."""

    def store_many(self, items, received):
        """Store several verified batches, ``items`` a list of ``(batch, digest, data)``. Returns one result per
        item, in order: ``(outcome, records)`` as ``store`` returns it, or the ``UnstorableError`` that item raised.
        Every result holds after a COMMIT. ``StorageError`` fails the whole call (no result is promised).

        This default stores one transaction per batch; an engine overrides it to commit a group in one transaction
        (PostgreSQL: group commit, ``backend.receiver_pg``)."""
        out = []
        for batch, digest, data in items:
            try:
                out.append(self.store(batch, digest, data, received))
            except UnstorableError as exc:
                out.append(exc)
        return out

    @abc.abstractmethod
    def transaction(self):
        """A context manager: one transaction, yielding ``execute(sql, args)`` (``?`` placeholders) that returns a
        cursor; committed at the end, rolled back on any exception; database errors raise ``StorageError``."""

    # -- the command queue (backend.command_queue), the same on every engine ---------------------------------------
    def queue_command(self, cmd, digest, data, now):
        from backend import command_queue
        with self.transaction() as execute:
            return command_queue.queue(execute, cmd, digest, data, now)

    def commands_for(self, gw, now):
        from backend import command_queue
        with self.transaction() as execute:
            return command_queue.hand_over(execute, gw, now)

    def command_status(self, gw, now):
        from backend import command_queue
        with self.transaction() as execute:
            return command_queue.status(execute, gw, now)

    @abc.abstractmethod
    def stats(self):
        """A small dict: ``engine``, ``schema_version`` and what the engine can tell cheaply."""

    @abc.abstractmethod
    def query(self, sql, args=()):
        """Read access for tests, scenarios and the demo summary: rows as tuples; ``?`` placeholders."""

    @abc.abstractmethod
    def close(self):
        """Release the connection."""

    # -- the read side (backend.readapi): lookups on the indexes, never a scan of the tables ----------------------
    #: the SQL expression of a reading's bucket number ``floor((t - t0) / width)`` (two ``?``: t0, width)
    BUCKET = "CAST((t - ?) / ? AS INTEGER)"
    #: the rows of one name (two ``?``: gw, n) with the columns t, u, v, vs, vb, boot, seq
    ONE_NAME = "records WHERE gw = ? AND n = ?"

    @abc.abstractmethod
    def _rows(self, sql, args=()):
        """Rows of one read query (``?`` placeholders); the engine's errors become ``StorageError``."""

    def gateway_ids(self, limit):
        """The gateways that sent a stored batch, sorted, at most ``limit``: one seek per gateway on the primary key
        of ``batches`` (a loose index scan)."""
        return [gw for (gw,) in self._rows(
            "WITH RECURSIVE g(gw, k) AS (SELECT MIN(gw), 1 FROM batches UNION ALL "
            "SELECT (SELECT MIN(gw) FROM batches WHERE gw > g.gw), g.k + 1 FROM g WHERE g.gw IS NOT NULL AND g.k < ?)"
            " SELECT gw FROM g WHERE gw IS NOT NULL", (int(limit),))]

    def gateway_head(self, gw):
        """``{boot, seq, clock, kid, received, last_seen}`` of ``gw``'s newest batch (highest ``(boot, seq)``), and
        ``last_seen``: the latest time the receiver stored one of its batches (index ``batches_by_received``). None
        for a gateway without batches."""
        row = self._rows("SELECT boot, seq, clock, kid, received FROM batches WHERE gw = ? "
                         "ORDER BY boot DESC, seq DESC LIMIT 1", (gw,))
        if not row:
            return None
        (last,) = self._rows("SELECT MAX(received) FROM batches WHERE gw = ?", (gw,))[0]
        boot, seq, clock, kid, received = row[0]
        return {"boot": boot, "seq": seq, "clock": bool(clock), "kid": kid, "received": received, "last_seen": last}

    def latest_time(self, gw):
        """The newest record time of ``gw`` (index ``records_by_gw``), None without records."""
        return self._rows("SELECT MAX(t) FROM records WHERE gw = ?", (gw,))[0][0]

    def boots(self, gw, limit):
        """How many boot epochs of ``gw`` have a stored batch (counted up to ``limit``): a seek per boot."""
        (n,) = self._rows(
            "WITH RECURSIVE b(boot, k) AS (SELECT MIN(boot), 1 FROM batches WHERE gw = ? UNION ALL "
            "SELECT (SELECT MIN(boot) FROM batches WHERE gw = ? AND boot > b.boot), b.k + 1 FROM b "
            "WHERE b.boot IS NOT NULL AND b.k < ?) SELECT COUNT(boot) FROM b", (gw, gw, int(limit)))[0]
        return n

    def names(self, gw, since, limit):
        """The record names of ``gw`` with a record at ``t >= since``, sorted, at most ``limit``: a loose index scan
        of ``records_by_gw_name (gw, n, t)`` for the names, then one seek per name for its newest time."""
        found = [n for (n,) in self._rows(
            "WITH RECURSIVE s(n, k) AS (SELECT MIN(n), 1 FROM records WHERE gw = ? UNION ALL "
            "SELECT (SELECT MIN(n) FROM records WHERE gw = ? AND n > s.n), s.k + 1 FROM s "
            "WHERE s.n IS NOT NULL AND s.k < ?) SELECT n FROM s WHERE n IS NOT NULL", (gw, gw, int(limit)))]
        if since is None:
            return found
        return [n for n in found if self._rows("SELECT 1 FROM records WHERE gw = ? AND n = ? AND t >= ? LIMIT 1",
                                               (gw, n, since))]

    def latest(self, gw, name, count=1):
        """The newest ``count`` records of one name, newest first: ``(t, u, v, vs, vb, boot, seq)`` (one seek)."""
        return self._rows("SELECT t, u, v, vs, vb, boot, seq FROM %s ORDER BY t DESC LIMIT ?" % self.ONE_NAME,
                          (gw, name, int(count)))

    def count(self, gw, name, t0, t1):
        """How many records of one name have ``t0 <= t <= t1`` (an index range)."""
        return self._rows("SELECT COUNT(*) FROM %s AND t >= ? AND t <= ?" % self.ONE_NAME, (gw, name, t0, t1))[0][0]

    def series(self, gw, name, t0, t1, limit):
        """Records of one name with ``t0 <= t <= t1``, oldest first, at most ``limit``: ``(t, v, vs, vb)``."""
        return self._rows("SELECT t, v, vs, vb FROM %s AND t >= ? AND t <= ? ORDER BY t LIMIT ?" % self.ONE_NAME,
                          (gw, name, t0, t1, int(limit)))

    def buckets(self, gw, name, t0, t1, width):
        """One name's numeric readings with ``t0 <= t <= t1`` in buckets of ``width`` seconds, oldest first:
        ``(bucket, n, t_min, t_max, v_avg, v_min, v_max)`` (one pass over the index range)."""
        value = "COALESCE(v, vb)"
        return self._rows(
            "SELECT %s AS b, COUNT(*), MIN(t), MAX(t), AVG(%s), MIN(%s), MAX(%s) FROM %s "
            "AND t >= ? AND t <= ? AND %s IS NOT NULL GROUP BY b ORDER BY b" % (self.BUCKET, value, value, value,
                                                                                self.ONE_NAME, value),
            (t0, width, gw, name, t0, t1))


def is_postgres_url(target):
    return urllib.parse.urlsplit(str(target)).scheme.lower() in POSTGRES_SCHEMES


def redact(target):
    """The database name for logs: a URL without its password."""
    target = str(target)
    if not is_postgres_url(target):
        return target
    u = urllib.parse.urlsplit(target)
    if u.password is None:
        return target
    netloc = "%s:***@%s" % (u.username or "", u.netloc.rsplit("@", 1)[1])
    return urllib.parse.urlunsplit(u._replace(netloc=netloc))
