"""Immutable value types that cross stage boundaries (house style, habit 5).

Times inside the agent are seconds on the agent's monotonic scale for the current boot epoch. They become wall
(Unix) times only when a batch is cut with a synchronised clock; see ``docs/wire-format.md`` ("Time").
"""

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Measurement:
    """What a pure decoder returns: one quantity, SenML-named and SenML-united, with no sensor and no time.

    ``name`` is a short quantity name (``temp``, ``hum``, ``pres``, ``batt``, ``lat`` ...). ``unit`` is a SenML
    unit symbol (RFC 8428 section 12.1, e.g. ``Cel``, ``%RH``, ``Pa``, ``V``, ``%EL``, ``dBm``) or None for a
    dimensionless count. ``resolution`` is the format's published step (0.01 for a BTHome temperature); the wire
    encoder keeps every value exact to that step and uses it to pick the shortest float.
    """

    name: str
    value: object
    unit: str = None
    resolution: float = None


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement of one sensor at one time (seconds, agent monotonic scale)."""

    sensor: str
    name: str
    value: object
    unit: str = None
    t: float = 0.0
    resolution: float = None


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened: an alarm raised or cleared, a sensor gone silent, a battery low.

    ``name`` is the event's name (``alarm.high``, ``silent``, ``battery_low``); ``state`` is ``raised`` or
    ``cleared`` (or ``info`` for one-off events); ``reason`` is a human sentence. ``alarm`` puts it in the priority
    lane.
    """

    sensor: str
    name: str
    state: str
    reason: str
    t: float = 0.0
    value: object = None
    level: str = None
    alarm: bool = False


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """A signed batch exactly as it goes on the wire, plus the bookkeeping the store needs."""

    boot: int
    seq: int
    data: bytes
    priority: int = 0
    readings: int = 0
    events: int = 0
    created: float = 0.0
    store_id: int = field(default=None, compare=False)

    @property
    def key(self):
        return (self.boot, self.seq)


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """What the store published after its last change: ``depth`` is ``(batches, readings, bytes, alarm_batches)``
    waiting for delivery, ``counters`` its drop/quarantine and session counters (``Store.counters``), ``oldest``
    the ``created`` wall time of the oldest batch waiting (None: none)."""
    depth: tuple
    counters: dict
    oldest: float = None
