"""The async shell: sources -> pipeline -> store -> uplink. It only moves batches between them.

The stages between a source and the store (bad-value check, rules, batcher, health records, sealing) are the pure,
synchronous ``gateway.core.pipeline.Pipeline``. The agent runs on one asyncio loop:

* sources call ``emit`` with readings; the pipeline returns the batches it sealed, which wait in memory;
* a tick task sleeps through the injected clock (``clock.sleep``) until the pipeline's next cut is due (at most
  0.2 s) and calls the pipeline's ``tick`` (heartbeats, stale sensors, ``linger``/``hold``/``max_age`` cuts), so a
  fake clock drives the whole agent in tests and scenarios; a new batch or a link going idle wakes it early;
* the agent tells the pipeline whether anything is in flight (``Pipeline.set_idle``: nothing waits for the disk,
  the store queue is empty and nothing is being sent): idle, a batch is cut after ``batch.linger_s``; busy, it
  grows, up to ``batch.hold_s`` (the kill window) or ``max_readings`` (issue 21);
* with ``store.sync_interval_s`` > 0 commits are not fsynced; the tick task fsyncs the WAL (``Store.sync``) once a
  batch has waited that long undelivered, so the power-cut window is the interval and a link that keeps up costs
  no fsync at all;
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

The loop never waits on the store's lock: depth and counters come from ``store.snapshot``, which the store thread
publishes after each change. Other threads (the console's worker) change settings through ``configure``, which
runs on the loop.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor

from gateway import __version__
from gateway.adapters import procstats
from gateway.app.commit import CommitTask
from gateway.app.delivery import Delivery
from gateway.core import wire
from gateway.core.backoff import Backoff
from gateway.core.openmetrics import Histogram
from gateway.core.rates import DailyRate
from gateway.core.errors import StoreError
from gateway.core.pipeline import Pipeline
from gateway.core.poison import PoisonPolicy

log = logging.getLogger(__name__)

#: source counters that travel upstream in the health records (besides ``error.*``)
SOURCE_HEALTH = ("reopen", "restarts", "open_failed", "silent", "power_cycles", "power_cycle_failed",
                 "adapter_needs_reset")
#: the agent's own counters that travel upstream in the health records
AGENT_HEALTH = ("memory_dropped_batches", "memory_dropped_readings", "store_errors", "readings_bad_value")
#: seconds from a batch's cut to its acknowledgement: the buckets of ``edge_gateway_delivery_latency_seconds``
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
#: what the console may change while the agent runs (``Agent.configure``)
LIVE = ("max_age_s", "max_readings", "linger_s", "hold_s", "backoff_min_s", "backoff_max_s")
#: an item that entered the batcher reaches the journal (the page cache) within this many seconds
JOURNAL_FLUSH_S = 0.05


async def sleep_or_wake(clock, seconds, wake):
    """Sleep ``seconds`` on ``clock`` (a fake clock in tests and scenarios), or less if the asyncio.Event ``wake``
    is set meanwhile."""
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waker = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waker.cancel()


async def _cancel(tasks, again_after=1.0, timeout=20.0):
    """Cancel ``tasks`` and wait until they end, cancelling again one that swallowed it: on Python 3.11,
    ``asyncio.wait_for`` drops a cancellation that arrives in the loop iteration where what it awaits completes (a
    port's bytes, a wake-up event), and the task runs on. Awaiting it once more hung the demo's Ctrl-C for good."""
    loop = asyncio.get_running_loop()
    pending = set(tasks)
    deadline = loop.time() + timeout
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=min(again_after, max(0.0, deadline - loop.time())))
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: a task that failed while stopping has nothing left to report to
    if pending:
        log.error("shutdown: %s did not stop within %.0f s; leaving them behind", ", ".join(
            t.get_name() for t in pending), timeout)


class Agent(Delivery, CommitTask):
    def __init__(self, *, gw, key, store, uplink, sources=(), clock, batch=None, rules=None, rng=None,
                 backoff=(0.5, 300.0), max_pending=256, health_interval=60.0, on_commit=None, on_sent=None,
                 retry_every=60.0, poison=(3, 5, 600.0), deliver_first=False, actions=None, journal=None,
                 frame_bytes=0):
        self.gw = gw
        self.store = store
        self.uplink = uplink
        self.sources = list(sources)
        self.clock = clock
        self.rules = rules
        self.kid = key.kid
        self.rng = rng or random.Random()
        self.backoff = Backoff(backoff[0], backoff[1], self.rng)
        # (suspect after K failures in a row, poison after N failures with the link proven, over at least T s)
        self.poison = PoisonPolicy(poison[0], poison[1], poison[2], delay=backoff)
        self.max_pending = max_pending
        self.retry_every = retry_every  # how often to look for rejected batches whose retry is due
        self.on_commit = on_commit
        self.on_sent = on_sent
        self.boot = store.next_boot()
        self.started = clock.monotonic()
        self.counters = collections.Counter()  # shared with the pipeline: one set of counters for the status
        # local actions (gateway/app/actions.py): they see every event the pipeline makes, and their boards'
        # events (a dead actuator board) come back through emit, upstream like any other
        self.actions = actions
        if actions is not None:
            actions.connect(self.emit)
        self.pipeline = Pipeline(gw=gw, boot=self.boot, signer=wire.Signer(key), clock=clock, batch=batch,
                                 rules=rules, health_interval=health_interval, health_values=self._health_values,
                                 counters=self.counters, on_event=actions.submit if actions is not None else None,
                                 journaled=journal is not None, frame_bytes=frame_bytes)
        self.uplink_state = "starting"
        self.last_ack = None
        self.last_error = None
        self.store_ok = True
        self._pending = collections.deque()
        self._committing = set()  # ids of the batches the commit task is writing right now
        self._rejected_in_memory = set()  # keys of batches in memory the upstream rejected: not sent from memory
        self._store_thread = ThreadPoolExecutor(1, "store")
        self._uplink_thread = ThreadPoolExecutor(1, "uplink")
        self._commit_wake = None
        self._uplink_wake = None
        self._alarm_wake = None
        self._alarm_waiting = False
        self._tick_wake = None
        self._sending = False  # a round of sends is under way
        self._uplink_replaced = False  # replace_uplink woke the backoff (not an alarm)
        # Deliver first (issue 21): a sealed batch is sent from memory at once and written to the store only if it
        # is not acknowledged by its ``commit_by`` time (its oldest reading + hold_s), so a link that keeps up
        # costs no disk write at all, and the kill window holds either way.
        self.deliver_first = deliver_first
        self._commit_by = {}  # id(batch) -> monotonic deadline, for batches in memory
        self._in_flight = set()  # keys of memory batches being sent right now
        self._store_ids = {}  # key -> store id, for batches committed while they were being sent from memory
        self._acked_early = set()  # keys acknowledged while their commit was running
        self._flushing = False
        self._loop = None
        self.observers = []  # callables that see every reading and event first (the console's SensorBoard)
        self.downlink = None  # the signed commands' handler (gateway.app.downlink), when [downlink] is on
        self.last_stop = None  # why the previous run ended, for the status (service.py sets it; None: not known)
        self.update_info = None  # versions and the last update's outcome (gateway/app/update_agent.py), or None
        self.last_stop_kind = None
        self.restarts = {}  # stop kind -> runs it ended, kept in the state directory (service.py sets it)
        self.readings_in = collections.Counter()  # source name -> readings and events it emitted
        self.latency = Histogram(LATENCY_BUCKETS)  # cut -> acknowledged, seconds (wall clock)
        self._disk_rate = DailyRate()
        # The journal of the open batch (``gateway.adapters.journal``): what a kill left in it is replayed now.
        self.journal = journal
        self._journal_timer = None
        if journal is not None:
            try:
                self._replay_journal()
            except StoreError as exc:  # a full or read-only disk: run without it, as with ``store.journal = false``
                self.counters["journal_errors"] += 1
                log.error("journal: %s; running without it (batches are cut at batch.hold_s)", exc)
                self.journal = None
                self.pipeline.log = None
                self.pipeline.batcher.journaled = False

    # -- input side (runs on the event loop, must be fast and must not raise for bad data) ---------------------
    def emit(self, item):
        for observe in self.observers:
            observe(item)
        batcher = self.pipeline.batcher
        was_empty = batcher.oldest is None
        batches = self.pipeline.accept(item, self.clock.monotonic())
        if batches:
            self._enqueue(batches)
            return
        if self.journal is not None:
            self._journal_soon()
        if was_empty and batcher.oldest is not None and self._tick_wake is not None:
            self._tick_wake.set()  # a batch began: the ticker sleeps until its linger or hold, not a whole period

    def _refresh_idle(self):
        """Tell the pipeline whether anything is in flight; going idle may cut a batch at once (linger over)."""
        snapshot = self.store.snapshot
        idle = (not self._pending and not self._sending and self.store_ok
                and (snapshot is None or snapshot.depth[0] == 0))
        if idle != self.pipeline.idle:
            self._enqueue(self.pipeline.set_idle(idle, self.clock.monotonic()))
            if self._tick_wake is not None:
                self._tick_wake.set()

    def cut(self):
        """Seal what the batcher holds now (and what the rules hold back)."""
        self._enqueue(self.pipeline.flush(self.clock.monotonic()))

    def _enqueue(self, batches):
        """Sealed batches wait in memory until the commit task writes them; an alarm wakes the uplink. With a
        journal, they (and what entered the batcher before them) are written to it first, before anything can
        send or commit them."""
        if self.journal is not None:
            if batches:
                self._journal_flush()
            else:
                self._journal_soon()
        commit_by = self.pipeline.commit_by
        now = self.clock.monotonic()
        for batch in batches:
            deadline = commit_by.pop(batch.seq, now)
            if self.deliver_first:
                self._commit_by[id(batch)] = deadline
            if len(self._pending) >= self.max_pending:
                self._drop_from_memory()
            self._pending.append(batch)
            if batch.priority:
                self._alarm_waiting = True
                if self._alarm_wake is not None:
                    self._alarm_wake.set()
        if batches and self._commit_wake is not None:
            if self.deliver_first:
                self._uplink_wake.set()  # send it from memory now; the commit waits for its deadline
                if self._tick_wake is not None:
                    self._tick_wake.set()
            self._commit_wake.set()

    # -- the journal of the open batch ------------------------------------------------------------------------------
    def _replay_journal(self):
        """At start: batches the last run sealed go to the store as they are; readings it held open go back into the
        batcher, to be sealed under this boot. Then the journal starts afresh (``gateway.adapters.journal``)."""
        now = self.clock.monotonic()
        recovered = self.journal.recover()
        if recovered.torn:
            self.counters["journal_torn_records"] += recovered.torn
        memory = []
        if recovered.sealed:
            try:
                self.store.put_many(recovered.sealed)
            except StoreError as exc:
                log.error("store: %s; keeping the %d batches of the journal in memory", exc, len(recovered.sealed))
                memory = recovered.sealed
        self.journal.start(now)
        offset = self.pipeline.timebase.offset
        items = [dataclasses.replace(item, t=item.t - offset) for item in recovered.items]
        batches = self.pipeline.restore(items, now)
        self.journal.append([(b, False) for b in memory], offset)
        self.journal.append(self.pipeline.take_log(), offset)
        self.journal.complete()
        if recovered:
            self.counters["journal_replayed_batches"] += len(recovered.sealed)
            self.counters["journal_replayed_items"] += len(recovered.items)
            log.warning("journal: the last run stopped without flushing; replayed %d sealed batches and %d open "
                        "readings from %s", len(recovered.sealed), len(recovered.items), ", ".join(recovered.files))
        self._pending.extend(memory)
        self._enqueue(batches)

    def _journal_soon(self):
        """Move what entered the batcher into the journal's buffer; write it within ``JOURNAL_FLUSH_S``."""
        log_entries = self.pipeline.take_log()
        if log_entries:
            self.journal.append(log_entries, self.pipeline.timebase.offset)
        if self.journal.buffered and self._journal_timer is None:
            if self._loop is None or not self._loop.is_running():
                self._journal_flush()
            else:
                self._journal_timer = self._loop.call_later(JOURNAL_FLUSH_S, self._journal_flush)

    def _journal_flush(self):
        self._journal_timer = None
        log_entries = self.pipeline.take_log()
        if log_entries:
            self.journal.append(log_entries, self.pipeline.timebase.offset)
        try:
            self.journal.flush()
        except StoreError as exc:
            self.counters["journal_errors"] += 1
            if self.last_error != str(exc):
                log.error("journal: %s; open readings are not kill-safe until it is writable", exc)
            self.last_error = str(exc)

    def _journal_rotate(self):
        """A fresh journal file with what still matters: batches only in memory, and the open batch."""
        self._journal_flush()
        batcher = self.pipeline.batcher
        try:
            self.journal.rotate(list(self._pending), batcher.readings + batcher.events,
                                self.pipeline.timebase.offset, self.clock.monotonic())
        except StoreError as exc:
            self.counters["journal_errors"] += 1
            self.last_error = str(exc)
            log.error("journal: %s", exc)

    def _drop_from_memory(self):
        # A batch being committed right now is on its way to disk: dropping (and counting) it would be a lie.
        movable = [b for b in self._pending if id(b) not in self._committing]
        victim = next((b for b in movable if not b.priority), None) or (movable[0] if movable else None)
        if victim is None:
            return  # all in flight: memory holds at most max_pending + 1 until the commit returns
        self._pending.remove(victim)
        self._commit_by.pop(id(victim), None)
        self.counters["memory_dropped_batches"] += 1
        self.counters["memory_dropped_readings"] += victim.readings

    def _health_values(self):
        """The counters the health records report: the store's (its last published snapshot: no lock taken on the
        loop), the agent's, and each source's errors and restarts."""
        snapshot = self.store.snapshot
        values = dict(snapshot.counters) if snapshot is not None else {}
        for key in AGENT_HEALTH:
            values[key] = self.counters[key]
        for src in self.sources:
            for key, n in src.counters.items():
                if key.startswith("error.") or key in SOURCE_HEALTH:
                    values["%s.%s" % (src.name, key)] = n
        now = self.clock.monotonic()
        values["version"] = __version__
        values["clock_synced"] = int(bool(self.pipeline.timebase.synced))
        values["uptime_s"] = int(now - self.started)
        if snapshot is not None:  # the backlog waiting on disk (the fleet page's "queue backlog")
            values["queue_batches"], values["queue_readings"] = snapshot.depth[0], snapshot.depth[1]
        written = procstats.write_bytes()
        if written is not None:
            values["disk_written_bytes"] = written
            per_day = self._disk_rate.add(now, written)
            if per_day is not None:
                values["disk_written_bytes_per_day"] = per_day
        for kind, n in self.restarts.items():
            values["restarts." + kind] = n
        if self.actions is not None:
            values.update(self.actions.health_values())
        return values

    def _emitter(self, source):
        """``emit`` for one source: counts what it emits (``readings_in``, the metrics) and passes it on."""
        counts, name, emit = self.readings_in, source.name, self.emit

        def emit_from(item):
            counts[name] += 1
            emit(item)
        return emit_from

    # -- live settings (the console calls these from its worker thread) ----------------------------------------
    def configure(self, **settings):
        """Change ``LIVE`` settings on the agent's loop, and wait until they apply (from any thread)."""
        unknown = set(settings) - set(LIVE)
        if unknown:
            raise ValueError("not a live setting: %s" % ", ".join(sorted(unknown)))
        self.call_on_loop(self._configure, settings)

    def _configure(self, settings):
        batcher = self.pipeline.batcher
        batcher.max_age = settings.get("max_age_s", batcher.max_age)
        batcher.max_readings = settings.get("max_readings", batcher.max_readings)
        batcher.linger = settings.get("linger_s", batcher.linger)
        batcher.hold = settings.get("hold_s", batcher.hold)
        self.backoff.low = settings.get("backoff_min_s", self.backoff.low)
        self.backoff.high = settings.get("backoff_max_s", self.backoff.high)

    def replace_uplink(self, uplink):
        """Send through ``uplink`` from the next batch on (on the loop); returns the one it replaces, which the
        caller closes (``close_uplink``). The backoff restarts, and a backoff under way ends now: the new uplink
        is tried at once (an uplink change checked by the downlink, ``gateway.app.uplink_check``)."""
        old, self.uplink = self.uplink, uplink
        self.backoff.reset()
        if self._alarm_wake is not None:
            self._uplink_replaced = True
            self._alarm_wake.set()
            self._uplink_wake.set()
        log.info("uplink: now %s (was %s)", uplink.describe(), old.describe())
        return old

    async def close_uplink(self, uplink):
        """Close a replaced uplink on the uplink thread, after the send it may still be in."""
        await asyncio.get_running_loop().run_in_executor(self._uplink_thread, uplink.close)

    def call_on_loop(self, fn, *args, timeout=10.0):
        """Run ``fn(*args)`` on the agent's event loop and return its result. Called from another thread it is
        scheduled with ``call_soon_threadsafe`` and waited for; on the loop, or before the agent runs, it runs now."""
        loop = self._loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if loop is None or loop.is_closed() or not loop.is_running() or here is loop:
            return fn(*args)
        done = concurrent.futures.Future()

        def call():
            try:
                done.set_result(fn(*args))
            except Exception as exc:  # handed to the caller's thread, raised there
                done.set_exception(exc)
        loop.call_soon_threadsafe(call)
        return done.result(timeout)

    # -- the ticker ------------------------------------------------------------------------------------------
    async def _tick_loop(self, period=0.2):
        """Every ``period`` seconds of the agent's clock (a fake clock in tests and scenarios drives it): the
        pipeline's tick, and the quarantine's retries when due."""
        next_retry = self.clock.monotonic() + self.retry_every
        while True:
            self._tick_wake.clear()
            now = self.clock.monotonic()
            deadlines = [d for d in (self.pipeline.deadline(), self._next_commit()) if d is not None]
            await self._tick_sleep(max(0.0, min([period] + [d - now for d in deadlines])))
            now = self.clock.monotonic()
            commit = self._next_commit()
            if commit is not None and commit <= now:
                self._commit_wake.set()
            if now >= next_retry and self.store_ok:
                next_retry = now + self.retry_every
                await self._retry_quarantined()
            self._enqueue(self.pipeline.tick(now))
            if self.journal is not None and self.journal.rotate_due(now):
                self._journal_rotate()
            if self.store.sync_interval and self.store.sync_due(self.store.clock.monotonic()):
                await self._sync()

    async def _tick_sleep(self, seconds):
        """Sleep on the injected clock, or less if ``_tick_wake`` is set (a batch began, the link went idle)."""
        await sleep_or_wake(self.clock, seconds, self._tick_wake)

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def run(self, stop, drain_timeout=0.0):
        """Run until ``stop`` (an asyncio.Event) is set; then flush, commit, optionally drain, and return."""
        self._loop = asyncio.get_running_loop()
        self._commit_wake = asyncio.Event()
        self._uplink_wake = asyncio.Event()
        self._alarm_wake = asyncio.Event()
        self._tick_wake = asyncio.Event()
        if self._pending:
            self._commit_wake.set()  # batches sealed before the loop started must not wait for the next one
        log.info("agent %s starting: boot epoch %d, kid %s, uplink %s", self.gw, self.boot, self.kid,
                 self.uplink.describe())
        source_tasks = [asyncio.create_task(s.run(self._emitter(s)), name="source:" + s.name)
                        for s in self.sources]
        core = [asyncio.create_task(self._commit_loop(), name="commit"),
                asyncio.create_task(self._uplink_loop(), name="uplink"),
                asyncio.create_task(self._tick_loop(), name="tick")]
        if self.actions is not None:
            core.append(asyncio.create_task(self.actions.run(), name="actions"))
        try:
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([waiter] + core + source_tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter and task.exception() is not None:
                    raise task.exception()
        finally:
            await _cancel(source_tasks)
            self._flushing = True
            self.cut()
            self._commit_wake.set()
            await self._wait(lambda: not self._pending, 10.0)
            if self.journal is not None:
                if self._journal_timer is not None:
                    self._journal_timer.cancel()
                self._journal_flush()
                self.journal.close(remove=not self._pending)  # all committed: nothing in it is needed any more
            if drain_timeout:
                await self._wait(lambda: self.depth()[0] == 0, drain_timeout)
            await _cancel(core)
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
        """``(batches, readings, bytes, alarm_batches)`` in the store, as it published them after its last change."""
        return self.store.snapshot.depth

    def status(self):
        """A snapshot for the console, ``doctor`` and the demo summary."""
        n, readings, size, alarms = self.depth()
        return {"gateway": self.gw, "boot": self.boot, "kid": self.kid,
                "uptime_s": round(self.clock.monotonic() - self.started, 1), "clock_synced": self.pipeline.timebase.synced,
                "uplink": self.uplink.describe(), "uplink_state": self.uplink_state, "last_ack": self.last_ack,
                "last_error": self.last_error, "store_ok": self.store_ok, "queue_batches": n,
                "queue_readings": readings, "queue_bytes": size, "queue_alarms": alarms,
                "memory_batches": len(self._pending), "counters": dict(self.counters),
                "store_counters": dict(self.store.snapshot.counters),
                "sources": [s.status() for s in self.sources], "last_stop": self.last_stop, "version": __version__,
                "restarts": dict(self.restarts), "readings_in": dict(self.readings_in),
                "actions": self.actions.status() if self.actions is not None else None,
                "update": self.update_info}
