"""Cutting readings into batches, and placing their times on the wire's time scale. Pure.

The batcher holds readings until the batch is full (``max_readings``) or its oldest reading is ``max_age``
seconds old, then hands them out as one batch. Two shorter bounds cut earlier (issue 21):

* ``linger`` (Nagle's rule, Kafka's ``linger.ms``): when nothing is in flight downstream (``idle``: no batch waits
  for the disk, the store queue is empty, nothing is being sent), the batch is cut once its oldest reading is
  ``linger`` seconds old (0: at once). While something is in flight the batch keeps growing, so batches stay
  large exactly when the link is busy or the rate is high.
* ``hold``: whatever the link does, a reading waits at most ``hold`` seconds in RAM before its batch is cut and
  committed, which bounds what a ``kill -9`` can lose (the kill window). Alarm events never wait: the agent cuts them into a batch of their
own at once (``cut_alarm``).

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


class Batcher:
    def __init__(self, max_readings=1000, max_age=10.0, linger=None, hold=None):
        if max_readings < 1:
            raise ValueError("max_readings must be at least 1")
        self.max_readings = max_readings
        self.max_age = max_age
        self.linger = max_age if linger is None else linger  # None: the old rule (cut at max_age only)
        self.hold = max_age if hold is None else hold
        self.readings = []
        self.events = []
        self.oldest = None

    def __len__(self):
        return len(self.readings) + len(self.events)

    def add(self, item, now):
        """Add a reading or a non-alarm event. Returns True when the batch is full and should be cut now."""
        if self.oldest is None:
            self.oldest = now
        if item.__class__ is Reading:
            self.readings.append(item)
        elif isinstance(item, Event):
            self.events.append(item)
        else:
            raise TypeError("batcher takes Reading or Event, not %s" % type(item).__name__)
        return len(self.readings) + len(self.events) >= self.max_readings

    def due(self, now, idle=False):
        """True when the batch should be cut at ``now``: its oldest reading has waited ``linger`` with nothing in
        flight (``idle``), or ``hold``, or ``max_age``."""
        deadline = self.deadline(idle)
        return deadline is not None and now >= deadline

    def deadline(self, idle=False):
        """The monotonic time at which ``due`` becomes true if nothing changes, or None for an empty batch."""
        if self.oldest is None:
            return None
        wait = min(self.max_age, self.hold, self.linger) if idle else min(self.max_age, self.hold)
        return self.oldest + wait

    def cut(self):
        """Return ``(readings, events)`` and start a new batch."""
        out = (self.readings, self.events)
        self.readings, self.events, self.oldest = [], [], None
        return out
