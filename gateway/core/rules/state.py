"""Value and state types of the rules engine: Event (default factory), Result, per-stream state."""

from .config import INF, LEVELS, BATTERY_NAMES, RSSI_NAMES


class Event:
    """Default event type (MicroPython-friendly); same fields as ``gateway.core.model.Event``."""

    __slots__ = ("sensor", "name", "state", "reason", "t", "value", "level", "alarm")

    def __init__(self, sensor, name, state, reason, t=0.0, value=None, level=None, alarm=False):
        self.sensor = sensor
        self.name = name
        self.state = state
        self.reason = reason
        self.t = t
        self.value = value
        self.level = level
        self.alarm = alarm

    def __eq__(self, other):
        return (
            self.sensor == other.sensor and self.name == other.name and self.state == other.state
            and self.reason == other.reason and self.t == other.t and self.value == other.value
            and self.level == other.level and self.alarm == other.alarm
        )

    def __repr__(self):
        return "Event(%r, %r, %r, %r, t=%r, value=%r, level=%r, alarm=%r)" % (
            self.sensor, self.name, self.state, self.reason, self.t, self.value, self.level, self.alarm)


class Result:
    """What one call returns: ``send``, ``heartbeat`` (readings) and ``events``, all tuples."""

    __slots__ = ("send", "events", "heartbeat")

    def __init__(self, send=(), events=(), heartbeat=()):
        self.send = send
        self.events = events
        self.heartbeat = heartbeat

    def __bool__(self):
        return bool(self.send or self.events or self.heartbeat)

    def __repr__(self):
        return "Result(send=%r, events=%r, heartbeat=%r)" % (self.send, self.events, self.heartbeat)


EMPTY = Result()


class _Sensor:
    """Per-sensor liveness for ``stale_after``."""

    __slots__ = ("name", "stale_after", "last_seen", "silent", "event")

    def __init__(self, name, stale_after):
        self.name = name
        self.stale_after = stale_after
        self.last_seen = None
        self.silent = False
        self.event = None


class _Stream:
    """Per (sensor, name) state plus its resolved options (flattened for a lean hot path)."""

    __slots__ = (
        "sensor", "name", "live",
        # rate limit
        "rate", "burst", "tokens", "rate_t",
        # thresholds
        "th", "thr", "hys", "delay", "lo", "hi", "cur", "since", "pending", "raise_event",
        # health
        "health", "health_name", "health_thr", "health_hys", "health_on", "health_event",
        # deadband
        "db", "db_pct", "ref",
        # heartbeat
        "hb", "last_emit", "latest", "last_sent",
        # swinging door
        "sd", "a_t", "a_v", "s_lo", "s_hi", "snap",
    )

    def __init__(self, sensor, name, groups, live):
        self.sensor = sensor
        self.name = name
        self.live = live
        rate = groups.get("rate")
        self.rate = rate["rate_limit"] if rate else None
        self.burst = rate["burst"] if rate else 0
        self.tokens = self.burst
        self.rate_t = None
        th = groups.get("thresholds")
        self.th = th is not None
        self.thr = [-INF, -INF, INF, INF]
        self.hys = 0
        self.delay = 0
        if th:
            for i in range(4):
                if LEVELS[i] in th:
                    self.thr[i] = th[LEVELS[i]]
            self.hys = th["hysteresis"]
            self.delay = th["delay_on"]
        self.lo = max(self.thr[0], self.thr[1])  # inside [lo, hi] with nothing pending: no threshold work
        self.hi = min(self.thr[2], self.thr[3])
        self.cur = None
        self.since = [None, None, None, None]
        self.pending = False
        self.raise_event = None
        self.health = None
        batt = groups.get("battery")
        rssi = groups.get("rssi")
        if batt and name in BATTERY_NAMES:
            self.health, self.health_name, self.health_thr, self.health_hys = "batt", "battery_low", \
                batt["battery_low"], batt["hysteresis"]
        elif rssi and name in RSSI_NAMES:
            self.health, self.health_name, self.health_thr, self.health_hys = "rssi", "weak_signal", \
                rssi["rssi_weak"], rssi["hysteresis"]
        self.health_on = False
        self.health_event = None
        db = groups.get("deadband")
        self.db = None
        self.db_pct = False
        if db:
            if "deadband" in db:
                self.db = db["deadband"]
            else:
                self.db = db["deadband_pct"] / 100.0
                self.db_pct = True
        self.ref = None
        hb = groups.get("heartbeat")
        self.hb = hb["heartbeat"] if hb else None
        self.last_emit = None
        self.latest = None
        self.last_sent = None
        comp = groups.get("compression")
        self.sd = comp["swinging_door"] if comp else None
        self.a_t = None
        self.a_v = None
        self.s_lo = -INF
        self.s_hi = INF
        self.snap = None
