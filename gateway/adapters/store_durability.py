"""Durability: commits, the fsync of the WAL (``sync``, the power-cut window) and our own WAL checkpoints.

Part of ``gateway.adapters.store.Store`` (a mixin: it works on the store's connection, under its lock). With
``sync_interval=0`` every commit runs with ``synchronous=FULL`` (one fsync of the WAL); with ``sync_interval`` > 0
commits reach the OS and ``sync`` fsyncs the WAL once for all of them. ``fsyncs`` counts the fsyncs (commits, plus
two per checkpoint); the WAL is checkpointed and truncated once it holds ``checkpoint_pages`` pages.
"""

import logging
import os
import sqlite3

from gateway.core.errors import StoreError

log = logging.getLogger("gateway.adapters.store")  # the store's logger: its messages keep their name


class Durability:
    """The commit, sync and checkpoint part of ``gateway.adapters.store.Store``."""

    def _commit(self):
        self._db.execute("COMMIT")
        self.commits += 1
        if not self.sync_interval:
            self.fsyncs += 1

    def sync_due(self, now):
        """True when a batch committed without an fsync is still queued ``sync_interval`` seconds later (``now``:
        the monotonic time of the store's clock)."""
        if not self._unsynced:
            return False
        return now - next(iter(self._unsynced.values())) >= self.sync_interval

    def sync(self):
        """Make every commit so far survive a power cut: one fsync of the WAL (SQLite's own recovery replays the
        WAL up to the last intact commit, so fsyncing the file is what ``synchronous=FULL`` does at a commit)."""
        with self._lock:
            if not self.sync_interval:
                return
            try:
                self._sync_wal()
            except OSError as exc:
                raise StoreError("cannot fsync %s-wal: %s" % (self.path, exc), kind="io") from exc
            self.syncs += 1
            self._unsynced.clear()

    def _sync_wal(self):
        if not self.sync_interval:
            return
        fd = os.open(self.path + "-wal", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.fsyncs += 1

    def _rollback(self):
        """Undo a failed transaction and re-read the byte total (drops made in it did not happen)."""
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("store: rollback failed on %s: %s", self.path, exc)
        try:
            self._resync_bytes()
        except sqlite3.Error as exc:
            log.error("store: cannot re-read the queue size of %s: %s", self.path, exc)

    def wal_bytes(self):
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    def _maybe_checkpoint(self):
        """Copy the WAL into the database and truncate it once it holds ``checkpoint_pages`` pages.

        This bounds the WAL on disk (``checkpoint_pages * page_size`` plus one transaction). A checkpoint costs
        two fsyncs (the WAL, then the database); a failed one is retried after the next commit.
        """
        if self.wal_bytes() < self._checkpoint_pages * self._page_size:
            return
        self.checkpoint()

    def checkpoint(self):
        """Checkpoint and truncate the WAL now. Returns True if it completed."""
        with self._lock:
            try:
                busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as exc:
                log.error("store: checkpoint of %s failed: %s", self.path, exc)
                return False
            self.checkpoints += 1
            self.fsyncs += 2
            if not busy:
                self._unsynced.clear()  # the checkpoint fsynced the WAL and the database
            return not busy
