"""The rules engine: process / tick / flush. Semantics are documented in ``gateway/core/rules/__init__.py``."""

from .config import INF, LEVELS, ALARM_NAMES, RANK, EPS, glob_match, validate_rules
from .state import EMPTY, Event, Result, _Sensor, _Stream


class RuleEngine:
    """Apply filtering and alarm rules to readings; see the module docstring for the semantics."""

    def __init__(self, rules, event_factory=None):
        self._rules = validate_rules(rules)
        self._event = event_factory if event_factory is not None else Event
        self._streams = {}
        self._sensors = {}
        self._ticking = []  # streams with a heartbeat or a door, for tick/flush
        self._n_rate = 0
        self._n_db = 0
        self._n_sd = 0
        self._n_hb = 0
        self._raised = 0

    # -- configuration lookup (once per stream) --

    def resolve(self, sensor, name):
        """The merged option groups for one stream: {group: {key: value}}."""
        groups = {}
        for s_glob, n_glob, rule_groups in self._rules:
            if glob_match(s_glob, sensor) and glob_match(n_glob, name):
                for g in rule_groups:
                    if g not in groups:
                        groups[g] = rule_groups[g]
        return groups

    def _open(self, reading, key):
        sensor = reading.sensor
        groups = self.resolve(sensor, reading.name)
        live = None
        if "stale" in groups:
            after = groups["stale"]["stale_after"]
            live = self._sensors.get(sensor)
            if live is None:
                live = self._sensors[sensor] = _Sensor(sensor, after)
                for other in self._streams.values():
                    if other.sensor == sensor:
                        other.live = live
            elif after < live.stale_after:
                live.stale_after = after
        st = _Stream(sensor, reading.name, groups, live)
        if live is None:
            st.live = self._sensors.get(sensor)  # another stream of this sensor may track staleness
        if st.hb is not None or st.sd is not None:
            self._ticking.append(st)
        self._streams[key] = st
        return st

    # -- the hot path --

    def process(self, r):
        """Apply the rules to one reading; return a :class:`Result` (``EMPTY`` when nothing comes out)."""
        st = self._streams.get((r.sensor, r.name))
        if st is None:
            st = self._open(r, (r.sensor, r.name))
        t = r.t
        events = ()
        live = st.live
        if live is not None:
            if live.silent:
                events = self._back(live, r, t)
            if live.last_seen is None or t > live.last_seen:
                live.last_seen = t
        if st.rate is not None:
            last = st.rate_t
            tok = st.tokens
            if last is not None and t > last:
                tok += (t - last) * st.rate
                if tok > st.burst:
                    tok = st.burst
            if last is None or t > last:
                st.rate_t = t
            if tok < 1:
                st.tokens = tok
                self._n_rate += 1
                return Result((), events) if events else EMPTY
            st.tokens = tok - 1
        v = r.value
        tv = type(v)
        if (tv is not float and tv is not int) or v - v != 0:
            st.latest = st.last_sent = r
            st.last_emit = t
            return Result((r,), events)
        if st.th and (st.cur is not None or st.pending or v > st.hi or v < st.lo):
            events = events + self._thresholds(st, r, v, t)
        if st.health is not None:
            events = events + self._health(st, r, v, t)
        st.latest = r
        db = st.db
        if db is not None:
            ref = st.ref
            if ref is not None:
                if st.db_pct:
                    db = db * (ref if ref >= 0 else -ref)
                d = v - ref
                if -db <= d <= db:
                    hb = st.hb
                    if hb is None or t - st.last_emit < hb:
                        self._n_db += 1
                        return Result((), events) if events else EMPTY
                    send = self._force(st, r, v, t)
                    self._n_hb += len(send)
                    return Result(send, events)
            st.ref = v
        if st.sd is not None:
            send = self._door(st, r, v, t)
            return Result(send, events) if send or events else EMPTY
        st.last_sent = r
        st.last_emit = t
        return Result((r,), events)

    # -- thresholds --

    def _thresholds(self, st, r, v, t):
        thr = st.thr
        since = st.since
        pending = False
        for i in range(4):
            if (v < thr[i]) if i < 2 else (v > thr[i]):
                if since[i] is None:
                    since[i] = t
                pending = True
            else:
                since[i] = None
        st.pending = pending
        cur = st.cur
        hys = st.hys
        hold = None
        if cur == 3:
            hold = 3 if v > thr[3] - hys else (2 if v > thr[2] - hys else None)
        elif cur == 2:
            hold = 2 if v > thr[2] - hys else None
        elif cur == 0:
            hold = 0 if v < thr[0] + hys else (1 if v < thr[1] + hys else None)
        elif cur == 1:
            hold = 1 if v < thr[1] + hys else None
        armed = None
        delay = st.delay - EPS
        for i in (3, 2, 0, 1):
            s = since[i]
            if s is not None and t - s >= delay:
                armed = i
                break
        new = hold
        if armed is not None and (hold is None or (armed >= 2) != (hold >= 2) or RANK[armed] > RANK[hold]):
            new = armed
        if new == cur:
            return ()
        ev = self._event
        q = st.name
        out = []
        if cur is not None:
            if new is not None and (new >= 2) == (cur >= 2) and RANK[new] > RANK[cur]:
                reason = "%s %.2f escalated to %s" % (q, v, LEVELS[new])
            else:
                reason = "%s %.2f back %s %s %.2f (hysteresis %.2f)" % (
                    q, v, "below" if cur >= 2 else "above", LEVELS[cur], thr[cur], hys)
            out.append(ev(st.sensor, ALARM_NAMES[cur], "cleared", reason, t, v, LEVELS[cur], True))
        if new is not None:
            if cur is not None and (new >= 2) == (cur >= 2) and RANK[new] < RANK[cur]:
                reason = "%s %.2f down from %s, still beyond %s %.2f" % (q, v, LEVELS[cur], LEVELS[new], thr[new])
            else:
                reason = "%s %.2f %s %s %.2f" % (q, v, "above" if new >= 2 else "below", LEVELS[new], thr[new])
                if st.delay:
                    reason += " for %d s" % int(t - since[new] + 0.5)
            e = ev(st.sensor, ALARM_NAMES[new], "raised", reason, t, v, LEVELS[new], True)
            out.append(e)
            st.raise_event = self._stamp(e)
        else:
            st.raise_event = None
        st.cur = new
        return tuple(out)

    def _health(self, st, r, v, t):
        thr = st.health_thr
        if not st.health_on:
            if v < thr:
                st.health_on = True
                e = self._event(st.sensor, st.health_name, "raised", "%s %.2f below %.2f" % (st.name, v, thr),
                                t, v, None, False)
                st.health_event = self._stamp(e)
                return (e,)
        elif v >= thr + st.health_hys:
            st.health_on = False
            st.health_event = None
            return (self._event(st.sensor, st.health_name, "cleared", "%s %.2f back above %.2f (hysteresis %.2f)"
                                % (st.name, v, thr, st.health_hys), t, v, None, False),)
        return ()

    def _back(self, live, r, t):
        live.silent = False
        live.event = None
        return (self._event(live.name, "silent", "cleared", "reading again after %d s" % int(t - live.last_seen),
                            t, None, None, False),)

    # -- swinging door --

    def _door(self, st, r, v, t):
        """Feed one point; return the tuple of points to keep now (all of them when the heartbeat is due)."""
        hb = st.hb
        if hb is not None and st.last_emit is not None and t - st.last_emit >= hb:
            send = self._force(st, r, v, t)
            self._n_hb += len(send)
            return send
        dev = st.sd
        snap = st.snap
        a_t = st.a_t
        if a_t is None:
            st.a_t = t
            st.a_v = v
            st.last_sent = r
            st.last_emit = t
            return (r,)
        last_t = snap.t if snap is not None else a_t
        if t <= last_t:  # repeated or out-of-order time: keep everything, restart from this point
            return self._force(st, r, v, t)
        dt = t - a_t
        a_v = st.a_v
        s = (v - a_v) / dt
        lo = (v - dev - a_v) / dt
        hi = (v + dev - a_v) / dt
        if st.s_lo > lo:
            lo = st.s_lo
        if st.s_hi < hi:
            hi = st.s_hi
        if lo <= s <= hi:
            st.s_lo = lo
            st.s_hi = hi
            if snap is not None:
                self._n_sd += 1
            st.snap = r
            return ()
        # P leaves the door: keep its predecessor (valid by invariant) and restart the door from it.
        sv = snap.value
        st.a_t = snap.t
        st.a_v = sv
        dt = t - snap.t
        st.s_lo = (v - dev - sv) / dt
        st.s_hi = (v + dev - sv) / dt
        st.snap = r
        st.last_sent = snap
        st.last_emit = t
        return (snap,)

    def _force(self, st, r, v, t):
        """Forward ``r`` now (heartbeat or time going backwards), releasing a held door point first."""
        snap = st.snap
        out = (r,) if snap is None or snap is r else (snap, r)
        st.ref = v
        if st.sd is not None:
            st.a_t = t
            st.a_v = v
            st.s_lo = -INF
            st.s_hi = INF
            st.snap = None
        st.last_sent = r
        st.last_emit = t
        return out

    def _release(self, st):
        """Keep the held door point, if any; return it as a tuple."""
        snap = st.snap
        if snap is None:
            return ()
        st.a_t = snap.t
        st.a_v = snap.value
        st.s_lo = -INF
        st.s_hi = INF
        st.snap = None
        st.last_sent = snap
        return (snap,)

    # -- time and end of stream --

    def tick(self, now):
        """Heartbeats due at ``now`` and sensors gone silent; return a :class:`Result`."""
        beats = []
        for st in self._ticking:
            hb = st.hb
            if hb is None or st.last_emit is None or now - st.last_emit < hb:
                continue
            out = self._release(st)
            latest = st.latest
            if latest is not None and latest is not st.last_sent:
                out = out + self._force(st, latest, latest.value, latest.t)
            if out:
                st.last_emit = now
                self._n_hb += len(out)
                beats.extend(out)
        events = []
        for live in self._sensors.values():
            if not live.silent and live.last_seen is not None and now - live.last_seen >= live.stale_after:
                live.silent = True
                reason = "no reading for %d s (stale_after %d s)" % (int(now - live.last_seen), int(live.stale_after))
                e = self._event(live.name, "silent", "raised", reason, now, None, None, False)
                live.event = self._stamp(e)
                events.append(e)
        if not beats and not events:
            return EMPTY
        return Result((), tuple(events), tuple(beats))

    def flush(self):
        """Release every held swinging-door point (end of stream, shutdown); they come back in ``send``."""
        out = ()
        for st in self._ticking:
            if st.snap is not None:
                out = out + self._release(st)
        return Result(out) if out else EMPTY

    # -- introspection --

    def active_alarms(self):
        """The ``raised`` events still in force (threshold, health, silent), oldest first."""
        out = []
        for st in self._streams.values():
            if st.raise_event is not None:
                out.append(st.raise_event)
            if st.health_event is not None:
                out.append(st.health_event)
        for live in self._sensors.values():
            if live.event is not None:
                out.append(live.event)
        out.sort(key=lambda pair: pair[0])
        return [pair[1] for pair in out]

    def _stamp(self, event):
        """Pair a raised event with its raise order, for active_alarms (events may be any factory's objects)."""
        self._raised += 1
        return (self._raised, event)

    @property
    def counters(self):
        """Readings dropped, suppressed or compressed, and heartbeat sends, per reason (a fresh dict)."""
        return {
            "dropped_rate_limit": self._n_rate,
            "suppressed_deadband": self._n_db,
            "compressed_swinging_door": self._n_sd,
            "heartbeat": self._n_hb,
        }
