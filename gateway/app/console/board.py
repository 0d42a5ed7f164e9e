"""The console's "last readings" board: what each sensor said last, and how long ago. Pure, bounded.

Fed with every ``Reading`` the sources emit (before the rules filter them: the technician sees what the gateway
sees). Holds at most ``max_sensors`` sensors (new ones beyond that are counted, not kept) and the last ``history``
readings per sensor. ``observe`` never raises: it sits on the agent's hot path.
"""

import collections
from dataclasses import dataclass

from gateway.core.model import Reading

RSSI_NAMES = ("rssi",)
BATTERY_NAMES = ("batt", "battery")
NOT_PRIMARY = RSSI_NAMES + BATTERY_NAMES + ("n", "seq", "counter", "tx_power", "packet_id")


@dataclass(frozen=True, slots=True)
class SensorRow:
    sensor: str
    primary: Reading  # the first non-housekeeping quantity seen, or None
    last_t: float
    rssi: Reading
    battery: Reading
    count: int


class _Entry:
    __slots__ = ("latest", "history", "last_t", "count", "primary")

    def __init__(self, history):
        self.latest = {}
        self.history = collections.deque(maxlen=history)
        self.last_t = None
        self.count = 0
        self.primary = None


class SensorBoard:
    def __init__(self, max_sensors=256, history=20, max_names=32):
        self.max_sensors = max_sensors
        self.history = history
        self.max_names = max_names
        self.ignored = 0
        self._sensors = {}

    def observe(self, item):
        if item.__class__ is not Reading or not isinstance(item.sensor, str) or not isinstance(item.name, str):
            return
        entry = self._sensors.get(item.sensor)
        if entry is None:
            if len(self._sensors) >= self.max_sensors:
                self.ignored += 1
                return
            entry = self._sensors[item.sensor] = _Entry(self.history)
        if item.name in entry.latest or len(entry.latest) < self.max_names:
            entry.latest[item.name] = item
        if entry.primary is None and item.name not in NOT_PRIMARY:
            entry.primary = item.name
        entry.history.append(item)
        entry.last_t = item.t if entry.last_t is None else max(entry.last_t, item.t)
        entry.count += 1

    def __len__(self):
        return len(self._sensors)

    def names(self):
        return sorted(self._sensors)

    def rows(self):
        out = []
        for name in sorted(self._sensors):
            e = self._sensors[name]
            pick = lambda names: next((e.latest[n] for n in names if n in e.latest), None)  # noqa: E731
            out.append(SensorRow(name, e.latest.get(e.primary), e.last_t, pick(RSSI_NAMES), pick(BATTERY_NAMES),
                                 e.count))
        return out

    def latest(self, sensor):
        """The last reading of each quantity of ``sensor`` (a dict name -> Reading), or None if unknown."""
        e = self._sensors.get(sensor)
        return None if e is None else dict(e.latest)

    def recent(self, sensor, n=10):
        """The last ``n`` readings of ``sensor``, oldest first, or None if unknown."""
        e = self._sensors.get(sensor)
        return None if e is None else list(e.history)[-n:]
