"""The agent's uplink task: send what the store holds, alarms first, and decide each failed batch's fate.

Part of ``gateway.app.agent.Agent`` (a mixin over the agent's state: its store and uplink threads, its memory
buffer, its counters). It acknowledges (deletes) a batch only after the upstream said so; failures back off with
jitter (``Retry-After`` honoured); a 4xx quarantines the batch, a 409 keeps ours as a conflict; a batch that keeps
failing while others are delivered is suspected, then poison (``gateway.core.poison``); an alarm cut meanwhile wakes
the task out of a backoff and goes next.
"""

import asyncio
import functools
import logging

from gateway.core.errors import StoreError, UplinkError
from gateway.core.poison import POISON, SKIP

log = logging.getLogger("gateway.app.agent")  # one logger for the agent's messages, as before the split


class Delivery:
    last_rejection = None  # (HTTP status or None, reason, wall time) of the last batch the upstream refused
    # -- the uplink task --------------------------------------------------------------------------------------
    async def _next_batches(self, limit=8):
        """The next round: alarms first, then oldest first; suspected poison after the rest, and not at all while
        it waits out its own retry delay (``gateway.core.poison``)."""
        held = self.poison.held(self.clock.monotonic())
        if self.store_ok:
            loop = asyncio.get_running_loop()
            pending = functools.partial(self.store.pending, limit, exclude={sid for _, sid in held if sid})
            try:
                stored = await loop.run_in_executor(self._store_thread, pending)
            except StoreError as exc:
                self.store_ok = False
                self.last_error = str(exc)
            else:
                if not self.deliver_first or len(stored) >= limit:
                    return self.poison.order(stored)
                # Deliver first: batches not yet written go too, after the stored ones (alarms first overall).
                keys = {b.key for b in stored} | {key for key, _ in held} | self._rejected_in_memory
                fresh = [b for b in self._pending if b.key not in keys]
                both = sorted(stored + fresh, key=lambda b: -b.priority)
                return self.poison.order(both[:limit])
        keys = {key for key, _ in held} | self._rejected_in_memory
        batches = sorted((b for b in self._pending if b.key not in keys), key=lambda b: -b.priority)
        return self.poison.order(batches[:limit])

    async def _uplink_loop(self):
        while True:
            batches = await self._next_batches()
            if not batches:
                self._refresh_idle()
                await self._idle()
                continue
            self._alarm_waiting = False
            self._sending = True
            self._refresh_idle()
            try:
                await self._send_round(batches)
            finally:
                self._sending = False
            self._refresh_idle()

    async def _idle(self):
        if self.uplink_state != "down":
            self.uplink_state = "idle"
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that arrives as the wait
        # completes, and the task then runs on after shutdown cancelled it
        try:
            async with asyncio.timeout(1.0):
                await self._uplink_wake.wait()
        except TimeoutError:
            pass
        self._uplink_wake.clear()

    async def _send_round(self, batches):
        """Send one round in order; stop at an outage (after its backoff) or when an alarm was cut meanwhile."""
        loop = asyncio.get_running_loop()
        skipped = False  # a suspect was passed over in this round, with no delivery since
        for batch in batches:
            if batch.store_id is None:
                self._in_flight.add(batch.key)
            try:
                await loop.run_in_executor(self._uplink_thread, self.uplink.send, batch)
            except UplinkError as exc:
                self._in_flight.discard(batch.key)
                self._store_ids.pop(batch.key, None)
                self.last_error = str(exc)
                outcome = await self._failed(batch, exc, skipped)
                if outcome == "backoff":
                    return
                skipped = skipped or outcome == "skipped"
                continue
            skipped = False
            await self._delivered(batch)
            if self._alarm_waiting and not batch.priority:
                return  # an alarm was cut meanwhile: re-read the queue so it goes next

    async def _failed(self, batch, exc, skipped):
        """Decide a failed batch's fate: ``next`` (quarantined), ``skipped`` (a suspect passed over) or
        ``backoff`` (an outage: the backoff was slept out, re-read the queue)."""
        if not exc.retryable:
            self.last_rejection = (exc.status, str(exc), self.clock.wall())  # the console shows why
            if exc.status == 409:
                # The backend holds other bytes under this (gw, boot, seq): a reused identity or a forgery. Keep
                # ours (quarantined, counted), never drop them as "delivered".
                self.counters["conflict_batches"] += 1
                log.error("uplink: %s holds different content for batch %s; kept in quarantine",
                          self.uplink.describe(), batch.key)
                await self._quarantine(batch, str(exc), "conflict_batches")
            else:
                await self._quarantine(batch, str(exc))
            self.poison.forget(batch.key)
            return "next"
        self.counters["uplink_failures"] += 1
        verdict = self.poison.failed(batch.key, self.clock.monotonic(), batch.store_id)
        if verdict == POISON and batch.store_id is None:
            verdict = SKIP  # only in memory (the store is failing): keep it, quarantine needs the disk
        if verdict == POISON:
            self.counters["poison_batches"] += 1
            log.error("uplink: batch %s keeps failing while other batches are delivered (%s); quarantined as poison",
                      batch.key, exc)
            await self._quarantine(batch, "poison: %s" % exc, "poison_batches")
            return "next"
        if verdict == SKIP and not skipped:
            # Suspect: the batches behind it go first, and it waits out its own delay. A second failure before
            # anything is delivered looks like an outage: back off as usual.
            self.counters["poison_suspect_skips"] += 1
            return "skipped"
        delay = self.backoff.next(exc.retry_after)
        if self.uplink_state != "down":
            log.warning("uplink: %s; retrying in %.1f s", exc, delay)
        self.uplink_state = "down"
        await self._backoff_sleep(delay)
        return "backoff"

    async def _delivered(self, batch):
        self.backoff.reset()
        self.poison.acked(batch.key)
        if self.uplink_state == "down":
            log.info("uplink: delivering again")
        self.uplink_state = "up"
        self.last_ack = self.clock.wall()
        if batch.created:
            self.latency.observe(max(0.0, self.last_ack - batch.created))
        self.counters["batches_sent"] += 1
        self.counters["readings_sent"] += batch.readings
        await self._ack(batch)
        if self.on_sent:
            self.on_sent(batch)

    async def _backoff_sleep(self, delay):
        """Sleep out the backoff, but wake at once when an alarm is cut: each new alarm earns one immediate attempt,
        even against a server's Retry-After, because a fridge alarm must not wait for the backoff to expire."""
        if self._uplink_replaced:  # replaced while this round was failing: try the new uplink at once
            self._uplink_replaced = False
            return
        self._alarm_wake.clear()
        try:
            async with asyncio.timeout(delay):
                await self._alarm_wake.wait()
        except TimeoutError:
            return
        if self._uplink_replaced:
            self._uplink_replaced = False
            return
        self.counters["alarm_wakeups"] += 1

    async def _ack(self, batch):
        if batch.store_id is None:
            self._in_flight.discard(batch.key)
            sid = self._store_ids.pop(batch.key, None)
            if sid is not None:  # sent from memory, written meanwhile: delete the stored copy
                await self._ack_ids([sid], batch.key)
            elif id(batch) in self._committing:  # being written right now: the commit task deletes it after
                self._acked_early.add(batch.key)
            else:
                try:
                    self._pending.remove(batch)
                except ValueError:
                    pass
                if self._commit_by.pop(id(batch), None) is not None and self.store_ok:
                    self.counters["batches_delivered_unwritten"] += 1
            return
        await self._ack_ids([batch.store_id], batch.key)

    async def _ack_ids(self, store_ids, key=None):
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._store_thread, self.store.ack, store_ids)
        except StoreError as exc:
            # The batch stays queued and will be sent again: a duplicate the backend drops, never a loss.
            self.counters["store_errors"] += 1
            self.last_error = str(exc)
            log.error("store: cannot delete acknowledged batch %s: %s", key or store_ids, exc)

    async def _retry_quarantined(self):
        """Give rejected batches their bounded retries (``Store.requeue_due``): a 4xx may have been passing."""
        loop = asyncio.get_running_loop()
        try:
            n = await loop.run_in_executor(self._store_thread, self.store.requeue_due)
        except StoreError as exc:
            self.counters["store_errors"] += 1
            log.error("store: %s", exc)
            return
        if n:
            self.counters["quarantine_retries"] += n
            log.info("uplink: retrying %d batches the upstream rejected earlier", n)
            self._uplink_wake.set()

    async def _quarantine(self, batch, reason, counter=None):
        self.counters["quarantined"] += 1
        log.warning("uplink rejected batch %s (%s); quarantined", batch.key, reason)
        if batch.store_id is None:
            # Sent from memory while the store fails: keep it (not sent from memory again); once committed it is
            # sent from the store, and a second rejection quarantines it on disk. Never dropped.
            self._rejected_in_memory.add(batch.key)
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._store_thread, self.store.quarantine, batch.store_id, reason, counter)
        except StoreError as exc:
            # It stays queued. Read the queue again only once a commit succeeds (as after a failed read), so a
            # rejected batch is not re-sent in a tight loop while the disk refuses the move.
            self.counters["store_errors"] += 1
            self.store_ok = False
            self.last_error = str(exc)
            log.error("store: cannot quarantine batch %s: %s", batch.key, exc)
