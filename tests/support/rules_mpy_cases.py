"""Rules-engine cases that run unchanged on CPython (via pytest) and on the real MicroPython unix port.

Under MicroPython run it as a script with ``MICROPYPATH=<repo>/gateway/core:<repo>/firmware_sim``: it imports the
engine as the top-level package ``rules`` (as a sensor node would) and prints ``OK <n>`` when every case passes,
or one ``FAIL <case>: <error>`` line per failure followed by ``FAILED <k>/<n>``.
"""

import sys

if sys.implementation.name == "micropython":
    import rules
    import fridge
else:
    from gateway.core import rules
    from firmware_sim import fridge


class R:
    """A duck-typed reading."""

    def __init__(self, sensor, name, value, t, unit=None):
        self.sensor = sensor
        self.name = name
        self.value = value
        self.t = t
        self.unit = unit

    def __repr__(self):
        return "R(%r, %r, %r, %r)" % (self.sensor, self.name, self.value, self.t)


def eq(got, want):
    if got != want:
        raise AssertionError("got %r, want %r" % (got, want))


def same(got, want):
    """Same reading objects, in order (identity, never copies)."""
    if len(got) != len(want) or any(a is not b for a, b in zip(got, want)):
        raise AssertionError("got %r, want %r" % (got, want))


def ev(e):
    return (e.sensor, e.name, e.state, e.reason, e.t, e.value, e.level, e.alarm)


def evs(result):
    return [ev(e) for e in result.events]


def rule(**opts):
    m = {"sensor": opts.pop("sensor", "*"), "name": opts.pop("name", "*")}
    opts["match"] = m
    return opts


def config_error(rules_list):
    try:
        rules.RuleEngine(rules_list)
    except ValueError as exc:
        return exc.key, str(exc)
    raise AssertionError("no ValueError for %r" % (rules_list,))


def rebuild_error(points, kept):
    """Largest |input - linear interpolation of kept points| over all input (t, v) points."""
    check = RebuildCheck()
    j = 0
    for t, v in points:
        check.point(t, v)
        while j < len(kept) and kept[j][0] <= t:
            check.kept(kept[j][0], kept[j][1])
            j += 1
    return check.worst


class RebuildCheck:
    """Streaming version: feed input points and kept points in time order; holds only points not yet covered."""

    def __init__(self):
        self.pending = []
        self.last = None
        self.worst = 0.0

    def point(self, t, v):
        self.pending.append((t, v))

    def kept(self, t1, v1):
        rest = []
        for t, v in self.pending:
            if t > t1:
                rest.append((t, v))
                continue
            if t == t1:
                err = abs(v1 - v)
            elif self.last is None:
                raise AssertionError("input point at %r before the first kept point" % (t,))
            else:
                t0, v0 = self.last
                err = abs(v0 + (v1 - v0) * (t - t0) / (t1 - t0) - v)
            if err > self.worst:
                self.worst = err
        self.pending = rest
        self.last = (t1, v1)

    def done(self):
        if self.pending:
            raise AssertionError("%d input points after the last kept point" % len(self.pending))
        return self.worst


# ---------------------------------------------------------------------------------------------- cases

def case_glob():
    g = rules.glob_match
    eq([g("*", ""), g("*", "abc"), g("a?c", "abc"), g("a?c", "ac"), g("fr*ge", "fridge"), g("fr*ge", "fridges")],
       [True, True, True, False, True, False])
    eq([g("*.temp", "x.temp"), g("a*b*c", "aXbYbZc"), g("a*b*c", "aXbYbZ"), g("??", "ab"), g("exact", "exact")],
       [True, True, False, True, True])


def case_high_immediate():
    e = rules.RuleEngine([rule(name="temp", high=8)])
    r1 = R("f1", "temp", 7.9, 0.0)
    r2 = R("f1", "temp", 8.5, 1.0)
    res = e.process(r1)
    same(res.send, [r1])
    eq(res.events, ())
    res = e.process(r2)
    same(res.send, [r2])
    eq(evs(res), [("f1", "alarm.high", "raised", "temp 8.50 above high 8.00", 1.0, 8.5, "high", True)])
    eq(evs(e.process(R("f1", "temp", 8.0, 2.0))),
       [("f1", "alarm.high", "cleared", "temp 8.00 back below high 8.00 (hysteresis 0.00)", 2.0, 8.0, "high", True)])


def case_delay_on():
    e = rules.RuleEngine([rule(high=8, delay_on=30)])
    out = []
    for t, v in ((0, 9.0), (10, 9.5), (20, 7.0), (30, 9.0), (59, 9.0), (60, 9.0), (70, 9.0)):
        out.append(evs(e.process(R("f", "temp", v, float(t)))))
    eq(out[:5], [[], [], [], [], []])
    eq(out[5], [("f", "alarm.high", "raised", "temp 9.00 above high 8.00 for 30 s", 60.0, 9.0, "high", True)])
    eq(out[6], [])


def case_escalation():
    e = rules.RuleEngine([rule(high=8, high_high=12, hysteresis=0.5, delay_on=30, deadband=0.2)])
    got = []
    for t, v in ((0, 5.0), (10, 9.1), (40, 9.1), (50, 12.5), (60, 12.6), (80, 12.6), (90, 11.0), (100, 7.6),
                 (110, 7.4)):
        got.append(evs(e.process(R("f1", "temp", v, float(t)))))
    eq(got[0:2], [[], []])
    eq(got[2], [("f1", "alarm.high", "raised", "temp 9.10 above high 8.00 for 30 s", 40.0, 9.1, "high", True)])
    eq(got[3:5], [[], []])  # high_high pending its own delay_on
    eq(got[5], [("f1", "alarm.high", "cleared", "temp 12.60 escalated to high_high", 80.0, 12.6, "high", True),
                ("f1", "alarm.high_high", "raised", "temp 12.60 above high_high 12.00 for 30 s", 80.0, 12.6,
                 "high_high", True)])
    eq(got[6], [("f1", "alarm.high_high", "cleared", "temp 11.00 back below high_high 12.00 (hysteresis 0.50)",
                 90.0, 11.0, "high_high", True),
                ("f1", "alarm.high", "raised", "temp 11.00 down from high_high, still beyond high 8.00", 90.0, 11.0,
                 "high", True)])
    eq(got[7], [])  # 7.6 > 8 - 0.5: still high
    eq(got[8], [("f1", "alarm.high", "cleared", "temp 7.40 back below high 8.00 (hysteresis 0.50)", 110.0, 7.4,
                 "high", True)])
    eq(e.active_alarms(), [])


def case_low_side_hysteresis():
    e = rules.RuleEngine([rule(low=2, low_low=0, hysteresis=0.5)])
    got = [evs(e.process(R("s", "temp", v, float(i)))) for i, v in enumerate((1.5, -0.5, 0.3, 0.6, 2.4, 2.5))]
    eq(got[0], [("s", "alarm.low", "raised", "temp 1.50 below low 2.00", 0.0, 1.5, "low", True)])
    eq(got[1], [("s", "alarm.low", "cleared", "temp -0.50 escalated to low_low", 1.0, -0.5, "low", True),
                ("s", "alarm.low_low", "raised", "temp -0.50 below low_low 0.00", 1.0, -0.5, "low_low", True)])
    eq(got[2], [])
    eq(got[3], [("s", "alarm.low_low", "cleared", "temp 0.60 back above low_low 0.00 (hysteresis 0.50)", 3.0, 0.6,
                 "low_low", True),
                ("s", "alarm.low", "raised", "temp 0.60 down from low_low, still beyond low 2.00", 3.0, 0.6, "low",
                 True)])
    eq(got[4], [])
    eq(got[5], [("s", "alarm.low", "cleared", "temp 2.50 back above low 2.00 (hysteresis 0.50)", 5.0, 2.5, "low",
                 True)])


def case_hysteresis_no_chatter():
    e = rules.RuleEngine([rule(high=8, hysteresis=0.5)])
    names = []
    for i, v in enumerate((8.1, 7.9, 8.2, 7.6, 8.05, 7.51)):
        names.extend([(x[1], x[2]) for x in evs(e.process(R("s", "temp", v, float(i))))])
    eq(names, [("alarm.high", "raised")])
    eq([ev(x)[1] for x in e.active_alarms()], ["alarm.high"])


def case_jump_across():
    e = rules.RuleEngine([rule(low=2, high=8, hysteresis=0.5)])
    e.process(R("s", "temp", 9.0, 0.0))
    eq([(x[1], x[2]) for x in evs(e.process(R("s", "temp", 1.0, 1.0)))],
       [("alarm.high", "cleared"), ("alarm.low", "raised")])


def case_deadband_abs():
    e = rules.RuleEngine([rule(deadband=0.5)])
    rs = [R("s", "temp", v, float(i)) for i, v in enumerate((5.0, 5.5, 5.6, 5.2, 5.0))]
    sent = []
    for r in rs:
        sent.extend(e.process(r).send)
    same(sent, [rs[0], rs[2], rs[4]])
    eq(e.counters["suppressed_deadband"], 2)


def case_deadband_pct():
    e = rules.RuleEngine([rule(deadband_pct=10)])
    rs = [R("s", "temp", v, float(i)) for i, v in enumerate((20.0, 21.9, 22.1, 24.3, 19.8))]
    sent = []
    for r in rs:
        sent.extend(e.process(r).send)
    same(sent, [rs[0], rs[2], rs[4]])


def case_empty_shared():
    e = rules.RuleEngine([rule(deadband=1)])
    e.process(R("s", "temp", 1.0, 0.0))
    res = e.process(R("s", "temp", 1.5, 1.0))
    eq(res is rules.EMPTY, True)
    eq(bool(res), False)
    eq((res.send, res.events, res.heartbeat), ((), (), ()))


def case_heartbeat_tick():
    e = rules.RuleEngine([rule(deadband=0.5, heartbeat=60)])
    rs = [R("s", "temp", v, t) for t, v in ((0.0, 5.0), (10.0, 5.1), (20.0, 5.2), (140.0, 5.3))]
    same(e.process(rs[0]).send, [rs[0]])
    eq(e.process(rs[1]) is rules.EMPTY, True)
    eq(e.process(rs[2]) is rules.EMPTY, True)
    eq(e.tick(59.0) is rules.EMPTY, True)
    res = e.tick(60.0)
    same(res.heartbeat, [rs[2]])  # the latest real reading, with its own time 20.0
    eq((res.send, res.events, res.heartbeat[0].t), ((), (), 20.0))
    eq(e.tick(100.0) is rules.EMPTY, True)
    eq(e.tick(130.0) is rules.EMPTY, True)  # latest already sent: nothing new, no copies
    res = e.process(rs[3])  # within the deadband, but the heartbeat is due (140 - 60 >= 60)
    same(res.send, [rs[3]])
    eq(e.counters["heartbeat"], 2)


def case_stale():
    e = rules.RuleEngine([rule(sensor="a*", stale_after=300)])
    e.process(R("a1", "temp", 5.0, 0.0))
    e.process(R("b1", "temp", 5.0, 0.0))  # no stale rule for b1
    eq(e.tick(299.0) is rules.EMPTY, True)
    res = e.tick(300.0)
    eq(evs(res), [("a1", "silent", "raised", "no reading for 300 s (stale_after 300 s)", 300.0, None, None, False)])
    eq(e.tick(400.0) is rules.EMPTY, True)
    eq([ev(x)[1] for x in e.active_alarms()], ["silent"])
    r = R("a1", "hum", 50.0, 450.0)
    res = e.process(r)
    same(res.send, [r])
    eq(evs(res), [("a1", "silent", "cleared", "reading again after 450 s", 450.0, None, None, False)])
    eq(e.active_alarms(), [])


def case_battery():
    e = rules.RuleEngine([rule(battery_low=20)])
    got = []
    for i, v in enumerate((25.0, 19.5, 20.5, 19.0, 21.9, 22.0)):
        got.append(evs(e.process(R("s", "batt", v, float(i)))))
    eq(got[0], [])
    eq(got[1], [("s", "battery_low", "raised", "batt 19.50 below 20.00", 1.0, 19.5, None, False)])
    eq(got[2:5], [[], [], []])
    eq(got[5], [("s", "battery_low", "cleared", "batt 22.00 back above 20.00 (hysteresis 2.00)", 5.0, 22.0, None,
                 False)])
    eq(evs(e.process(R("s", "temp", 3.0, 6.0))), [])  # battery_low applies to batt/battery streams only


def case_rssi():
    e = rules.RuleEngine([rule(rssi_weak=-90, rssi_hysteresis=5)])
    got = [evs(e.process(R("s", "rssi", v, float(i)))) for i, v in enumerate((-95, -88, -85))]
    eq(got[0], [("s", "weak_signal", "raised", "rssi -95.00 below -90.00", 0.0, -95, None, False)])
    eq(got[1], [])
    eq(got[2], [("s", "weak_signal", "cleared", "rssi -85.00 back above -90.00 (hysteresis 5.00)", 2.0, -85, None,
                 False)])


def case_rate_limit():
    e = rules.RuleEngine([rule(rate_limit=1, burst=2)])
    rs = [R("s", "temp", float(i), t) for i, t in enumerate((0.0, 0.1, 0.2, 0.3, 1.3, 1.4))]
    sent = []
    for r in rs:
        sent.extend(e.process(r).send)
    same(sent, [rs[0], rs[1], rs[4]])
    eq(e.counters["dropped_rate_limit"], 3)
    other = R("s", "hum", 50.0, 0.3)  # its own bucket
    same(e.process(other).send, [other])


def case_swinging_door():
    e = rules.RuleEngine([rule(swinging_door=1.0)])
    pts = ((0.0, 0.0), (1.0, 0.5), (2.0, 1.0), (3.0, 1.5), (4.0, 3.5), (5.0, 3.5), (6.0, 0.0))
    rs = [R("s", "temp", v, t) for t, v in pts]
    per = [list(e.process(r).send) for r in rs]
    eq([len(p) for p in per], [1, 0, 0, 0, 1, 0, 1])
    same(per[0] + per[4] + per[6], [rs[0], rs[3], rs[5]])
    res = e.flush()
    same(res.send, [rs[6]])
    eq(e.flush() is rules.EMPTY, True)
    eq(e.counters["compressed_swinging_door"], 3)
    kept = [(r.t, r.value) for r in (rs[0], rs[3], rs[5], rs[6])]
    eq(rebuild_error(pts, kept) <= 1.0, True)


def case_swinging_door_heartbeat():
    e = rules.RuleEngine([rule(swinging_door=1.0, heartbeat=100)])
    rs = [R("s", "temp", v, t) for t, v in ((0.0, 0.0), (10.0, 0.1), (110.0, 0.2))]
    same(e.process(rs[0]).send, [rs[0]])
    eq(e.process(rs[1]) is rules.EMPTY, True)
    eq(e.tick(50.0) is rules.EMPTY, True)
    same(e.tick(100.0).heartbeat, [rs[1]])  # the held point is released, not duplicated
    eq(e.process(rs[2]) is rules.EMPTY, True)
    same(e.flush().send, [rs[2]])


def case_passthrough():
    e = rules.RuleEngine([rule(deadband=5, high=1, swinging_door=1)])
    rs = [R("s", "door", "open", 0.0), R("s", "door", "open", 1.0), R("s", "flag", True, 2.0),
          R("s", "temp", float("nan"), 3.0)]
    for r in rs:
        res = e.process(r)
        same(res.send, [r])
        eq(res.events, ())


def case_config_errors():
    ok = {"sensor": "*", "name": "*"}
    eq(config_error([{"match": ok, "hihg": 5}])[0], "rules[0].hihg")
    eq(config_error([{"match": ok, "high": "abc"}])[0], "rules[0].high")
    eq(config_error([{"match": ok, "high": True}])[0], "rules[0].high")
    eq(config_error([{"match": ok, "low": 5, "high": 3}]),
       ("rules[0].high", "rules[0].high: must be above low (5), got 3"))
    eq(config_error([{"match": ok, "deadband": 1, "deadband_pct": 2}])[0], "rules[0].deadband_pct")
    eq(config_error([{"high": 1}])[0], "rules[0].match")
    eq(config_error([{"match": ok, "high": 1}, {"match": ok, "heartbeat": 0}])[0], "rules[1].heartbeat")
    eq(config_error([{"match": {"sensor": 5}, "high": 1}])[0], "rules[0].match.sensor")
    eq(config_error([{"match": ok, "high": 1, "hysteresis": -1}])[0], "rules[0].hysteresis")
    eq(config_error([{"match": ok, "burst": 3}])[0], "rules[0].burst")
    eq(config_error([{"match": ok, "swinging_door": float("inf")}])[0], "rules[0].swinging_door")
    eq(config_error({"match": ok})[0], "rules")
    eq(config_error([{"match": ok}])[0], "rules[0]")


def case_merge_per_group():
    e = rules.RuleEngine([
        rule(sensor="fridge*", name="temp", high=8),
        rule(high=30, deadband=0.5, stale_after=600),
    ])
    g = e.resolve("fridge1", "temp")
    eq((g["thresholds"]["high"], g["deadband"], g["stale"]), (8, {"deadband": 0.5}, {"stale_after": 600}))
    eq(e.resolve("room", "temp")["thresholds"]["high"], 30)
    eq(len(evs(e.process(R("fridge1", "temp", 9.0, 0.0)))), 1)
    eq(len(evs(e.process(R("room", "temp", 9.0, 0.0)))), 0)


def case_event_factory():
    e = rules.RuleEngine([rule(high=8)], event_factory=lambda *a: a)
    res = e.process(R("s", "temp", 9.0, 5.0))
    eq(res.events, (("s", "alarm.high", "raised", "temp 9.00 above high 8.00", 5.0, 9.0, "high", True),))
    eq(e.active_alarms()[0] is res.events[0], True)


def case_active_alarms_identity():
    e = rules.RuleEngine([rule(high=8, high_high=12)])
    e.process(R("s", "temp", 9.0, 0.0))
    res = e.process(R("s", "temp", 13.0, 1.0))
    eq(len(e.active_alarms()), 1)
    eq(e.active_alarms()[0] is res.events[1], True)


def case_fridge_generator():
    a = list(fridge.samples(seed=3, seconds=600))
    b = list(fridge.samples(seed=3, seconds=600))
    eq(a, b)
    eq(len(a), 600)
    eq(a[0][0], 0.0)
    eq(a[-1][0], 599.0)
    eq(all(abs(v * 100 - round(v * 100)) < 1e-6 for _, v in a), True)
    eq(list(fridge.samples(seed=4, seconds=600)) != a, True)


def case_fridge_swinging_door_ratio():
    # Two hours, checked as a stream so MicroPython's default heap copes; the full day is in tests/unit/test_rules.py.
    e = rules.RuleEngine([rule(swinging_door=0.1)])
    check = RebuildCheck()
    n = 0
    kept = 0
    for t, v in fridge.samples(seed=1, seconds=7200):
        n += 1
        check.point(t, v)
        for r in e.process(R("fridge", "temp", v, t)).send:
            kept += 1
            check.kept(r.t, r.value)
    for r in e.flush().send:
        kept += 1
        check.kept(r.t, r.value)
    eq(n >= 20 * kept, True)
    eq(check.done() <= 0.1 + 1e-9, True)


CASES = [
    case_glob, case_high_immediate, case_delay_on, case_escalation, case_low_side_hysteresis,
    case_hysteresis_no_chatter, case_jump_across, case_deadband_abs, case_deadband_pct, case_empty_shared,
    case_heartbeat_tick, case_stale, case_battery, case_rssi, case_rate_limit, case_swinging_door,
    case_swinging_door_heartbeat, case_passthrough, case_config_errors, case_merge_per_group, case_event_factory,
    case_active_alarms_identity, case_fridge_generator, case_fridge_swinging_door_ratio,
]


def main():
    failed = 0
    for case in CASES:
        try:
            case()
        except Exception as exc:  # report every case, then fail as a whole
            failed += 1
            print("FAIL %s: %s: %s" % (case.__name__, type(exc).__name__, exc))
    if failed:
        print("FAILED %d/%d" % (failed, len(CASES)))
        sys.exit(1)
    print("OK %d" % len(CASES))


if __name__ == "__main__":
    main()
