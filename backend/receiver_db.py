"""The reference receiver's SQLite database: schema, migration, row conversion and the one store transaction.

A batch is stored in one ``BEGIN IMMEDIATE`` transaction that ends in ``COMMIT`` or, on *any* exception, in
``ROLLBACK`` before the exception goes on: the connection is shared by every HTTP thread and the MQTT consumer, so
a transaction left open would fail every later batch from every gateway.

Values are converted before the transaction starts: SQLite stores integers of at most 64 bits, turns NaN into
NULL and cannot encode lone surrogates, so anything outside what a column holds raises ``UnstorableError`` (a
permanent rejection of these bytes, never a storage failure).

Repeats: ``batches.digest`` is the SHA-256 of the signed payload bytes. The same ``(gw, boot, seq)`` with the same
digest is a duplicate; with another digest it is a *conflict* (a gateway that lost its state and reused ids): the
new bytes are kept apart in ``conflicts`` for an operator, never merged into ``records``. Rows written before the
digest existed (``digest IS NULL``) cannot be compared and count as duplicates.
"""

import logging
import math
import sqlite3

from gateway.core.errors import GatewayError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    gw TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, kid TEXT NOT NULL, clock INTEGER NOT NULL,
    anchor_mono REAL, anchor_wall REAL, received REAL NOT NULL, records INTEGER NOT NULL, digest BLOB,
    PRIMARY KEY (gw, boot, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    gw TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, n TEXT NOT NULL, t REAL NOT NULL, u TEXT,
    v REAL, vs TEXT, vb INTEGER);
CREATE INDEX IF NOT EXISTS records_by_name ON records (n, t);
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY, gw TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, kid TEXT NOT NULL,
    received REAL NOT NULL, reason TEXT NOT NULL, digest BLOB NOT NULL, data BLOB NOT NULL,
    UNIQUE (gw, boot, seq, digest));
"""

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

STORED, DUPLICATE, CONFLICT = "stored", "duplicate", "conflict"


class UnstorableError(GatewayError, ValueError):
    """A verified batch holds a value no column can hold (an integer beyond 64 bits, NaN, a lone surrogate)."""

    reason = "unstorable"


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


def batch_rows(batch):
    """``(head, rows)``: the ``batches`` key columns and the ``records`` rows, converted or ``UnstorableError``."""
    head = (_text(batch.gw, "gw"), _int(batch.boot, "boot"), _int(batch.seq, "seq"))
    rows = []
    for i, r in enumerate(batch.records):
        vb = r.get("vb")
        if vb is not None and vb.__class__ is not bool:
            raise UnstorableError("record %d: vb must be a boolean" % i)
        rows.append(head + (_text(r.get("n"), "record %d: n" % i) or "", _real(r.get("t"), "record %d: t" % i),
                            _text(r.get("u"), "record %d: u" % i), _real(r.get("v"), "record %d: v" % i),
                            _text(r.get("vs"), "record %d: vs" % i), None if vb is None else int(vb)))
        if rows[-1][4] is None:
            raise UnstorableError("record %d has no time" % i)
    anchor = batch.anchor or (None, None)
    meta = (_text(batch.kid, "kid"), int(bool(batch.clock)), _real(anchor[0], "anchor mono"),
            _real(anchor[1], "anchor wall"))
    return head, meta, rows


class ReceiverDB:
    """One SQLite connection in autocommit mode, WAL, ``synchronous=FULL``. Not thread-safe: the caller locks."""

    def __init__(self, path, busy_timeout=5.0):
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.migrate()
        except BaseException:
            self.db.close()
            raise

    def migrate(self):
        """Create what is missing; add ``batches.digest`` to a database made before it existed."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(batches)")}
        if columns and "digest" not in columns:
            self.db.execute("ALTER TABLE batches ADD COLUMN digest BLOB")
        self.db.executescript(SCHEMA)

    def rollback(self):
        """End an open transaction, whatever interrupted it. A failing ROLLBACK is logged (the exception that
        interrupted the transaction is the one worth raising)."""
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.error("receiver database %s: ROLLBACK failed: %s", self.path, exc)

    def store(self, batch, digest, data, received):
        """Store one verified batch. Returns ``STORED``, ``DUPLICATE`` or ``CONFLICT``.

        Raises ``UnstorableError`` before touching the database, ``sqlite3.Error`` when storage fails (after the
        rollback); any other exception also rolls back first.
        """
        head, meta, rows = batch_rows(batch)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            known = db.execute("SELECT digest FROM batches WHERE gw = ? AND boot = ? AND seq = ?", head).fetchone()
            if known is None:
                db.execute("INSERT INTO batches (gw, boot, seq, kid, clock, anchor_mono, anchor_wall, received, "
                           "records, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           head + meta + (received, len(rows), digest))
                db.executemany("INSERT INTO records (gw, boot, seq, n, t, u, v, vs, vb) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                outcome = STORED
            elif known[0] is None or bytes(known[0]) == digest:
                outcome = DUPLICATE
            else:
                db.execute("INSERT OR IGNORE INTO conflicts (gw, boot, seq, kid, received, reason, digest, data) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           head + (meta[0], received, "same (gw, boot, seq), different content", digest,
                                   bytes(data)))
                outcome = CONFLICT
            db.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        return outcome, len(rows)

    def query(self, sql, args=()):
        return self.db.execute(sql, args).fetchall()

    def close(self):
        self.db.close()
