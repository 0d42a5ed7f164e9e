"""Presence per zone, derived at the gateway from BLE beacons and occupancy sensors. Pure: readings in, events out.

A campus gateway hears hundreds of beacon adverts a second. The backend does not want them; it wants to know who is
in which zone, and when that changes. So:

* Each beacon's RSSI is smoothed with an exponential moving average (``alpha``), because single adverts jump by
  10 dB and more.
* A beacon **enters** a zone when its smoothed RSSI rises above the zone's ``enter_dbm``, and **leaves** when it
  falls below ``leave_dbm`` (lower than ``enter_dbm``: hysteresis, so a beacon on the edge does not flap) or is not
  heard for ``timeout_s``.
* An occupancy sensor (a BTHome ``occupancy`` or ``motion`` binary reading) marks its zone occupied while true.
* Output is one ``Event`` per change, named ``presence`` on the zone: state ``raised`` when the zone becomes
  occupied, ``cleared`` when it empties, ``info`` when the count changes in between; the value is the number of
  beacons present and the reason names who came or went.

The tracker never reads a clock: ``observe`` takes the reading's time and ``tick(now)`` handles timeouts.
"""

from gateway.core.model import Event

OCCUPANCY_NAMES = ("occupancy", "motion", "presence")


class Zone:
    __slots__ = ("name", "beacons", "sensors", "enter_dbm", "leave_dbm", "present", "occupied_by_sensor")

    def __init__(self, name, beacons=(), sensors=(), enter_dbm=-70.0, leave_dbm=-80.0):
        if leave_dbm >= enter_dbm:
            raise ValueError("zone %r: leave_dbm must be below enter_dbm (hysteresis)" % (name,))
        self.name = name
        self.beacons = set(beacons)
        self.sensors = set(sensors)
        self.enter_dbm = float(enter_dbm)
        self.leave_dbm = float(leave_dbm)
        self.present = set()
        self.occupied_by_sensor = set()

    def occupied(self):
        return bool(self.present or self.occupied_by_sensor)


class PresenceTracker:
    def __init__(self, zones, alpha=0.3, timeout_s=60.0):
        """``zones``: list of dicts ``{name, beacons: [sensor ids], sensors: [occupancy sensor ids], enter_dbm,
        leave_dbm}``. A beacon may belong to several zones."""
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.timeout_s = timeout_s
        self.zones = [Zone(z["name"], z.get("beacons", ()), z.get("sensors", ()), z.get("enter_dbm", -70.0),
                           z.get("leave_dbm", -80.0)) for z in zones]
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
            out = []
            for zone in self._by_beacon[beacon]:
                if beacon not in zone.present and smooth > zone.enter_dbm:
                    out += self._change(zone, reading.t, lambda: zone.present.add(beacon), "%s entered" % beacon)
                elif beacon in zone.present and smooth < zone.leave_dbm:
                    out += self._change(zone, reading.t, lambda: zone.present.discard(beacon), "%s left" % beacon)
            return out
        if reading.name in OCCUPANCY_NAMES and reading.sensor in self._by_sensor:
            out = []
            on = bool(reading.value)
            for zone in self._by_sensor[reading.sensor]:
                if on and reading.sensor not in zone.occupied_by_sensor:
                    out += self._change(zone, reading.t, lambda: zone.occupied_by_sensor.add(reading.sensor),
                                        "%s detects occupancy" % reading.sensor)
                elif not on and reading.sensor in zone.occupied_by_sensor:
                    out += self._change(zone, reading.t, lambda: zone.occupied_by_sensor.discard(reading.sensor),
                                        "%s detects no occupancy" % reading.sensor)
            return out
        return []

    def tick(self, now):
        """Beacons not heard for ``timeout_s`` leave every zone."""
        out = []
        for beacon, heard in list(self.last_heard.items()):
            if now - heard >= self.timeout_s:
                del self.last_heard[beacon]
                self.smoothed.pop(beacon, None)
                for zone in self._by_beacon.get(beacon, ()):
                    if beacon in zone.present:
                        out += self._change(zone, now, lambda z=zone: z.present.discard(beacon),
                                            "%s not heard for %d s" % (beacon, self.timeout_s))
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
        return {z.name: {"beacons": sorted(z.present), "occupied": z.occupied()} for z in self.zones}
