"""Quarantine: batches the upstream rejected, kept aside with their bytes, retried on a bounded schedule.

Part of ``gateway.adapters.store.Store`` (a mixin: it works on the store's connection, under its lock). A batch the
upstream rejected (4xx), a conflict (409), poison (``gateway.core.poison``) or a blob damaged on disk is moved out of
the queue, where it neither blocks delivery nor is lost; ``requeue_due`` gives it a bounded number of automatic
retries (``RETRY_DELAYS``), ``requeue_quarantined`` sends them all again by hand.
"""

import sqlite3

from gateway.adapters.store_errors import store_error as _store_error

_COLUMNS = "id, prio, boot, seq, created, readings, events, data"


class Quarantine:
    """The quarantine room of ``gateway.adapters.store.Store``."""

    def quarantine(self, store_id, reason, counter=None):
        """Move a batch the upstream rejected out of the queue, keeping its bytes for inspection or requeue.
        ``counter`` names a second persisted counter to bump (``conflict_batches``, ``poison_batches``)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT OR REPLACE INTO quarantine SELECT %s, ?, ? FROM batches WHERE id = ?" % _COLUMNS,
                    (reason[:200], self._now(), store_id))
                size = self._db.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM batches WHERE id = ?",
                                        (store_id,)).fetchone()[0]
                self._db.execute("DELETE FROM batches WHERE id = ?", (store_id,))
                self._bump("quarantined")
                if counter:
                    self._bump(counter)
                self._commit()
            except sqlite3.Error as exc:
                self._rollback()
                raise _store_error("quarantine a batch in", self.path, exc) from exc
            self._bytes -= size
            self._maybe_checkpoint()
            self._publish()

    def requeue_quarantined(self):
        """Put every quarantined batch back in the queue (after the backend was fixed). Returns the count."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                n = self._db.execute(
                    "INSERT INTO batches (prio, boot, seq, created, readings, events, data) "
                    "SELECT prio, boot, seq, created, readings, events, data FROM quarantine ORDER BY id"
                ).rowcount
                self._db.execute("DELETE FROM quarantine")
                self._commit()
            except sqlite3.Error as exc:
                self._rollback()
                raise _store_error("requeue quarantined batches in", self.path, exc) from exc
            self._bytes = self._db.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM batches").fetchone()[0]
            self._publish()
            return n

    #: how long a rejected batch waits before each automatic retry; after the last one it stays quarantined
    RETRY_DELAYS = (900.0, 7200.0, 43200.0)

    def requeue_due(self, delays=None):
        """Put back in the queue the quarantined batches whose next retry is due. Returns the count.

        A 4xx can be the backend's passing state (the gateway's key not enrolled yet) or a batch damaged on the way
        (a middlebox, an attacker flipping bytes): the bytes on disk are still genuine. So each rejected batch is
        retried after ``delays[0]``, ``delays[1]``, ... seconds in quarantine, and stays quarantined (kept,
        counted, requeued by hand with the console's ``store requeue``) once the delays are used up.
        """
        delays = self.RETRY_DELAYS if delays is None else delays
        now = self._now()
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT q.id, q.boot, q.seq, q.at, COALESCE(r.attempts, 0) FROM quarantine q "
                    "LEFT JOIN retries r ON r.boot = q.boot AND r.seq = q.seq ORDER BY q.id").fetchall()
                due = [row for row in rows if row[4] < len(delays) and now - row[3] >= delays[row[4]]]
                if not due:
                    return 0
                self._db.execute("BEGIN IMMEDIATE")
                for qid, boot, seq, _, attempts in due:
                    self._db.execute(
                        "INSERT INTO batches (prio, boot, seq, created, readings, events, data) "
                        "SELECT prio, boot, seq, created, readings, events, data FROM quarantine WHERE id = ?",
                        (qid,))
                    self._db.execute("DELETE FROM quarantine WHERE id = ?", (qid,))
                    self._db.execute("INSERT OR REPLACE INTO retries VALUES (?, ?, ?)", (boot, seq, attempts + 1))
                self._commit()
            except sqlite3.Error as exc:
                self._rollback()
                raise _store_error("retry quarantined batches in", self.path, exc) from exc
            self._resync_bytes()
            self._publish()
            return len(due)

    def quarantined(self):
        with self._lock:
            return self._db.execute("SELECT id, boot, seq, reason, LENGTH(data) FROM quarantine ORDER BY id"
                                    ).fetchall()
