"""The synchronous pipeline: items and the time in, sealed batches out. Pure (no asyncio, no threads, no IO).

``Pipeline`` holds the stages between a source and the store, in the order a reading meets them:

1. the bad-value check (a non-finite float, an int outside int64, a type SenML cannot carry: dropped, counted);
2. the rules (``gateway.core.rules``: thresholds, deadband, heartbeats, stale sensors), when there are any;
3. the batcher (``gateway.core.batcher``), which cuts at ``max_readings`` or ``max_age_s``, after ``linger_s``
   when nothing is in flight downstream (the shell says so with ``set_idle``), and after ``hold_s`` in any case
   (the kill window); an alarm event is sealed into a batch of its own at once (the priority lane), and the first
   reading after start is cut at once;
4. health records (``health/<counter>``) whenever a counter changed, at most every ``health_interval`` seconds;
   they join a cut, and when no reading is waiting and a counter changed (``HEALTH_RIDE_ALONG`` aside, which move
   all the time) ``tick`` cuts a batch of health records alone, so trouble is reported while every sensor is
   silent (checked at most once a second);
5. sealing: SenML records, the payload ``{v, gw, boot, seq, clock, senml}``, signed by the injected ``signer``.

Every event (the rules' and the sources') is also handed to the injected ``on_event(event, now)`` once it is in the
batcher or sealed (the local actions, ``gateway/app/actions.py``): the signed uplink never waits for an action.

``accept(item, now)``, ``tick(now)``, ``set_idle(idle, now)`` and ``flush(now)`` return the list of ``EncodedBatch`` they sealed, in order.
``now`` is the monotonic time; the injected clock is read only through ``TimeBase`` (sync state and wall offset
at a cut) and for the batch's ``created`` stamp. The health values come from an injected callable, so the
pipeline never asks the store or the sources itself.
"""

import collections
import zlib

from gateway.core import senml, wire
from gateway.core.batcher import Batcher, TimeBase
from gateway.core.model import EncodedBatch, Event, Reading

HEALTH_SENSOR = "health"
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
#: the health values that travel upstream (besides any name with error/dropped/... in it, see ``_reported``)
HEALTH_KEEP = ("dropped_batches", "dropped_readings", "dropped_alarm_batches", "expired_batches", "quarantined",
               "conflict_batches", "poison_batches", "salvaged_batches", "lost_batches", "version", "clock_synced",
               "uptime_s", "disk_written_bytes", "disk_written_bytes_per_day", "queue_batches", "queue_readings")
#: health values that change all the time: they travel with the others but never cut a batch on their own
HEALTH_RIDE_ALONG = ("uptime_s", "disk_written_bytes", "disk_written_bytes_per_day", "queue_batches",
                     "queue_readings")
HEALTH_MARKS = ("error", "dropped", "reopen", "restarts", "silent", "open_failed", "bad_value", "power_cycle",
                "needs_reset")
_NONE = ()
#: the uplinks' deflate level (``gateway.adapters.uplink.base.DEFLATE_LEVEL``): the byte budget's estimate of a
#: batch's size on the wire deflates it the same way
WIRE_DEFLATE_LEVEL = 6
#: the byte budget measures its cost model on one batch in this many (and on every batch until it has one)
LEARN_EVERY = 8


def bad_value(value, unit):
    """True for a value no batch may carry: a non-finite float, an int outside int64, a non-number where a unit
    says a number is expected, or a type SenML has no value field for. The slow path of ``Pipeline.accept``."""
    if isinstance(value, bool) or value.__class__ in (str, bytes):
        return unit is not None  # vb / vs / vd: only for a dimensionless reading
    if isinstance(value, float):
        return value - value != 0.0  # inf - inf and nan - nan are nan
    if isinstance(value, int):
        return not INT64_MIN <= value <= INT64_MAX
    return True


def _reported(key):
    return key in HEALTH_KEEP or any(mark in key for mark in HEALTH_MARKS)


class Pipeline:
    def __init__(self, *, gw, boot, signer, clock, batch=None, rules=None, health_interval=60.0,
                 health_values=None, counters=None, on_event=None, journaled=False, frame_bytes=0):
        self.gw = gw
        self.prefix = gw + "/"
        self.boot = boot
        self.seq = 0
        self.signer = signer
        self.clock = clock
        self.rules = rules
        self.batcher = Batcher(getattr(batch, "max_readings", 1000), getattr(batch, "max_age_s", 10.0),
                               getattr(batch, "linger_s", None), getattr(batch, "hold_s", None),
                               getattr(batch, "target_bytes_per_reading", 0.0), getattr(batch, "budget_linger_s", 0.0),
                               journaled)
        self.frame_bytes = frame_bytes  # the transport's bytes per batch besides the body (the byte budget)
        self._learn_count = 0
        #: with a journal: what entered the batcher (readings and events) and what was sealed, in order
        #: (``take_log``); the shell writes it to the journal before the sealed batches leave memory
        self.log = [] if journaled else None
        self.idle = False  # nothing in flight downstream (no batch waiting for the disk or the upstream)
        #: seq -> the monotonic time by which that batch must be on disk unless delivered: its oldest reading's
        #: arrival + ``hold_s`` (the kill window). The shell pops it when it takes the batch.
        self.commit_by = {}
        self.time_quantum = getattr(batch, "time_quantum_s", 1.0)
        self.timebase = TimeBase(clock)
        self.health_interval = health_interval
        self.health_values = health_values  # () -> {name: int}: store, shell and source counters
        self.counters = collections.Counter() if counters is None else counters
        self.on_event = on_event
        self.first_cut = False
        self.last_health = None
        self._health_sent = {}
        self._health_checked = None  # when tick last looked for health news with nothing else to send
        self._out = []

    # -- the three entry points ------------------------------------------------------------------------------
    def accept(self, item, now):
        """One reading or event from a source. Never raises for bad data: it is dropped and counted."""
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
                    return _NONE
            elif vcls is int:
                if not INT64_MIN <= value <= INT64_MAX:
                    self.counters["readings_bad_value"] += 1
                    return _NONE
            elif bad_value(value, item.unit):
                self.counters["readings_bad_value"] += 1
                return _NONE
            if self.rules is None:
                self._add(item, now)
            else:
                result = self.rules.process(item)
                for r in result.send:
                    self._add(r, now)
                for e in result.events:
                    self._event(e, now)
        elif isinstance(item, Event):
            self._event(item, now)
        else:
            self.counters["emit_bad_type"] += 1
        return self._take()

    def tick(self, now):
        """The periodic step: the rules' tick (stale sensors, heartbeats) and the batcher's ``max_age``."""
        if self.rules is not None:
            result = self.rules.tick(now)
            for r in result.send:
                self._add(r, now)
            for r in getattr(result, "heartbeat", ()):  # forwarded by the heartbeat: the engine counts them sent
                self._add(r, now)
            for e in result.events:
                self._event(e, now)
        if self.batcher.due(now, self.idle):
            self._cut(now)
        elif self.batcher.oldest is None and self._health_news(now):
            self._cut(now)
        return self._take()

    def _health_news(self, now):
        """True when health records are due and a counter (not a ride-along) changed since it was last sent."""
        if self.health_values is None or (self.last_health is not None
                                          and now - self.last_health < self.health_interval):
            return False
        if self._health_checked is not None and now - self._health_checked < 1.0:
            return False
        self._health_checked = now
        sent = self._health_sent
        return any(_reported(k) and k not in HEALTH_RIDE_ALONG and sent.get(k) != v
                   for k, v in self.health_values().items())

    def set_idle(self, idle, now):
        """The shell says whether anything is in flight downstream. Going idle cuts a batch whose ``linger`` is
        over: the next batch goes out as soon as the link is free, the rest of the time it grows."""
        self.idle = idle
        if idle and self.batcher.due(now, True):
            self._cut(now)
        return self._take()

    def deadline(self):
        """When ``tick`` next has a batch to cut if nothing else happens (monotonic), or None: the shell's ticker
        sleeps until then, so a linger or hold cut is not late by a tick period."""
        return self.batcher.deadline(self.idle)

    def restore(self, items, now):
        """Readings and events a journal held open when the last run died, back into the batcher (no rules: they
        passed them already). They are cut and sealed under this boot like any other."""
        for item in items:
            self._add(item, now)
        return self._take()

    def take_log(self):
        """The journal entries since the last call: ``Reading``/``Event`` items that entered the batcher, and
        ``(batch, consumed)`` for each sealed batch (``consumed``: it holds every item logged before it that no
        earlier consuming batch holds; alarm batches hold none of them)."""
        out, self.log = self.log, []
        return out

    def flush(self, now):
        """At shutdown: what the rules still hold, then whatever the batcher holds (with health records)."""
        if self.rules is not None and hasattr(self.rules, "flush"):
            result = self.rules.flush()
            for r in getattr(result, "send", result):
                self._add(r, now)
        self._cut(now)
        return self._take()

    # -- the stages ------------------------------------------------------------------------------------------
    def _take(self):
        if not self._out:
            return _NONE
        out, self._out = self._out, []
        return out

    def _add(self, item, now):
        if self.log is not None:
            self.log.append(item)
        if self.batcher.add(item, now) or not self.first_cut or (self.idle and self.batcher.due(now, True)):
            # The first reading after start is committed at once: an installer sees data arrive within a second
            # of boot, and a crash loop still gets each boot's first reading out.
            self.first_cut = True
            self._cut(now)

    def _event(self, event, now):
        self.counters["events"] += 1
        if event.alarm:
            self.counters["alarms"] += 1
            self._seal([], [event], priority=1, commit_by=now, consumed=False)
        else:
            self._add(event, now)
        if self.on_event is not None:
            self.on_event(event, now)

    def _cut(self, now):
        oldest = self.batcher.oldest
        readings, events = self.batcher.cut(now)
        if self.last_health is None or now - self.last_health >= self.health_interval:
            readings = readings + self.health_readings(now)
        if readings or events:
            # Deliver first: the time the upstream has to acknowledge the batch before it is written. A journaled
            # batch is kill-safe in the journal already, so it gets ``hold`` from its cut; otherwise ``hold`` runs
            # from its oldest reading (the kill window).
            commit_by = now if oldest is None else oldest + self.batcher.hold
            if self.log is not None:
                commit_by = max(commit_by, now + self.batcher.hold)
            self._seal(readings, events, priority=0, commit_by=commit_by)

    def health_readings(self, now):
        """``health/<counter>`` readings for every reported counter whose value changed since it was last sent."""
        self.last_health = now
        values = dict(self.health_values()) if self.health_values is not None else {}
        values.setdefault("readings_bad_value", self.counters["readings_bad_value"])
        out = []
        for key, value in values.items():
            if _reported(key) and self._health_sent.get(key) != value:
                self._health_sent[key] = value
                out.append(Reading(HEALTH_SENSOR, key, value, None, now))
        return out

    def _seal(self, readings, events, priority, commit_by, consumed=True):
        """Encode and sign one batch; from here on its bytes never change."""
        synced = self.timebase.refresh()
        records = senml.encode_records(readings, events, self.prefix, time_quantum=self.time_quantum,
                                       time_offset=self.timebase.offset)
        payload = wire.encode_payload(self.gw, self.boot, self.seq, synced, records, self.timebase.anchor())
        batch = EncodedBatch(self.boot, self.seq, self.signer(payload), priority, len(readings), len(events),
                             self.clock.wall())
        self._out.append(batch)
        if self.log is not None:
            self.log.append((batch, consumed))
        if self.batcher.target and not priority:
            self._learn(readings, events, batch)
        self.commit_by[self.seq] = commit_by
        if len(self.commit_by) > 4096:  # a caller that never pops (a bench): keep it bounded
            del self.commit_by[next(iter(self.commit_by))]
        self.seq += 1
        self.counters["batches_cut"] += 1
        self.idle = False  # this batch is in flight now, until the shell says otherwise

    def _learn(self, readings, events, batch):
        """The byte budget's cost model (``Batcher.learn``): a batch of ``n`` records costs ``fixed + n * per_reading``
        bytes on the wire (its signed bytes deflated as the uplinks do, plus the transport's frame). Deflate does
        better on larger batches, so neither part is known in advance: now and then (``LEARN_EVERY`` batches) the
        first half of a batch is encoded and deflated as well, and the two sizes give both parts."""
        n = len(readings) + len(events)
        self._learn_count += 1
        if n < 8 or (self.batcher.per_reading is not None and self._learn_count % LEARN_EVERY
                     and not self.batcher.probed):
            return
        half = n // 2
        part = wire.encode_payload(self.gw, self.boot, batch.seq, self.timebase.synced,
                                   senml.encode_records(readings[:half], events[:max(0, half - len(readings))],
                                                        self.prefix, time_quantum=self.time_quantum,
                                                        time_offset=self.timebase.offset), self.timebase.anchor())
        size = len(zlib.compress(batch.data, WIRE_DEFLATE_LEVEL)) + self.frame_bytes
        half_size = len(zlib.compress(self.signer(part), WIRE_DEFLATE_LEVEL)) + self.frame_bytes
        self.batcher.learn(n, size, half, half_size)
