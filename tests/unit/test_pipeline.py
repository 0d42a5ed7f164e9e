"""gateway.core.pipeline: items and the time in, sealed batches out. Pure: a fake clock, no loop, no sleeps."""

import math
import types

import pytest

from gateway.adapters import keys
from gateway.core import wire
from gateway.core.clock import FakeClock
from gateway.core.model import Event, Reading
from gateway.core.pipeline import HEALTH_SENSOR, Pipeline
from gateway.core.rules import RuleEngine

GW = "gw-pipe"
KEY = keys.SigningKey.from_seed(bytes(range(32)))
TRUST = keys.TrustStore({"keys": [KEY.jwk(GW)]})


def make(rules=None, max_readings=3, max_age_s=10.0, health_interval=1e9, health_values=None):
    clock = FakeClock(mono=100.0, wall=1_750_000_000.0)
    pipe = Pipeline(gw=GW, boot=7, signer=wire.Signer(KEY), clock=clock, rules=rules,
                    batch=types.SimpleNamespace(max_readings=max_readings, max_age_s=max_age_s, time_quantum_s=0.01),
                    health_interval=health_interval, health_values=health_values)
    return pipe, clock


def records(batch):
    return wire.verify(batch.data, TRUST).records


def names(batch):
    return [r["n"].split("/", 1)[1] for r in records(batch)]


def temp(v, t=100.0, sensor="s1"):
    return Reading(sensor, "temp", v, "Cel", t)


def test_first_reading_is_sealed_at_once_then_batches_fill_to_max_readings():
    pipe, clock = make(max_readings=3)
    first = pipe.accept(temp(1.0), 100.0)
    assert len(first) == 1 and first[0].readings == 2  # the reading and the health record (first cut)
    assert (first[0].boot, first[0].seq) == (7, 0)
    assert pipe.accept(temp(2.0, 101.0), 101.0) == ()
    assert pipe.accept(temp(3.0, 102.0), 102.0) == ()
    full = pipe.accept(temp(4.0, 103.0), 103.0)
    assert [b.seq for b in full] == [1] and full[0].readings == 3
    out = wire.verify(full[0].data, TRUST)
    assert out.gw == GW and out.boot == 7 and out.seq == 1
    assert [r["v"] for r in out.records] == [2.0, 3.0, 4.0]


def test_tick_cuts_at_max_age_and_not_before():
    pipe, _ = make(max_readings=100, max_age_s=10.0)
    pipe.accept(temp(1.0), 100.0)  # first cut
    assert pipe.accept(temp(2.0, 101.0), 101.0) == ()
    assert pipe.tick(110.9) == ()
    due = pipe.tick(111.0)
    assert len(due) == 1 and names(due[0]) == ["s1/temp"]
    assert pipe.tick(200.0) == ()  # nothing held: nothing sealed


def test_alarm_is_sealed_at_once_in_its_own_priority_batch():
    engine = RuleEngine([{"match": {"name": "temp"}, "high": 8.0}], event_factory=Event)
    pipe, _ = make(rules=engine, max_readings=100)
    pipe.accept(temp(4.0), 100.0)
    assert pipe.accept(temp(5.0, 101.0), 101.0) == ()
    out = pipe.accept(temp(9.5, 102.0), 102.0)
    alarms = [b for b in out if b.priority]
    assert len(alarms) == 1 and alarms[0].events == 1 and alarms[0].readings == 0
    assert pipe.counters["alarms"] == 1
    assert any("alarm" in n for n in names(alarms[0]))
    # the readings around it still wait for their own cut
    assert len(pipe.batcher) == 2


def test_heartbeat_comes_from_tick():
    engine = RuleEngine([{"match": {"name": "temp"}, "deadband": 1.0, "heartbeat": 60.0}], event_factory=Event)
    pipe, _ = make(rules=engine, max_readings=100, max_age_s=1.0)
    pipe.accept(temp(4.0), 100.0)
    pipe.accept(temp(4.1, 101.0), 101.0)  # inside the deadband: held back
    assert pipe.tick(102.0) == ()
    assert pipe.tick(159.0) == ()
    assert pipe.tick(161.0) == ()  # heartbeat due: the held reading joins the batcher with its own time
    sealed = pipe.tick(162.5)  # and is sealed at max_age
    got = [r for b in sealed for r in records(b) if r["n"].endswith("s1/temp")]
    assert [r["v"] for r in got] == [4.1]
    assert got[0]["t"] == pytest.approx(101.0 + pipe.timebase.offset, abs=0.01)


def test_health_records_report_changed_counters_only():
    values = {"store.dropped_batches": 0, "dropped_batches": 2, "accepted_batches": 9}
    pipe, _ = make(max_readings=100, health_interval=30.0, health_values=lambda: dict(values))
    first = pipe.accept(temp(1.0), 100.0)[0]
    health = {n.split("/", 1)[1]: r["v"] for n, r in ((r["n"], r) for r in records(first)) if HEALTH_SENSOR in n}
    assert health == {"health/store.dropped_batches": 0, "health/dropped_batches": 2,
                      "health/readings_bad_value": 0}  # accepted_batches is not a health counter
    pipe.accept(temp(2.0, 101.0), 101.0)
    assert not [n for n in names(pipe.flush(110.0)[0]) if n.startswith(HEALTH_SENSOR)]  # within the interval
    values["dropped_batches"] = 5
    pipe.accept(temp(3.0, 131.0), 131.0)
    later = pipe.flush(131.0)[0]
    assert [n for n in names(later) if n.startswith(HEALTH_SENSOR)] == ["health/dropped_batches"]


@pytest.mark.parametrize("value, unit", [(math.inf, "Cel"), (math.nan, "Cel"), (-math.inf, None), (1 << 63, None),
                                         (-(1 << 63) - 1, "W"), ("text", "Cel"), (b"\x00", "V"), (True, "Cel"),
                                         (None, None), ([1], None)])
def test_bad_values_are_dropped_and_counted(value, unit):
    pipe, _ = make()
    pipe.first_cut = True
    assert pipe.accept(Reading("s1", "x", value, unit, 100.0), 100.0) == ()
    assert pipe.counters["readings_bad_value"] == 1 and len(pipe.batcher) == 0


def test_good_edge_values_pass():
    pipe, _ = make(max_readings=100)
    pipe.first_cut = True
    for value, unit in [((1 << 63) - 1, None), (-(1 << 63), "W"), ("on", None), (False, None), (-0.0, "Cel")]:
        pipe.accept(Reading("s1", "x", value, unit, 100.0), 100.0)
    assert pipe.counters["readings_bad_value"] == 0 and len(pipe.batcher) == 5


def test_not_an_item_is_counted_not_raised():
    pipe, _ = make()
    assert pipe.accept(object(), 100.0) == ()
    assert pipe.counters["emit_bad_type"] == 1


def test_flush_releases_held_points_and_seals_the_rest():
    engine = RuleEngine([{"match": {"name": "temp"}, "swinging_door": 0.5}], event_factory=Event)
    pipe, _ = make(rules=engine, max_readings=100)
    for i, v in enumerate([1.0, 1.1, 1.2, 1.3]):
        pipe.accept(temp(v, 100.0 + i), 100.0 + i)
    out = pipe.flush(104.0)
    assert len(out) == 1
    got = [r["v"] for r in records(out[0]) if r["n"].endswith("s1/temp")]
    assert got[-1] == 1.3  # the held point is released by flush
    assert pipe.flush(105.0) == ()


def test_sequence_numbers_run_on_and_times_use_the_clock_offset():
    pipe, clock = make(max_readings=1)
    out = []
    for i in range(4):
        out += pipe.accept(temp(float(i), 100.0 + i), 100.0 + i)
    assert [b.seq for b in out] == [0, 1, 2, 3]
    r = [x for x in records(out[2]) if x["n"].endswith("s1/temp")][0]
    assert r["t"] == pytest.approx(102.0 + clock.offset, abs=0.01)
    assert out[2].created == clock.wall()
