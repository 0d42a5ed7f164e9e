"""Property tests of the rules engine (hypothesis): compression bound, no chatter, alarm bookkeeping."""

import pathlib

from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = pathlib.Path(__file__).resolve().parents[2]

from tests.support.rules_mpy_cases import R, RebuildCheck  # noqa: E402
from gateway.core import rules  # noqa: E402

ALL = {"sensor": "*", "name": "*"}
values = st.floats(min_value=-1000, max_value=1000, allow_nan=False, allow_infinity=False)
steps = st.floats(min_value=0.001, max_value=100, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    dev=st.floats(min_value=0.001, max_value=50),
    series=st.lists(st.tuples(steps, values, st.booleans()), min_size=1, max_size=80),
    heartbeat=st.one_of(st.none(), st.floats(min_value=1, max_value=500)),
)
def test_swinging_door_rebuild_stays_within_deviation(dev, series, heartbeat):
    rule = {"match": ALL, "swinging_door": dev}
    if heartbeat is not None:
        rule["heartbeat"] = heartbeat
    engine = rules.RuleEngine([rule])
    check = RebuildCheck()
    t = 0.0
    inputs = []
    for step, v, tick in series:
        t += step
        r = R("s", "temp", v, t)
        inputs.append(r)
        check.point(t, v)
        res = engine.process(r)
        kept = list(res.send)
        if tick:
            kept.extend(engine.tick(t + step / 2).heartbeat)
        for k in kept:
            check.kept(k.t, k.value)
    for k in engine.flush().send:
        check.kept(k.t, k.value)
    scale = max(abs(v) for _, v, _ in series) + dev
    assert check.done() <= dev + 1e-9 * scale
    ids = [id(r) for r in inputs]
    assert len(set(ids)) == len(ids)


@settings(max_examples=200, deadline=None)
@given(
    hys=st.floats(min_value=0.01, max_value=10),
    side=st.sampled_from(["high", "low"]),
    fractions=st.lists(st.floats(min_value=-0.999, max_value=0.999), min_size=2, max_size=60),
    delay=st.sampled_from([0, 5]),
)
def test_hysteresis_never_chatters_inside_the_band(hys, side, fractions, delay):
    level = 10.0
    engine = rules.RuleEngine([{"match": ALL, side: level, "hysteresis": hys, "delay_on": delay}])
    sign = 1 if side == "high" else -1
    events = []
    for i, f in enumerate(fractions):  # values strictly inside (level - hys, level + hys)
        events.extend(engine.process(R("s", "temp", level + sign * f * hys, float(i))).events)
    states = [e.state for e in events]
    assert states in ([], ["raised"])
    if states:
        assert engine.active_alarms() == events


@st.composite
def operations(draw):
    ops = []
    t = 0.0
    for _ in range(draw(st.integers(min_value=1, max_value=60))):
        t += draw(st.floats(min_value=0.5, max_value=400))
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            ops.append(("tick", t, None, None))
        else:
            sensor = draw(st.sampled_from(["a", "b"]))
            name = draw(st.sampled_from(["temp", "batt", "rssi"]))
            ops.append(("reading", t, sensor, name, draw(st.floats(min_value=-120, max_value=120))))
    return ops


@settings(max_examples=300, deadline=None)
@given(ops=operations(), delay=st.sampled_from([0, 30]))
def test_events_are_consistent_with_active_alarms(ops, delay):
    engine = rules.RuleEngine([
        {"match": {"sensor": "*", "name": "temp"}, "low_low": -20, "low": 0, "high": 8, "high_high": 40,
         "hysteresis": 1.5, "delay_on": delay},
        {"match": ALL, "battery_low": 20, "rssi_weak": -90, "stale_after": 600, "deadband": 0.5},
    ])
    active = {}
    for op in ops:
        res = engine.tick(op[1]) if op[0] == "tick" else engine.process(R(op[2], op[3], op[4], op[1]))
        for e in res.events:
            key = (e.sensor, e.name)
            if e.state == "raised":
                assert key not in active, "raised twice without a clear: %r" % (e,)
                active[key] = e
            else:
                assert e.state == "cleared"
                assert key in active, "cleared without a raise: %r" % (e,)
                del active[key]
        threshold = [k for k in active if k[1].startswith("alarm.")]
        assert len({k[0] for k in threshold}) == len(threshold)  # at most one threshold level per sensor/temp
    now = engine.active_alarms()
    assert sorted(map(id, now)) == sorted(map(id, active.values()))
