"""The reference receiver's SQLite storage (``backend.storage.Storage``): schema versions, migration and the one
store transaction. The embedded default: one file, one process (docs/backend.md).

A batch is stored in one ``BEGIN IMMEDIATE`` transaction that ends in ``COMMIT`` or, on *any* exception, in
``ROLLBACK`` before the exception goes on: the connection is shared by every HTTP thread and the MQTT consumer, so
a transaction left open would fail every later batch from every gateway.

Values are converted before the transaction starts: SQLite stores integers of at most 64 bits, turns NaN into
NULL and cannot encode lone surrogates, so anything outside what a column holds raises ``UnstorableError`` (a
permanent rejection of these bytes, never a storage failure; ``backend.storage.batch_rows``).

Repeats: ``batches.digest`` is the SHA-256 of the signed payload bytes. The same ``(gw, boot, seq)`` with the same
digest is a duplicate; with another digest it is a *conflict* (a gateway that lost its state and reused ids): the
new bytes are kept apart in ``conflicts`` for an operator, never merged into ``records``. Rows written before the
digest existed (``digest IS NULL``) cannot be compared and count as duplicates.
"""

import contextlib
import logging
import sqlite3

from backend.command_queue import outcome_rows, record_outcomes
from backend.storage import (CONFLICT, CONFLICT_REASON, DUPLICATE, RECORD_COLUMNS, STORED, Storage, StorageError,
                             UnstorableError, batch_rows)

log = logging.getLogger(__name__)

#: The schema, one entry per version: ``(version, statements)``. A database is at the highest version recorded in
#: ``schema_version``; opening it applies the later entries in one transaction. Version 1 is the schema from before
#: the table existed (every statement is ``IF NOT EXISTS``, so a database made then is brought level by it).
MIGRATIONS = (
    (1, ("""CREATE TABLE IF NOT EXISTS batches (
            gw TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, kid TEXT NOT NULL, clock INTEGER NOT NULL,
            anchor_mono REAL, anchor_wall REAL, received REAL NOT NULL, records INTEGER NOT NULL, digest BLOB,
            PRIMARY KEY (gw, boot, seq)) WITHOUT ROWID""",
         """CREATE TABLE IF NOT EXISTS records (
            gw TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, n TEXT NOT NULL, t REAL NOT NULL, u TEXT,
            v REAL, vs TEXT, vb INTEGER)""",
         "CREATE INDEX IF NOT EXISTS records_by_name ON records (n, t)",
         """CREATE TABLE IF NOT EXISTS conflicts (
            id INTEGER PRIMARY KEY, gw TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, kid TEXT NOT NULL,
            received REAL NOT NULL, reason TEXT NOT NULL, digest BLOB NOT NULL, data BLOB NOT NULL,
            UNIQUE (gw, boot, seq, digest))""")),
    # "everything from one gateway in the last hour" is an index lookup too
    (2, ("CREATE INDEX IF NOT EXISTS records_by_gw ON records (gw, t)",)),
    # wire format 2: the exact decimal of each value as text ("21.50"), beside the nearest double in v
    (3, ("ALTER TABLE records ADD COLUMN v_exact TEXT",)),
    # the command queue and the commands' outcomes (backend.command_queue)
    (4, ("""CREATE TABLE IF NOT EXISTS commands (
            gw TEXT NOT NULL, kid TEXT NOT NULL, op_seq INTEGER NOT NULL, digest TEXT NOT NULL, exp INTEGER NOT NULL,
            action TEXT NOT NULL, data BLOB NOT NULL, queued REAL NOT NULL, handed INTEGER NOT NULL,
            last_handed REAL, state TEXT NOT NULL, outcome TEXT, done REAL, PRIMARY KEY (gw, kid, op_seq))""",
         "CREATE INDEX IF NOT EXISTS commands_by_state ON commands (gw, state)",
         "CREATE INDEX IF NOT EXISTS commands_by_digest ON commands (gw, digest)",
         """CREATE TABLE IF NOT EXISTS command_outcomes (
            gw TEXT NOT NULL, op_seq INTEGER, kid TEXT, digest TEXT, state TEXT NOT NULL, text TEXT NOT NULL,
            t REAL, received REAL NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL)""",
         "CREATE INDEX IF NOT EXISTS command_outcomes_by_gw ON command_outcomes (gw, received)")),
    # the read API (backend.readapi): a gateway's names and each name's newest record, a gateway's last batch
    (5, ("CREATE INDEX IF NOT EXISTS records_by_gw_name ON records (gw, n, t)",
         "CREATE INDEX IF NOT EXISTS batches_by_received ON batches (gw, received)")),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
_INSERT_RECORDS = "INSERT INTO records (%s) VALUES (%s)" % (", ".join(RECORD_COLUMNS),
                                                            ", ".join("?" * len(RECORD_COLUMNS)))



class SqliteStorage(Storage):
    """One SQLite connection in autocommit mode, WAL, ``synchronous=FULL``. Not thread-safe: the caller locks."""

    engine = "sqlite"

    def __init__(self, path, busy_timeout=5.0):
        self.path = path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        except sqlite3.Error as exc:
            raise StorageError("cannot open %s: %s" % (path, exc)) from exc
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.migrate()
        except sqlite3.Error as exc:
            self.db.close()
            raise StorageError("cannot open %s: %s" % (path, exc)) from exc
        except BaseException:
            self.db.close()
            raise

    @classmethod
    def from_target(cls, target, timeout=5.0):
        return cls(target, timeout)

    def schema_version(self):
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone():
            return 0
        return self.db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]

    def migrate(self):
        """Bring the schema to ``SCHEMA_VERSION`` in one transaction (a no-op when it is there already); add
        ``batches.digest`` to a database made before it existed."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied REAL NOT NULL)")
            current = self.schema_version()
            if current > SCHEMA_VERSION:
                raise StorageError("%s has schema version %d; this receiver knows up to %d (upgrade the receiver)"
                                   % (self.path, current, SCHEMA_VERSION))
            if current < 1:
                columns = {row[1] for row in db.execute("PRAGMA table_info(batches)")}
                if columns and "digest" not in columns:
                    db.execute("ALTER TABLE batches ADD COLUMN digest BLOB")
            for version, statements in MIGRATIONS:
                if version > current:
                    for statement in statements:
                        db.execute(statement)
                    db.execute("INSERT INTO schema_version (version, applied) VALUES (?, (julianday('now') - 2440587.5) * 86400.0)",
                               (version,))
                    log.info("receiver database %s: schema version %d", self.path, version)
            db.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise

    def rollback(self):
        """End an open transaction, whatever interrupted it. A failing ROLLBACK is logged (the exception that
        interrupted the transaction is the one worth raising)."""
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.error("receiver database %s: ROLLBACK failed: %s", self.path, exc)

    def store(self, batch, digest, data, received):
        """Store one verified batch. Returns ``(STORED | DUPLICATE | CONFLICT, records)``.

        Raises ``UnstorableError`` before touching the database, ``StorageError`` when storage fails (after the
        rollback); any other exception also rolls back first.
        """
        (result,) = self.store_many([(batch, digest, data)], received)
        if isinstance(result, UnstorableError):
            raise result
        return result

    def store_many(self, items, received):
        """Group commit: the storable batches of ``items`` in one transaction, so one COMMIT (one fsync with
        ``synchronous=FULL``) for the group. A key repeated within the group is a duplicate or a conflict of its
        first, as if they had come one by one."""
        results = [None] * len(items)
        group = []
        for i, (batch, digest, data) in enumerate(items):
            try:
                head, meta, rows = batch_rows(batch)
            except UnstorableError as exc:
                results[i] = exc
                continue
            group.append((i, head, meta, rows, digest, data, outcome_rows(batch)))
        if group:
            with self.transaction() as execute:
                for i, head, meta, rows, digest, data, outcomes in group:
                    results[i] = (self._store_one(execute, head, meta, rows, digest, data, outcomes, received),
                                  len(rows))
        return results

    def _store_one(self, execute, head, meta, rows, digest, data, outcomes, received):
        known = execute("SELECT digest FROM batches WHERE gw = ? AND boot = ? AND seq = ?", head).fetchone()
        if known is None:
            execute("INSERT INTO batches (gw, boot, seq, kid, clock, anchor_mono, anchor_wall, received, "
                    "records, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    head + meta + (received, len(rows), digest))
            self.db.executemany(_INSERT_RECORDS, rows)
            if outcomes:
                record_outcomes(execute, outcomes, head, received)
            return STORED
        if known[0] is None or bytes(known[0]) == digest:
            return DUPLICATE
        execute("INSERT OR IGNORE INTO conflicts (gw, boot, seq, kid, received, reason, digest, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", head + (meta[0], received, CONFLICT_REASON, digest, bytes(data)))
        return CONFLICT

    @contextlib.contextmanager
    def transaction(self):
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; any exception rolls back first (the connection is shared by every
        HTTP thread and the MQTT consumer: a transaction left open would fail every later call)."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db.execute
                db.execute("COMMIT")
            except BaseException:
                self.rollback()
                raise
        except sqlite3.Error as exc:
            raise StorageError("receiver database %s: %s" % (self.path, exc)) from exc

    def stats(self):
        return {"engine": self.engine, "schema_version": self.schema_version()}

    def query(self, sql, args=()):
        return self.db.execute(sql, args).fetchall()

    def _rows(self, sql, args=()):
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError("receiver database %s: %s" % (self.path, exc)) from exc

    def close(self):
        self.db.close()


#: the name this class had before there were two engines
ReceiverDB = SqliteStorage
