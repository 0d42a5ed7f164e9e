"""Cutting readings into batches, and placing their times on the wire's time scale. Pure.

The batcher holds readings until the batch is full (``max_readings``) or its oldest reading is ``max_age``
seconds old, then hands them out as one batch. Two shorter bounds cut earlier (issue 21):

* ``linger`` (Nagle's rule, Kafka's ``linger.ms``): when nothing is in flight downstream (``idle``: no batch waits
  for the disk, the store queue is empty, nothing is being sent), the batch is cut once its oldest reading is
  ``linger`` seconds old (0: at once). While something is in flight the batch keeps growing, so batches stay
  large exactly when the link is busy or the rate is high.
* ``hold``: whatever the link does, a reading waits at most ``hold`` seconds in RAM before its batch is cut and
  committed, which bounds what a ``kill -9`` can lose (the kill window). Alarm events never wait: the agent cuts
  them into a batch of their own at once (``cut_alarm``).

The **byte budget** (``target`` bytes per reading on the wire, ``stretch`` seconds) lets a batch grow past
``linger`` and ``hold`` while that is what brings its bytes per reading under ``target``. Every batch costs a
fixed part (``fixed``: the signed envelope and the transport's frame, which deflate cannot shrink) plus about
``per_reading`` bytes per reading (both learned from the batches sealed so far, ``learn``), so ``n`` readings cost
``per_reading + fixed / n`` bytes each; the target needs ``wanted = fixed / (AIM * target - per_reading)``
readings (aiming 10 % under it: the model is an estimate).
When, at the arrival rate seen so far, the batch reaches ``wanted`` within ``stretch``, it grows until it has
them (then it is cut at once) or ``stretch`` is over; otherwise (a low rate, or a target no batch size reaches)
the rules above apply unchanged: growing would cost latency and buy nothing. Growing past ``hold`` is only kill-safe
when the open batch is journaled (``journaled``: the agent writes each reading to an unsynced journal as it
arrives, ``gateway.adapters.journal``); without a journal the growth stops at ``hold``.

``TimeBase`` converts the agent's monotonic stamps to wire times. While the wall clock is not synchronised, wire
times are the monotonic stamp plus the offset the wall clock had at start (a guess), the batch says
``clock: false`` and carries ``anchor = [mono, wire time]`` at the cut. Once synchronised, the offset is re-read at
every cut, and batches of a boot that began unsynchronised carry the anchor too, so the backend (or
``gateway.core.wire.correct_times``) can move earlier times onto the true clock. Monotonic stamps mean that a clock
step never reorders readings inside the agent.
"""

from gateway.core.model import Event, Reading


class TimeBase:
    def __init__(self, clock):
        self.clock = clock
        self.offset = clock.wall() - clock.monotonic()
        self.synced = clock.synced()
        self.started_unsynced = not self.synced

    def refresh(self):
        """Called at every cut: re-read sync state and, when synchronised, the offset."""
        synced = self.clock.synced()
        if synced:
            self.offset = self.clock.wall() - self.clock.monotonic()
        self.synced = synced
        if not synced:
            self.started_unsynced = True
        return synced

    def to_wire(self, mono):
        return mono + self.offset

    def anchor(self, quantum=1.0):
        """``[mono, wall]`` at this moment, or None when the backend does not need it."""
        if self.synced and not self.started_unsynced:
            return None
        mono = self.clock.monotonic()
        return [round(mono, 3), round(self.to_wire(mono), 3)]


#: how fast the learned cost per reading and the arrival rate follow a change (weight of the newest batch)
LEARN = 0.3
#: batches between two probes (a batch grown to ``growth_limit`` to learn what a large batch costs), doubling up to
#: ``PROBE_MAX`` while probes find the target out of reach; a probe needs at least ``PROBE_MIN`` readings
PROBE_EVERY, PROBE_MAX, PROBE_MIN = 16, 1024, 16
#: the budget aims this far under the target: the model is an estimate, and batches vary around it
AIM = 0.9


class Batcher:
    def __init__(self, max_readings=1000, max_age=10.0, linger=None, hold=None, target=0.0, stretch=0.0,
                 journaled=False):
        if max_readings < 1:
            raise ValueError("max_readings must be at least 1")
        self.max_readings = max_readings
        self.max_age = max_age
        self.linger = max_age if linger is None else linger  # None: the old rule (cut at max_age only)
        self.hold = max_age if hold is None else hold
        self.target = target or 0.0  # bytes per reading on the wire the budget aims for (0: no byte budget)
        self.stretch = stretch or 0.0  # how long the budget may keep a batch open
        self.journaled = journaled  # open readings survive a kill (the journal): growth may go past ``hold``
        self.fixed = None  # bytes per batch besides its readings (set by the pipeline)
        self.per_reading = None  # learned bytes per reading beyond the fixed part
        self.model_n = 1  # the size of the batches the model was last learned from
        self.rate = None  # learned readings per second
        self.last_cut = None
        self.wanted = 0  # readings this batch grows to for the byte budget (0: it does not grow for bytes)
        self.probing = False  # this batch grows to learn what a large batch costs (``probe``)
        self.probed = False  # the batch cut last was a probe: the pipeline measures it
        self.probe_every = PROBE_EVERY
        self.until_probe = 0
        self.readings = []
        self.events = []
        self.oldest = None

    def __len__(self):
        return len(self.readings) + len(self.events)

    def add(self, item, now):
        """Add a reading or a non-alarm event. Returns True when the batch is full and should be cut now."""
        if self.oldest is None:
            self.oldest = now
            self.wanted = self.budget() or self.probe()
        if item.__class__ is Reading:
            self.readings.append(item)
        elif isinstance(item, Event):
            self.events.append(item)
        else:
            raise TypeError("batcher takes Reading or Event, not %s" % type(item).__name__)
        n = len(self.readings) + len(self.events)
        return n >= self.max_readings or (self.wanted and n >= self.wanted)

    def growth_limit(self):
        """How long the byte budget may keep a batch open: ``stretch``, capped by ``hold`` without a journal."""
        return self.stretch if self.journaled else min(self.stretch, self.hold)

    def budget(self):
        """Readings a new batch should grow to for the byte budget, or 0 when growing does not pay: no budget, not
        learned yet, a target no size reaches (``per_reading`` alone is over it, or more than ``max_readings``
        are needed), or a rate too low to gather them within ``growth_limit``."""
        need = self._need()
        if not need or need > self.max_readings or need > self.rate * self.growth_limit():
            return 0  # out of reach within the latency it may cost
        if need <= self.rate * min(self.linger, self.hold):
            return 0  # the ordinary cut already gathers that many: growing would not pay, cutting early would cost
        return need

    def _need(self):
        """Readings a batch needs to meet the target by the learned model (0: not known, or never)."""
        if not self.target or self.per_reading is None or self.fixed is None or not self.rate:
            return 0
        margin = AIM * self.target - self.per_reading
        return int(self.fixed / margin) + 1 if margin > 0 else 0

    def probe(self):
        """Size of a probe batch, or 0. Small batches deflate worse than large ones, so a cost model learned only
        from small batches would find the target out of reach for good: now and then a batch grows to what the
        rate gathers within ``growth_limit``, and its measurement (``learn``) tells whether to keep growing."""
        if not self.target or not self.rate:
            return 0
        need = self._need()
        if need and need <= self.rate * min(self.linger, self.hold):
            return 0  # the ordinary cut meets the target already
        self.until_probe -= 1
        if self.until_probe > 0:
            return 0
        size = min(self.max_readings, int(self.rate * self.growth_limit()))
        if size < PROBE_MIN:
            return 0  # too slow to tell anything: try again at the next batch
        self.probing = True
        return size

    def _probe_later(self):
        self.until_probe = self.probe_every
        self.probe_every = min(PROBE_MAX, 2 * self.probe_every)

    def learn(self, n, size, half, half_size):
        """A sealed batch of ``n`` readings and events cost about ``size`` bytes on the wire, and its first ``half``
        of them alone ``half_size``: the two points give the cost per reading and the fixed part (averaged over
        the batches measured)."""
        if n <= half or half < 1:
            return
        per_reading = max(0.0, (size - half_size) / (n - half))
        fixed = max(0.0, size - per_reading * n)
        # Deflate does better on larger batches: a sample from a batch much smaller than those the model was
        # learned from says little about them, so it counts in proportion (a probe replaces the model).
        weight = 1.0 if self.per_reading is None or self.probed else LEARN * min(1.0, n / self.model_n)
        if self.per_reading is None or self.fixed is None:
            self.per_reading, self.fixed = per_reading, fixed
        else:
            self.per_reading = weight * per_reading + (1 - weight) * self.per_reading
            self.fixed = weight * fixed + (1 - weight) * self.fixed
        self.model_n = n if weight >= LEARN else self.model_n
        if self.probed:
            self.probed = False
            if self.budget():
                self.probe_every = PROBE_EVERY  # in reach: the budget grows the batches from now on
            else:
                self._probe_later()

    def due(self, now, idle=False):
        """True when the batch should be cut at ``now``: its oldest reading has waited ``linger`` with nothing in
        flight (``idle``), or ``hold``, or ``max_age``."""
        deadline = self.deadline(idle)
        return deadline is not None and now >= deadline

    def deadline(self, idle=False):
        """The monotonic time at which ``due`` becomes true if nothing changes, or None for an empty batch."""
        if self.oldest is None:
            return None
        if self.wanted:  # growing for the byte budget: the add that completes it cuts it
            return self.oldest + min(self.max_age, self.growth_limit())
        wait = min(self.max_age, self.hold, self.linger) if idle else min(self.max_age, self.hold)
        return self.oldest + wait

    def cut(self, now=None):
        """Return ``(readings, events)`` and start a new batch; ``now`` (the cut's time) feeds the arrival rate."""
        out = (self.readings, self.events)
        if now is not None:
            n = len(self.readings) + len(self.events)
            if self.last_cut is not None and now > self.last_cut and n:
                sample = n / (now - self.last_cut)  # what arrived since the last cut, per second
                self.rate = sample if self.rate is None else LEARN * sample + (1 - LEARN) * self.rate
            self.last_cut = now
        self.readings, self.events, self.oldest, self.wanted = [], [], None, 0
        self.probed, self.probing = self.probing, False
        return out
