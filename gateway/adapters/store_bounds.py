"""The queue's bounds: by bytes (the signed batches' sizes, and the file's pages) and by age. Part of ``Store``.

Making room drops the oldest non-alarm batches first; alarms go only when nothing else is left. Every drop is
counted in ``meta`` in the same transaction as the write that needed the room. These methods run inside the
store's transaction, with its lock held (``Store.put_many``).
"""

import sqlite3

SANE_WALL = 1_600_000_000.0  # 2020-09-13: a wall time before this is a Pi that has not synchronised its clock yet


class QueueBounds:
    """The bounds policy of ``gateway.adapters.store.Store`` (a mixin: it works on the store's connection)."""

    def _admit(self, batches, blobs):
        """Ids of the batches that fit in the bound on their own: alarms first, then the newest."""
        budget = self.max_bytes * 3 // 4  # a payload byte costs up to ~1.3 bytes of file
        if sum(len(blob) for blob in blobs.values()) <= budget:
            return set(map(id, batches))
        admitted, total = set(), 0
        order = [b for b in reversed(batches) if b.priority] + [b for b in reversed(batches) if not b.priority]
        for b in order:
            if total + len(blobs[id(b)]) <= budget:
                admitted.add(id(b))
                total += len(blobs[id(b)])
        return admitted

    def _disk_used(self):
        """Bytes of the database file in use (pages minus free pages), as seen inside the transaction."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self._page_size

    def _excess(self, need):
        """How far over the bound the queue would be after adding ``need`` bytes: the larger of the payload
        excess and the file excess (B-tree pages are not full, so a payload byte costs more than a byte on disk;
        a new batch is estimated at its size plus a quarter plus one page)."""
        excess = self._bytes + need - self.max_bytes
        if need:
            excess = max(excess, self._disk_used() + need + need // 4 + self._page_size - self.max_bytes)
        return excess

    def _make_room(self, need, now):
        self._expire(now)
        if self._excess(need) <= 0:
            return
        for alarms in (False, True):
            cond = "prio > 0" if alarms else "prio = 0"
            while self._excess(need) > 0:
                rows = self._db.execute(
                    "SELECT id, readings, LENGTH(data), prio FROM batches WHERE %s ORDER BY id LIMIT 64" % cond
                ).fetchall()
                if not rows:
                    break
                excess = self._excess(need)
                take, freed = [], 0
                for row in rows:
                    take.append(row)
                    freed += row[2]
                    if freed >= excess:
                        break
                self._drop(take)
        if self._bytes + need > self.max_bytes:  # cannot happen: _admit keeps need <= max_bytes
            raise sqlite3.OperationalError("batch of %d bytes is larger than the store bound (full)" % need)

    def _expire(self, now):
        """Drop batches older than ``max_age`` (counted as ``expired_batches`` and as drops).

        Only with a plausible wall clock: a gateway that boots in 1970 and then synchronises must not expire
        everything it queued meanwhile. Batches stamped before ``SANE_WALL`` never expire by age (the byte bound
        still applies to them). Runs at most every ``expire_every`` seconds of wall time.
        """
        if not self.max_age or now < SANE_WALL:
            return
        if self._next_expiry is not None and self._next_expiry - self._expire_every <= now < self._next_expiry:
            return
        self._next_expiry = now + self._expire_every
        rows = self._db.execute("SELECT id, readings, LENGTH(data), prio FROM batches WHERE created < ? "
                                "AND created >= ?", (now - self.max_age, SANE_WALL)).fetchall()
        if rows:
            self._drop(rows, "expired_batches")

    def _count_drop(self, batches, readings, alarms):
        self._bump("dropped_batches", batches)
        self._bump("dropped_readings", readings)
        if alarms:
            self._bump("dropped_alarm_batches", alarms)

    def _drop(self, rows, extra_counter=None):
        self._db.executemany("DELETE FROM batches WHERE id = ?", [(r[0],) for r in rows])
        self._count_drop(len(rows), sum(r[1] for r in rows), sum(1 for r in rows if r[3]))
        if extra_counter:
            self._bump(extra_counter, len(rows))
        self._bytes -= sum(r[2] for r in rows)
