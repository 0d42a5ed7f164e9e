"""Presence per zone, derived at the gateway from BLE beacons and occupancy sensors. Pure: readings in, events out.

A campus gateway hears hundreds of beacon adverts a second. The backend does not want them; it wants to know how
many are in which zone (and, where the site allows it, who), and when that changes. So:

* Each beacon's RSSI is smoothed with an exponential moving average (``alpha``), because single adverts jump by
  10 dB and more.
* A beacon **enters** a zone when its smoothed RSSI rises above the zone's ``enter_dbm``, and **leaves** when it
  falls below ``leave_dbm`` (lower than ``enter_dbm``: hysteresis, so a beacon on the edge does not flap) or is not
  heard for the zone's ``timeout_s``.
* An occupancy sensor (a BTHome ``occupancy`` or ``motion`` binary reading) marks its zone occupied while true.
* Output is one ``Event`` per change, named ``presence`` on the zone: state ``raised`` when the zone becomes
  occupied, ``cleared`` when it empties, ``info`` when the count changes in between; the value is the number of
  beacons present. In mode ``addresses`` the reason names who came or went (``badge-07 entered; 3 present``); in
  mode ``counts`` it never does (``a beacon entered; 3 present``): no beacon or sensor id leaves the tracker.

``PresenceStage`` puts the tracker in front of the rules engine as the pipeline's rules stage: beacon readings
never travel (in ``counts`` mode no reading of a beacon does), each change also sends the zone's count as a
reading ``<zone>/count``, and ``report_s`` repeats the counts. The tracker never reads a clock: ``observe`` takes
the reading's time and ``tick(now)`` handles timeouts. The configuration is ``[presence]``
(``gateway/app/config.py``, docs/configuration.md).
"""

from gateway.core.model import Event, Reading
from gateway.core.rules import EMPTY, Result

OCCUPANCY_NAMES = ("occupancy", "motion", "presence")
MODES = ("counts", "addresses")
COUNT = "count"  # the name of the per-zone count reading


class Zone:
    __slots__ = ("name", "beacons", "sensors", "enter_dbm", "leave_dbm", "timeout_s", "present",
                 "occupied_by_sensor")

    def __init__(self, name, beacons=(), sensors=(), enter_dbm=-70.0, leave_dbm=-80.0, timeout_s=None):
        if leave_dbm >= enter_dbm:
            raise ValueError("zone %r: leave_dbm must be below enter_dbm (hysteresis)" % (name,))
        self.name = name
        self.beacons = set(beacons)
        self.sensors = set(sensors)
        self.enter_dbm = float(enter_dbm)
        self.leave_dbm = float(leave_dbm)
        self.timeout_s = timeout_s
        self.present = set()
        self.occupied_by_sensor = set()

    def occupied(self):
        return bool(self.present or self.occupied_by_sensor)


class PresenceTracker:
    def __init__(self, zones, alpha=0.3, timeout_s=60.0, mode="addresses"):
        """``zones``: list of dicts ``{name, beacons: [sensor ids], sensors: [occupancy sensor ids], enter_dbm,
        leave_dbm, timeout_s}``. A beacon may belong to several zones. ``mode``: ``addresses`` (reasons name the
        beacon) or ``counts`` (they never do)."""
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        if mode not in MODES:
            raise ValueError("mode must be one of %s" % ", ".join(MODES))
        self.alpha = alpha
        self.timeout_s = timeout_s
        self.mode = mode
        self.zones = [Zone(z["name"], z.get("beacons", ()), z.get("sensors", ()), z.get("enter_dbm", -70.0),
                           z.get("leave_dbm", -80.0), z.get("timeout_s") or timeout_s) for z in zones]
        self._by_beacon = {}
        self._by_sensor = {}
        for zone in self.zones:
            for b in zone.beacons:
                self._by_beacon.setdefault(b, []).append(zone)
            for s in zone.sensors:
                self._by_sensor.setdefault(s, []).append(zone)
        self.smoothed = {}
        self.last_heard = {}
        self.counters = {"adverts": 0, "events": 0}

    def is_beacon(self, sensor):
        return sensor in self._by_beacon

    def is_occupancy(self, reading):
        return reading.name in OCCUPANCY_NAMES and reading.sensor in self._by_sensor

    def _who(self, sensor, kind):
        return sensor if self.mode == "addresses" else "a " + kind

    def observe(self, reading):
        """Feed one reading; returns the list of presence events it caused (usually empty)."""
        if reading.name == "rssi" and reading.sensor in self._by_beacon:
            self.counters["adverts"] += 1
            beacon = reading.sensor
            prev = self.smoothed.get(beacon)
            value = float(reading.value)
            smooth = value if prev is None else prev + self.alpha * (value - prev)
            self.smoothed[beacon] = smooth
            self.last_heard[beacon] = reading.t
            who = self._who(beacon, "beacon")
            out = []
            for zone in self._by_beacon[beacon]:
                if beacon not in zone.present and smooth > zone.enter_dbm:
                    out += self._change(zone, reading.t, lambda: zone.present.add(beacon), "%s entered" % who)
                elif beacon in zone.present and smooth < zone.leave_dbm:
                    out += self._change(zone, reading.t, lambda: zone.present.discard(beacon), "%s left" % who)
            return out
        if self.is_occupancy(reading):
            out = []
            on = bool(reading.value)
            who = self._who(reading.sensor, "sensor")
            for zone in self._by_sensor[reading.sensor]:
                if on and reading.sensor not in zone.occupied_by_sensor:
                    out += self._change(zone, reading.t, lambda: zone.occupied_by_sensor.add(reading.sensor),
                                        "%s detects occupancy" % who)
                elif not on and reading.sensor in zone.occupied_by_sensor:
                    out += self._change(zone, reading.t, lambda: zone.occupied_by_sensor.discard(reading.sensor),
                                        "%s detects no occupancy" % who)
            return out
        return []

    def tick(self, now):
        """A beacon not heard for a zone's ``timeout_s`` leaves that zone; once past every zone's, it is forgotten."""
        out = []
        for beacon, heard in list(self.last_heard.items()):
            zones = self._by_beacon.get(beacon, ())
            for zone in zones:
                if beacon in zone.present and now - heard >= zone.timeout_s:
                    out += self._change(zone, now, lambda z=zone: z.present.discard(beacon),
                                        "%s not heard for %g s" % (self._who(beacon, "beacon"), zone.timeout_s))
            if all(now - heard >= z.timeout_s for z in zones):
                del self.last_heard[beacon]
                self.smoothed.pop(beacon, None)
        return out

    def _change(self, zone, t, apply, why):
        was = zone.occupied()
        apply()
        now = zone.occupied()
        state = "raised" if now and not was else "cleared" if was and not now else "info"
        self.counters["events"] += 1
        return [Event(zone.name, "presence", state, "%s; %d present" % (why, len(zone.present)), t,
                      value=len(zone.present))]

    def status(self):
        if self.mode == "counts":
            return {z.name: {"count": len(z.present), "occupied": z.occupied()} for z in self.zones}
        return {z.name: {"beacons": sorted(z.present), "occupied": z.occupied()} for z in self.zones}


class PresenceStage:
    """The pipeline's rules stage with the tracker in front of the rules engine (``rules``; None: no rules).

    * A beacon's ``rssi`` goes to the tracker and is never sent; in ``counts`` mode no reading of a beacon is sent
      at all (its battery reading would carry its id), counted in ``counters["withheld"]``. In ``addresses`` mode
      a beacon's other readings go on to the rules.
    * An occupancy sensor's ``occupancy``/``motion``/``presence`` reading goes to the tracker only (the presence
      event says what it saw); its other readings (a multisensor's temperature) go on to the rules.
    * Every presence event is sent with a reading ``<zone>/count`` (the beacons present), and every zone's count
      is repeated each ``report_s`` seconds (0: only on change).
    """

    def __init__(self, tracker, rules=None, report_s=0.0):
        self.tracker = tracker
        self.rules = rules
        self.report_s = report_s
        self.next_report = None
        self.counters = {"consumed": 0, "withheld": 0}

    def _counts(self, events):
        return tuple(Reading(e.sensor, COUNT, e.value, None, e.t) for e in events)

    def process(self, reading):
        tracker = self.tracker
        if reading.__class__ is Reading:
            if tracker.is_beacon(reading.sensor):
                if reading.name == "rssi":
                    self.counters["consumed"] += 1
                    events = tuple(tracker.observe(reading))
                    return Result(self._counts(events), events) if events else EMPTY
                if tracker.mode == "counts":
                    self.counters["withheld"] += 1
                    return EMPTY
            elif tracker.is_occupancy(reading):
                self.counters["consumed"] += 1
                events = tuple(tracker.observe(reading))
                return Result(self._counts(events), events) if events else EMPTY
        if self.rules is None:
            return Result((reading,))
        return self.rules.process(reading)

    def tick(self, now):
        result = self.rules.tick(now) if self.rules is not None else EMPTY
        events = tuple(self.tracker.tick(now))
        counts = self._counts(events)
        if self.report_s:
            if self.next_report is None or now >= self.next_report:
                self.next_report = now + self.report_s
                counts += tuple(Reading(z.name, COUNT, len(z.present), None, now) for z in self.tracker.zones)
        if not events and not counts:
            return result
        return Result(tuple(result.send) + counts, tuple(result.events) + events, result.heartbeat)

    def flush(self):
        return self.rules.flush() if self.rules is not None else EMPTY
