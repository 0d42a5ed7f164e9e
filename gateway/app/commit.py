"""The agent's commit task: write every batch waiting in memory for the disk in one transaction (group commit).

Part of ``gateway.app.agent.Agent`` (a mixin over the agent's state: its memory buffer, its store thread, its
counters). Under load many batches share one fsync; while the store refuses writes the batches stay in memory
(the uplink sends them from there) and the task retries with a growing delay. With deliver first (issue 21) a batch
is written only once its ``commit_by`` deadline passed unacknowledged. ``_sync`` is the power-cut window's fsync,
which the tick task calls.
"""

import asyncio
import collections
import logging

from gateway.core.errors import StoreError

log = logging.getLogger("gateway.app.agent")  # one logger for the agent's messages, as before the split


class CommitTask:
    """The commit task of ``gateway.app.agent.Agent``."""

    async def _commit_loop(self):
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            await self._commit_wake.wait()
            self._commit_wake.clear()
            while self._pending:
                batches = self._due_for_commit()
                if not batches:
                    break
                self._committing = set(map(id, batches))
                try:
                    ids = await loop.run_in_executor(self._store_thread, self.store.put_many, batches)
                except StoreError as exc:
                    self._committing = set()
                    self.counters["store_errors"] += 1
                    if self.store_ok or self.last_error != str(exc):
                        log.error("store: %s; keeping up to %d batches in memory", exc, self.max_pending)
                    self.store_ok = False
                    self.last_error = str(exc)
                    self._uplink_wake.set()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                self._committing = set()
                if not self.store_ok:
                    log.warning("store: writable again")
                self.store_ok = True
                delay = 0.5
                committed = set(map(id, batches))
                self._pending = collections.deque(b for b in self._pending if id(b) not in committed)
                early = []
                for b, sid in zip(batches, ids):
                    self._commit_by.pop(id(b), None)
                    if sid is None:
                        continue
                    if b.key in self._acked_early:  # delivered from memory while it was being written
                        self._acked_early.discard(b.key)
                        early.append(sid)
                    elif b.key in self._in_flight:
                        self._store_ids[b.key] = sid
                self._rejected_in_memory.difference_update(b.key for b in batches)
                self.counters["batches_committed"] += len(batches)
                self.counters["readings_committed"] += sum(b.readings for b in batches)
                if self.on_commit:
                    for b, sid in zip(batches, ids):
                        self.on_commit(b, sid)
                if early:
                    await self._ack_ids(early)
                self._uplink_wake.set()
            self._refresh_idle()

    def _due_for_commit(self):
        """What the commit task writes now: everything, or (deliver first) what is past its deadline."""
        if not self.deliver_first or self._flushing or not self.store_ok:
            return list(self._pending)
        now = self.clock.monotonic()
        return [b for b in self._pending if self._commit_by.get(id(b), now) <= now]

    def _next_commit(self):
        """The earliest commit deadline of a batch in memory (deliver first), or None."""
        if not self.deliver_first or not self.store_ok or not self._commit_by:
            return None  # a failing store: the commit task retries on its own backoff
        due = [self._commit_by[id(b)] for b in self._pending
               if id(b) in self._commit_by and id(b) not in self._committing]
        return min(due) if due else None

    async def _sync(self):
        """The power-cut window: fsync the WAL once an undelivered batch has waited ``store.sync_interval_s``."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._store_thread, self.store.sync)
        except StoreError as exc:
            self.counters["store_errors"] += 1
            self.last_error = str(exc)
            log.error("store: %s", exc)
