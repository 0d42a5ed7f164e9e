"""The read API's answers (docs/backend.md, "The read API"): gateways, their sensors, one name's readings over a
time range, open alarms, and the sensors that need attention, ranked. Plain dicts, ready for JSON.

Built on the read side of ``backend.storage.Storage`` (index lookups and bounded ranges), so it serves either
engine. No HTTP here (``backend.readhttp`` parses requests and calls ``ReadApi``); the ranking (``rank``) and the
threshold parsing (``thresholds_of``) are pure functions.

Names are ``<gw>/<sensor>/<quantity>`` (docs/wire-format.md). Events (``alarm.*``, ``silent``, ``battery_low``,
``weak_signal``) are records whose ``vs`` is ``"<state>: <reason>"``; an event is *open* when its newest record is
``raised``. Health counters are records of the sensor ``health``. A sensor's "silent" is measured against its own
gateway's newest reading (a sensor quiet while its gateway reports), so a gateway whose clock is off, or the
replay of a scenario on simulated time, is judged the same; a gateway's own silence is measured on the receiver's
clock (``last_seen``, when its last batch was stored).
"""

import dataclasses
import re
import time

#: the event names of docs/wire-format.md ("Records"); an ``alarm.*`` is a threshold alarm
EVENTS = ("alarm.low_low", "alarm.low", "alarm.high", "alarm.high_high", "silent", "battery_low", "weak_signal")
ALARM_PREFIX = "alarm."
HEALTH_SENSOR = "health"
#: the quantity names that are a battery level and a radio signal
BATTERY = ("batt", "battery")
SIGNAL = ("rssi",)
#: health counters summed as "drops" (data deleted unsent by policy or lost), docs/wire-format.md "Health records"
DROPS = ("dropped_batches", "dropped_alarm_batches", "expired_batches", "lost_batches", "memory_dropped_batches")
#: health names that say how many batches wait in the gateway's queue, the first found is shown
QUEUE = ("queue_batches", "queue_depth", "queue.batches")
LAST_STOP = "last_stop."
#: plausible values per SenML unit: a value outside is a sensor out of range (broken or misread), not weather
PLAUSIBLE = {"Cel": (-60.0, 130.0), "%RH": (0.0, 100.0), "%EL": (0.0, 100.0), "dBm": (-130.0, 20.0),
             "Pa": (30000.0, 110000.0), "V": (0.0, 60.0), "lat": (-90.0, 90.0), "lon": (-180.0, 180.0)}
#: why a sensor needs attention: kind -> weight (the rank is the sum of a sensor's weights)
WEIGHTS = {"silent": 50, "alarm": 40, "battery_low": 30, "out_of_range": 25, "weak_signal": 20, "drifting": 15,
           "gateway_silent": 60}
_BELOW = re.compile(r"below (-?\d+(?:\.\d+)?)")
_THRESHOLD = re.compile(r"(?:above|below|beyond) (low_low|low|high|high_high) (-?\d+(?:\.\d+)?)")

#: bounds of what one request may ask for
MAX_GATEWAYS = 1000
MAX_NAMES = 2000
MAX_POINTS = 5000
MAX_EVENTS = 200
MAX_BOOTS = 100000


@dataclasses.dataclass(frozen=True, slots=True)
class Attention:
    """The limits of ``rank``; each is a query parameter of ``/api/v1/attention``."""

    silent_after_s: float = 1800.0  #: a sensor with no reading this long before its gateway's newest one is silent
    battery_below: float = 20.0     #: a battery level under this (in %EL) is low
    rssi_below: float = -90.0       #: a signal under this (dBm) is weak
    margin: float = 0.1             #: within this share of the band (or of the threshold) of a threshold: drifting
    days: float = 7.0               #: sensors heard within this many days before their gateway's newest reading


def split(gw, name):
    """``(sensor, quantity)`` of a record name of ``gw`` (the ``<gw>/`` prefix taken off when it is there)."""
    rest = name[len(gw) + 1:] if name.startswith(gw + "/") else name
    sensor, _, quantity = rest.rpartition("/")
    return sensor, quantity


def event_state(vs):
    """``(state, reason)`` of an event's ``vs`` text ``"<state>: <reason>"``."""
    state, _, reason = (vs or "").partition(":")
    return state.strip(), reason.strip()


def thresholds_of(reasons):
    """``{level: threshold}`` read from alarm reasons (``"temp 8.50 above high 8.00"``; the rules engine writes
    the threshold into every raise and clear); later reasons win."""
    found = {}
    for reason in reasons:
        for level, value in _THRESHOLD.findall(reason or ""):
            found[level] = float(value)
    return found


def _number(row):
    """A record's number: ``v`` (an integral float as an int: REAL columns give ``3.0`` for a count of 3), or
    ``vb`` as 0/1, or None."""
    v, vb = row[2], row[4]
    if v is None:
        return None if vb is None else int(vb)
    return int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 2 ** 53 else v


def _reading(row):
    return {"t": row[0], "u": row[1], "v": _number(row)}


class GatewayView:
    """What one request reads of one gateway: its newest batch, its names in the window and each name's newest
    record (one seek each). Built once per gateway per request."""

    def __init__(self, storage, gw, days):
        self.gw = gw
        self.head = storage.gateway_head(gw)
        newest = storage.latest_time(gw)
        self.newest_t = newest
        since = None if newest is None or days is None else newest - days * 86400.0
        self.latest = {}
        for name in storage.names(gw, since, MAX_NAMES):
            rows = storage.latest(gw, name)
            if rows:
                self.latest[name] = rows[0]

    def health(self):
        """``{counter: value}`` of the newest health records (``last_stop.*`` aside)."""
        out = {}
        for name, row in self.latest.items():
            sensor, quantity = split(self.gw, name)
            if sensor == HEALTH_SENSOR and not quantity.startswith(LAST_STOP):
                out[quantity] = row[3] if row[3] is not None and row[2] is None else _number(row)
        return out

    def last_stops(self):
        """``[(t, kind)]`` of the ``last_stop.<kind>`` records, newest first."""
        stops = []
        for name, row in self.latest.items():
            sensor, quantity = split(self.gw, name)
            if sensor == HEALTH_SENSOR and quantity.startswith(LAST_STOP):
                stops.append((row[0], quantity[len(LAST_STOP):]))
        return sorted(stops, reverse=True)

    def sensors(self):
        """``{sensor: {"readings": {quantity: row}, "events": {event: row}}}`` (health aside)."""
        out = {}
        for name, row in self.latest.items():
            sensor, quantity = split(self.gw, name)
            if sensor == HEALTH_SENSOR:
                continue
            entry = out.setdefault(sensor, {"readings": {}, "events": {}})
            kind = "events" if quantity in EVENTS or quantity.startswith(ALARM_PREFIX) else "readings"
            entry[kind][quantity] = row
        return out


class ReadApi:
    """The read API over one ``Storage``. Not thread-safe (the storage is not): the HTTP front serialises calls.
    ``clock`` is the receiver's clock (a gateway's silence is measured on it)."""

    def __init__(self, storage, clock=time.time):
        self.storage = storage
        self.clock = clock

    # -- gateways ---------------------------------------------------------------------------------------------
    def gateways(self, days=7.0):
        return {"gateways": [self._gateway(GatewayView(self.storage, gw, days))
                             for gw in self.storage.gateway_ids(MAX_GATEWAYS)], "now": self.clock()}

    def _gateway(self, view):
        head = view.head or {}
        health = view.health()
        stops = view.last_stops()
        boots = self.storage.boots(view.gw, MAX_BOOTS)
        version = health.get("version")
        queue = next((health[k] for k in QUEUE if k in health), None)
        return {
            "gw": view.gw, "last_seen": head.get("last_seen"), "newest_reading": view.newest_t,
            "boot": head.get("boot"), "seq": head.get("seq"), "clock_synced": head.get("clock"),
            "kid": head.get("kid"), "version": None if version is None else str(version),
            "uptime_s": health.get("uptime_s"), "queue_batches": queue,
            "drops": sum(health.get(k) or 0 for k in DROPS if isinstance(health.get(k), (int, float))),
            "boots": boots, "restarts": max(0, boots - 1),
            "last_stop": stops[0][1] if stops else None,
            "stops": [{"t": t, "kind": kind} for t, kind in stops[:10]],
            "health": health, "sensors": len(view.sensors()),
        }

    # -- sensors ----------------------------------------------------------------------------------------------
    def sensors(self, gw, days=7.0):
        view = GatewayView(self.storage, gw, days)
        if view.head is None:
            return None
        return {"gw": gw, "newest_reading": view.newest_t,
                "sensors": [self._sensor(gw, sensor, entry) for sensor, entry in sorted(view.sensors().items())]}

    def _sensor(self, gw, sensor, entry):
        readings = entry["readings"]
        times = [row[0] for row in readings.values()]
        events = {q: row for q, row in entry["events"].items()}
        battery = next((readings[q] for q in BATTERY if q in readings), None)
        signal = next((readings[q] for q in SIGNAL if q in readings), None)
        open_events = []
        for quantity, row in sorted(events.items()):
            state, reason = event_state(row[3])
            if state == "raised":
                open_events.append({"event": quantity, "t": row[0], "reason": reason, "boot": row[5]})
        limits = {}
        for quantity, row in events.items():
            if quantity.startswith(ALARM_PREFIX):
                reason = event_state(row[3])[1]
                limits.setdefault(reason.split(" ", 1)[0], []).append(reason)
        return {"sensor": sensor, "last_seen": max(times) if times else None,
                "readings": {q: _reading(row) for q, row in sorted(readings.items())},
                "battery": None if battery is None else _reading(battery),
                "signal": None if signal is None else _reading(signal),
                "open_events": open_events,
                "thresholds": {q: thresholds_of(r) for q, r in limits.items() if thresholds_of(r)}}

    # -- readings ---------------------------------------------------------------------------------------------
    def readings(self, gw, name, t0, t1, max_points):
        """One name's readings in ``[t0, t1]``: every point when there are at most ``max_points``, else buckets
        (``max_points`` of equal width; each point the bucket's mean, with its min and max); plus the sensor's
        events in the range (alarms, silent, ...) and the thresholds known from its alarm reasons."""
        full = gw + "/" + name
        total = self.storage.count(gw, full, t0, t1)
        out = {"gw": gw, "name": name, "from": t0, "to": t1, "total": total, "unit": None}
        newest = self.storage.latest(gw, full)
        if newest:
            out["unit"] = newest[0][1]
        if total <= max_points:
            rows = self.storage.series(gw, full, t0, t1, max_points)
            out["points"] = [[t, v if v is not None else (None if vb is None else int(vb))]
                             for t, v, vs, vb in rows if v is not None or vb is not None]
            out["downsampled"] = False
        else:
            width = (t1 - t0) / (max_points - 1) or 1.0  # t1 itself falls in bucket max_points - 1
            rows = self.storage.buckets(gw, full, t0, t1, width)
            out["points"] = [[(lo + hi) / 2.0, avg] for b, n, lo, hi, avg, vmin, vmax in rows]
            out["envelope"] = [[(lo + hi) / 2.0, vmin, vmax] for b, n, lo, hi, avg, vmin, vmax in rows]
            out["bucket_s"] = width
            out["downsampled"] = True
        sensor, quantity = split(gw, full)
        events, reasons, health_limits = [], [], {}
        for event in EVENTS:
            rows = self.storage.series(gw, "%s/%s/%s" % (gw, sensor, event), t0, t1, MAX_EVENTS)
            for t, v, vs, vb in rows:
                state, reason = event_state(vs)
                events.append({"t": t, "event": event, "state": state, "reason": reason})
            # the thresholds: from the events in the range, and from the newest of each kind
            texts = [vs for t, v, vs, vb in rows] + [row[3] for row in self.storage.latest(
                gw, "%s/%s/%s" % (gw, sensor, event))]
            mine = [r for r in (event_state(vs)[1] for vs in texts) if r.split(" ", 1)[0] == quantity]
            if event.startswith(ALARM_PREFIX):
                reasons += mine
            else:  # battery_low, weak_signal: "batt 14.00 below 15.00"
                for r in mine:
                    found = _BELOW.search(r)
                    if found:
                        health_limits[event] = float(found.group(1))
        out["events"] = sorted(events, key=lambda e: e["t"])
        out["thresholds"] = dict(thresholds_of(reasons), **health_limits)
        return out

    # -- alarms and attention ---------------------------------------------------------------------------------
    def alarms(self, gw=None, days=None):
        """The open events (newest record ``raised``) of one gateway or of all, newest first."""
        gws = [gw] if gw is not None else self.storage.gateway_ids(MAX_GATEWAYS)
        out = []
        for g in gws:
            view = GatewayView(self.storage, g, days)
            for sensor, entry in view.sensors().items():
                for item in self._sensor(g, sensor, entry)["open_events"]:
                    out.append(dict(item, gw=g, sensor=sensor, alarm=item["event"].startswith(ALARM_PREFIX)))
        return {"alarms": sorted(out, key=lambda a: (-a["t"], a["gw"], a["sensor"]))}

    def attention(self, limits=Attention()):
        now = self.clock()
        items = []
        for gw in self.storage.gateway_ids(MAX_GATEWAYS):
            view = GatewayView(self.storage, gw, limits.days)
            last_seen = (view.head or {}).get("last_seen")
            if last_seen is not None and now - last_seen > limits.silent_after_s:
                items.append({"gw": gw, "sensor": None, "score": WEIGHTS["gateway_silent"], "reasons": [
                    {"kind": "gateway_silent", "text": "gateway: no batch for %s" % _age(now - last_seen)}]})
            sensors = [self._sensor(gw, s, e) for s, e in view.sensors().items()]
            items += rank(gw, sensors, view.newest_t, limits)
        items.sort(key=lambda i: (-i["score"], i["gw"], i["sensor"] or ""))
        return {"attention": items, "now": now, "limits": dataclasses.asdict(limits)}


def _age(seconds):
    seconds = max(0, int(seconds))
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min" % (seconds // 60)
    if seconds < 172800:
        return "%.1f h" % (seconds / 3600.0)
    return "%.1f days" % (seconds / 86400.0)


def rank(gw, sensors, newest_t, limits):
    """The sensors of one gateway that need attention, each ``{gw, sensor, score, reasons: [{kind, text}]}``.

    ``sensors`` are ``ReadApi._sensor`` dicts; ``newest_t`` is the gateway's newest reading time (silence is
    measured against it). Pure: the same input, the same answer."""
    out = []
    for s in sensors:
        reasons = []
        opened = {e["event"]: e for e in s["open_events"]}
        if "silent" in opened:
            reasons.append(("silent", "silent: " + opened["silent"]["reason"]))
        elif s["last_seen"] is not None and newest_t is not None and newest_t - s["last_seen"] > limits.silent_after_s:
            reasons.append(("silent", "silent: no reading for %s while its gateway reports" % _age(
                newest_t - s["last_seen"])))
        for event, e in sorted(opened.items()):
            if event.startswith(ALARM_PREFIX):
                reasons.append(("alarm", "%s: %s" % (event, e["reason"])))
        battery = s["battery"]
        if "battery_low" in opened:
            reasons.append(("battery_low", "battery low: " + opened["battery_low"]["reason"]))
        elif battery is not None and battery["v"] is not None and battery["v"] < limits.battery_below:
            reasons.append(("battery_low", "battery low: %g %s" % (battery["v"], battery["u"] or "")))
        signal = s["signal"]
        if "weak_signal" in opened:
            reasons.append(("weak_signal", "weak signal: " + opened["weak_signal"]["reason"]))
        elif signal is not None and signal["v"] is not None and signal["v"] < limits.rssi_below:
            reasons.append(("weak_signal", "weak signal: %g dBm" % signal["v"]))
        for quantity, r in sorted(s["readings"].items()):
            v = r["v"]
            if v is None or isinstance(v, bool):
                continue
            low_high = PLAUSIBLE.get(r["u"])
            if low_high and not low_high[0] <= v <= low_high[1]:
                reasons.append(("out_of_range", "%s %g %s is outside %g..%g" % (quantity, v, r["u"], *low_high)))
                continue
            drift = _drifting(v, s["thresholds"].get(quantity, {}), limits.margin)
            if drift and not any(k == "alarm" for k, _ in reasons):
                reasons.append(("drifting", "%s %g %s" % (quantity, v, drift)))
        if reasons:
            kinds = {k for k, _ in reasons}
            out.append({"gw": gw, "sensor": s["sensor"], "score": sum(WEIGHTS[k] for k in kinds),
                        "reasons": [{"kind": k, "text": t} for k, t in reasons],
                        "last_seen": s["last_seen"], "battery": battery, "signal": signal})
    return out


def _drifting(v, thresholds, margin):
    """"near high 8.00" when ``v`` is within ``margin`` of the band (low..high, or the threshold's size) of a
    known threshold, or beyond it; else None."""
    if not thresholds:
        return None
    highs = [thresholds[k] for k in ("high", "high_high") if k in thresholds]
    lows = [thresholds[k] for k in ("low", "low_low") if k in thresholds]
    band = (min(highs) - max(lows)) if highs and lows else None
    for level in ("high", "high_high"):
        if level in thresholds:
            thr = thresholds[level]
            room = margin * (band if band and band > 0 else max(abs(thr), 1.0))
            if v >= thr - room:
                return "near %s %g" % (level, thr) if v < thr else "beyond %s %g" % (level, thr)
    for level in ("low", "low_low"):
        if level in thresholds:
            thr = thresholds[level]
            room = margin * (band if band and band > 0 else max(abs(thr), 1.0))
            if v <= thr + room:
                return "near %s %g" % (level, thr) if v > thr else "beyond %s %g" % (level, thr)
    return None
