"""Wiring and lifecycle: sources -> rules -> batcher -> sign -> store -> uplink.

The agent is the small daemon shell around pure stages. It runs on one asyncio loop:

* sources call ``emit`` with readings; rules filter them; the batcher cuts batches, which are signed at once;
* a commit task writes every batch waiting for the disk in one transaction (group commit: under load, many
  batches share one fsync), on a dedicated store thread;
* an uplink task sends what the store holds, alarms first, acknowledging (deleting) only after the upstream said
  so, with capped exponential backoff and jitter, honouring ``Retry-After``;
* a batch that keeps failing while others are delivered stops blocking the queue and ends quarantined as poison
  (``gateway.core.poison``); an outage never does that;
* an alarm event is cut into a batch of its own at once and wakes the uplink (even out of a backoff or a
  Retry-After wait: one immediate attempt per new alarm), which re-reads the queue after
  every send, so an alarm overtakes a backlog after at most one batch in flight.

Backpressure: at most ``max_pending`` signed batches wait in memory for the disk. While the store refuses writes
(full disk, read-only directory) they are also sent straight from memory. When memory is full too, the oldest
non-alarm batch in memory is dropped and counted (``memory_dropped_*``): the agent degrades, it does not die.
"""

import asyncio
import collections
import functools
import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor

from gateway.core import senml, wire
from gateway.core.batcher import Batcher, TimeBase
from gateway.core.errors import StoreError, UplinkError
from gateway.core.model import EncodedBatch, Event, Reading
from gateway.core.poison import POISON, SKIP, PoisonPolicy

log = logging.getLogger(__name__)

HEALTH_SENSOR = "health"
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def _bad_value(value, unit):
    """True for a value no batch may carry: a non-finite float, an int outside int64, a non-number where a unit
    says a number is expected, or a type SenML has no value field for. The slow path of ``Agent.emit``'s check."""
    if isinstance(value, bool) or value.__class__ in (str, bytes):
        return unit is not None  # vb / vs / vd: only for a dimensionless reading
    if isinstance(value, float):
        return value - value != 0.0  # inf - inf and nan - nan are nan
    if isinstance(value, int):
        return not INT64_MIN <= value <= INT64_MAX
    return True


class Backoff:
    """Capped exponential backoff with jitter; ``reset`` on success."""

    def __init__(self, low=0.5, high=300.0, rng=None):
        self.low, self.high = low, high
        self.rng = rng or random.Random()
        self.failures = 0

    def next(self, retry_after=None):
        delay = min(self.high, self.low * (2 ** self.failures))
        self.failures = min(self.failures + 1, 32)
        delay *= 0.5 + 0.5 * self.rng.random()
        if retry_after is not None:
            delay = max(delay, min(retry_after, 3600.0))
        return delay

    def reset(self):
        self.failures = 0


class Agent:
    def __init__(self, *, gw, key, store, uplink, sources=(), clock, batch=None, rules=None, rng=None,
                 backoff=(0.5, 300.0), max_pending=256, health_interval=60.0, on_commit=None, on_sent=None,
                 retry_every=60.0, poison=(3, 5, 600.0)):
        self.gw = gw
        self.prefix = gw + "/"
        self.store = store
        self.uplink = uplink
        self.sources = list(sources)
        self.clock = clock
        self.rules = rules
        self.signer = wire.Signer(key)
        self.kid = key.kid
        max_readings = getattr(batch, "max_readings", 1000)
        self.batcher = Batcher(max_readings, getattr(batch, "max_age_s", 10.0))
        self.time_quantum = getattr(batch, "time_quantum_s", 1.0)
        self.timebase = TimeBase(clock)
        self.rng = rng or random.Random()
        self.backoff = Backoff(backoff[0], backoff[1], self.rng)
        # (suspect after K failures in a row, poison after N failures with the link proven, over at least T s)
        self.poison = PoisonPolicy(poison[0], poison[1], poison[2], delay=backoff)
        self.max_pending = max_pending
        self.health_interval = health_interval
        self.retry_every = retry_every  # how often to look for rejected batches whose retry is due
        self.on_commit = on_commit
        self.on_sent = on_sent
        self.boot = store.next_boot()
        self.seq = 0
        self.started = clock.monotonic()
        self.counters = collections.Counter()
        self.uplink_state = "starting"
        self.last_ack = None
        self.last_error = None
        self.store_ok = True
        self._pending = collections.deque()
        self._committing = set()  # ids of the batches the commit task is writing right now
        self._rejected_in_memory = set()  # keys of batches in memory the upstream rejected: not sent from memory
        self._last_health = None
        self._health_sent = {}
        self._store_thread = ThreadPoolExecutor(1, "store")
        self._uplink_thread = ThreadPoolExecutor(1, "uplink")
        self._commit_wake = None
        self._uplink_wake = None
        self._alarm_wake = None
        self._alarm_waiting = False
        self._first_cut = False
        self._loop = None
        self.observers = []  # callables that see every reading and event first (the console's SensorBoard)

    # -- input side (runs on the event loop, must be fast and must not raise for bad data) ---------------------
    def emit(self, item):
        for observe in self.observers:
            observe(item)
        cls = item.__class__
        if cls is Reading:
            self.counters["readings_in"] += 1
            # Defence in depth: decoders should never produce these, but one bad number must not reach the
            # batcher (CBOR would carry it, a backend's int64 column would not). Cheap on the common types.
            value = item.value
            vcls = value.__class__
            if vcls is float:
                if value - value:  # nan for inf and nan; 0.0 (false) otherwise
                    self.counters["readings_bad_value"] += 1
                    return
            elif vcls is int:
                if not INT64_MIN <= value <= INT64_MAX:
                    self.counters["readings_bad_value"] += 1
                    return
            elif _bad_value(value, item.unit):
                self.counters["readings_bad_value"] += 1
                return
            if self.rules is None:
                self._add(item)
                return
            result = self.rules.process(item)
            for r in result.send:
                self._add(r)
            for e in result.events:
                self._event(e)
        elif isinstance(item, Event):
            self._event(item)
        else:
            self.counters["emit_bad_type"] += 1

    def _add(self, item):
        if self.batcher.add(item, self.clock.monotonic()) or not self._first_cut:
            # The first reading after start is committed at once: an installer sees data arrive within a second
            # of boot, and a crash loop still gets each boot's first reading out.
            self._first_cut = True
            self._cut()

    def _event(self, event):
        self.counters["events"] += 1
        if event.alarm:
            self.counters["alarms"] += 1
            self._seal([], [event], priority=1)
        else:
            self._add(event)

    def _cut(self):
        readings, events = self.batcher.cut()
        now = self.clock.monotonic()
        if self._last_health is None or now - self._last_health >= self.health_interval:
            readings = readings + self._health_readings(now)
        if readings or events:
            self._seal(readings, events, priority=0)

    def _seal(self, readings, events, priority):
        """Encode and sign a batch; it waits in memory until the commit task writes it."""
        synced = self.timebase.refresh()
        records = senml.encode_records(readings, events, self.prefix, time_quantum=self.time_quantum,
                                       time_offset=self.timebase.offset)
        payload = wire.encode_payload(self.gw, self.boot, self.seq, synced, records, self.timebase.anchor())
        batch = EncodedBatch(self.boot, self.seq, self.signer(payload), priority, len(readings), len(events),
                             self.clock.wall())
        self.seq += 1
        self.counters["batches_cut"] += 1
        if len(self._pending) >= self.max_pending:
            self._drop_from_memory()
        self._pending.append(batch)
        if priority:
            self._alarm_waiting = True
            if self._alarm_wake is not None:
                self._alarm_wake.set()
        if self._commit_wake is not None:
            self._commit_wake.set()
        return batch

    def _drop_from_memory(self):
        # A batch being committed right now is on its way to disk: dropping (and counting) it would be a lie.
        movable = [b for b in self._pending if id(b) not in self._committing]
        victim = next((b for b in movable if not b.priority), None) or (movable[0] if movable else None)
        if victim is None:
            return  # all in flight: memory holds at most max_pending + 1 until the commit returns
        self._pending.remove(victim)
        self.counters["memory_dropped_batches"] += 1
        self.counters["memory_dropped_readings"] += victim.readings

    def _health_readings(self, now):
        self._last_health = now
        values = {}
        try:
            values.update(self.store.counters())
        except StoreError:
            values["store_errors"] = self.counters["store_errors"]
        for key in ("memory_dropped_batches", "memory_dropped_readings", "store_errors", "readings_bad_value"):
            values[key] = self.counters[key]
        for src in self.sources:
            for key, n in src.counters.items():
                if key.startswith("error.") or key in ("reopen", "restarts", "open_failed", "silent"):
                    values["%s.%s" % (src.name, key)] = n
        keep = ("dropped_batches", "dropped_readings", "dropped_alarm_batches", "expired_batches", "quarantined",
                "conflict_batches", "poison_batches", "salvaged_batches", "lost_batches")
        out = []
        for key, value in values.items():
            if key in keep or "error" in key or "dropped" in key or "reopen" in key or "restarts" in key \
                    or "silent" in key or "open_failed" in key or "bad_value" in key:
                if self._health_sent.get(key) != value:
                    self._health_sent[key] = value
                    out.append(Reading(HEALTH_SENSOR, key, value, None, now))
        return out

    # -- the commit task --------------------------------------------------------------------------------------
    async def _commit_loop(self):
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            await self._commit_wake.wait()
            self._commit_wake.clear()
            while self._pending:
                batches = list(self._pending)
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
                self._rejected_in_memory.difference_update(b.key for b in batches)
                self.counters["batches_committed"] += len(batches)
                self.counters["readings_committed"] += sum(b.readings for b in batches)
                if self.on_commit:
                    for b, sid in zip(batches, ids):
                        self.on_commit(b, sid)
                self._uplink_wake.set()

    # -- the uplink task --------------------------------------------------------------------------------------
    async def _next_batches(self, limit=8):
        """The next round: alarms first, then oldest first; suspected poison after the rest, and not at all while
        it waits out its own retry delay (``gateway.core.poison``)."""
        held = self.poison.held(self.clock.monotonic())
        if self.store_ok:
            loop = asyncio.get_running_loop()
            pending = functools.partial(self.store.pending, limit, exclude={sid for _, sid in held if sid})
            try:
                return self.poison.order(await loop.run_in_executor(self._store_thread, pending))
            except StoreError as exc:
                self.store_ok = False
                self.last_error = str(exc)
        keys = {key for key, _ in held} | self._rejected_in_memory
        batches = sorted((b for b in self._pending if b.key not in keys), key=lambda b: -b.priority)
        return self.poison.order(batches[:limit])

    async def _uplink_loop(self):
        loop = asyncio.get_running_loop()
        while True:
            batches = await self._next_batches()
            if not batches:
                if self.uplink_state != "down":
                    self.uplink_state = "idle"
                try:
                    await asyncio.wait_for(self._uplink_wake.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                self._uplink_wake.clear()
                continue
            self._alarm_waiting = False
            skipped = False  # a suspect was passed over in this round, with no delivery since
            for batch in batches:
                try:
                    await loop.run_in_executor(self._uplink_thread, self.uplink.send, batch)
                except UplinkError as exc:
                    self.last_error = str(exc)
                    if not exc.retryable:
                        if exc.status == 409:
                            # The backend holds other bytes under this (gw, boot, seq): a reused identity or a
                            # forgery. Keep ours (quarantined, counted), never drop them as "delivered".
                            self.counters["conflict_batches"] += 1
                            log.error("uplink: %s holds different content for batch %s; kept in quarantine",
                                      self.uplink.describe(), batch.key)
                            await self._quarantine(batch, str(exc), "conflict_batches")
                        else:
                            await self._quarantine(batch, str(exc))
                        self.poison.forget(batch.key)
                        continue
                    self.counters["uplink_failures"] += 1
                    verdict = self.poison.failed(batch.key, self.clock.monotonic(), batch.store_id)
                    if verdict == POISON and batch.store_id is None:
                        verdict = SKIP  # only in memory (the store is failing): keep it, quarantine needs the disk
                    if verdict == POISON:
                        self.counters["poison_batches"] += 1
                        log.error("uplink: batch %s keeps failing while other batches are delivered (%s); "
                                  "quarantined as poison", batch.key, exc)
                        await self._quarantine(batch, "poison: %s" % exc, "poison_batches")
                        continue
                    if verdict == SKIP and not skipped:
                        # Suspect: the batches behind it go first, and it waits out its own delay. A second failure
                        # before anything is delivered looks like an outage: back off as usual.
                        self.counters["poison_suspect_skips"] += 1
                        skipped = True
                        continue
                    delay = self.backoff.next(exc.retry_after)
                    if self.uplink_state != "down":
                        log.warning("uplink: %s; retrying in %.1f s", exc, delay)
                    self.uplink_state = "down"
                    await self._backoff_sleep(delay)
                    break
                self.backoff.reset()
                self.poison.acked(batch.key)
                skipped = False
                if self.uplink_state == "down":
                    log.info("uplink: delivering again")
                self.uplink_state = "up"
                self.last_ack = self.clock.wall()
                self.counters["batches_sent"] += 1
                self.counters["readings_sent"] += batch.readings
                await self._ack(batch)
                if self.on_sent:
                    self.on_sent(batch)
                if self._alarm_waiting and not batch.priority:
                    break  # an alarm was cut meanwhile: re-read the queue so it goes next

    async def _backoff_sleep(self, delay):
        """Sleep out the backoff, but wake at once when an alarm is cut: each new alarm earns one immediate attempt,
        even against a server's Retry-After, because a fridge alarm must not wait for the backoff to expire."""
        self._alarm_wake.clear()
        try:
            await asyncio.wait_for(self._alarm_wake.wait(), delay)
        except asyncio.TimeoutError:
            return
        self.counters["alarm_wakeups"] += 1

    async def _ack(self, batch):
        if batch.store_id is None:
            try:
                self._pending.remove(batch)
            except ValueError:
                pass
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._store_thread, self.store.ack, [batch.store_id])
        except StoreError as exc:
            # The batch stays queued and will be sent again: a duplicate the backend drops, never a loss.
            self.counters["store_errors"] += 1
            self.last_error = str(exc)
            log.error("store: cannot delete acknowledged batch %s: %s", batch.key, exc)

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

    # -- the ticker ------------------------------------------------------------------------------------------
    async def _tick_loop(self, period=0.2):
        next_retry = self.clock.monotonic() + self.retry_every
        while True:
            await asyncio.sleep(period)
            now = self.clock.monotonic()
            if now >= next_retry and self.store_ok:
                next_retry = now + self.retry_every
                await self._retry_quarantined()
            if self.rules is not None:
                result = self.rules.tick(now)
                for r in result.send:
                    self._add(r)
                for r in getattr(result, "heartbeat", ()):  # forwarded by the heartbeat: the engine counts them sent
                    self._add(r)
                for e in result.events:
                    self._event(e)
            if self.batcher.due(now):
                self._cut()

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def run(self, stop, drain_timeout=0.0):
        """Run until ``stop`` (an asyncio.Event) is set; then flush, commit, optionally drain, and return."""
        self._loop = asyncio.get_running_loop()
        self._commit_wake = asyncio.Event()
        self._uplink_wake = asyncio.Event()
        self._alarm_wake = asyncio.Event()
        if self._pending:
            self._commit_wake.set()  # batches sealed before the loop started must not wait for the next one
        log.info("agent %s starting: boot epoch %d, kid %s, uplink %s", self.gw, self.boot, self.kid,
                 self.uplink.describe())
        source_tasks = [asyncio.create_task(s.run(self.emit), name="source:" + s.name) for s in self.sources]
        core = [asyncio.create_task(self._commit_loop(), name="commit"),
                asyncio.create_task(self._uplink_loop(), name="uplink"),
                asyncio.create_task(self._tick_loop(), name="tick")]
        try:
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([waiter] + core + source_tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter and task.exception() is not None:
                    raise task.exception()
        finally:
            for task in source_tasks:
                task.cancel()
            await asyncio.gather(*source_tasks, return_exceptions=True)
            if self.rules is not None and hasattr(self.rules, "flush"):
                result = self.rules.flush()
                for r in getattr(result, "send", result):
                    self._add(r)
            self._cut()
            self._commit_wake.set()
            await self._wait(lambda: not self._pending, 10.0)
            if drain_timeout:
                await self._wait(lambda: self.depth()[0] == 0, drain_timeout)
            for task in core:
                task.cancel()
            await asyncio.gather(*core, return_exceptions=True)
            await self._close_blocking()

    async def _close_blocking(self, timeout=20.0):
        """Join the worker threads and close the uplink without blocking the loop (signals keep working)."""
        def close():
            self._uplink_thread.shutdown(wait=True)
            self.uplink.close()
            self._store_thread.shutdown(wait=True)
        closer = threading.Thread(target=close, name="agent-close", daemon=True)
        closer.start()
        deadline = self._loop.time() + timeout
        while closer.is_alive() and self._loop.time() < deadline:
            await asyncio.sleep(0.05)
        if closer.is_alive():
            log.error("shutdown: the uplink or the store did not close within %.0f s; leaving them behind", timeout)

    async def _wait(self, predicate, timeout):
        deadline = self._loop.time() + timeout
        while not predicate() and self._loop.time() < deadline:
            await asyncio.sleep(0.05)
        return predicate()

    def depth(self):
        try:
            return self.store.depth()
        except StoreError:
            return (len(self._pending), sum(b.readings for b in self._pending), 0, 0)

    def status(self):
        """A snapshot for the console, ``doctor`` and the demo summary."""
        n, readings, size, alarms = self.depth()
        return {"gateway": self.gw, "boot": self.boot, "kid": self.kid,
                "uptime_s": round(self.clock.monotonic() - self.started, 1), "clock_synced": self.timebase.synced,
                "uplink": self.uplink.describe(), "uplink_state": self.uplink_state, "last_ack": self.last_ack,
                "last_error": self.last_error, "store_ok": self.store_ok, "queue_batches": n,
                "queue_readings": readings, "queue_bytes": size, "queue_alarms": alarms,
                "memory_batches": len(self._pending), "counters": dict(self.counters),
                "sources": [s.status() for s in self.sources]}
