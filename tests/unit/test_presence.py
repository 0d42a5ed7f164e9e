"""Presence per zone: RSSI smoothing with enter/leave hysteresis, occupancy sensors, timeouts."""

import random

import pytest

from gateway.core.model import Reading
from gateway.core.presence import PresenceTracker

ZONES = [{"name": "lab-1", "beacons": ["tag-a", "tag-b"], "sensors": ["pir-1"], "enter_dbm": -65, "leave_dbm": -75}]


def rssi(tag, value, t):
    return Reading(tag, "rssi", value, "dBm", t)


def test_enter_and_leave_with_hysteresis():
    p = PresenceTracker(ZONES, alpha=1.0)
    assert p.observe(rssi("tag-a", -70, 0)) == []  # between leave and enter: not present yet
    ev = p.observe(rssi("tag-a", -60, 1))
    assert [(e.sensor, e.name, e.state, e.value) for e in ev] == [("lab-1", "presence", "raised", 1)]
    assert p.observe(rssi("tag-a", -72, 2)) == []  # inside the band: stays
    ev = p.observe(rssi("tag-b", -50, 3))
    assert [(e.state, e.value) for e in ev] == [("info", 2)] and "tag-b entered" in ev[0].reason
    ev = p.observe(rssi("tag-a", -80, 4))
    assert [(e.state, e.value) for e in ev] == [("info", 1)]
    ev = p.observe(rssi("tag-b", -90, 5))
    assert [(e.state, e.value) for e in ev] == [("cleared", 0)]


def test_smoothing_rides_out_single_spikes():
    p = PresenceTracker(ZONES, alpha=0.2)
    events = []
    for i in range(20):
        events += p.observe(rssi("tag-a", -85, i))
    events += p.observe(rssi("tag-a", -40, 20))  # one strong advert (a reflection) is not an entry
    assert events == []


def test_no_chatter_for_a_beacon_on_the_edge():
    rng = random.Random(4)
    p = PresenceTracker(ZONES, alpha=0.3)
    events = []
    for i in range(2000):
        events += p.observe(rssi("tag-a", -60 + rng.uniform(-4, 4), i))
    for i in range(2000, 4000):  # wobbling around -70: inside the -65/-75 band
        events += p.observe(rssi("tag-a", -70 + rng.uniform(-3, 3), i))
    assert [e.state for e in events] == ["raised"]


def test_timeout_and_occupancy_sensor():
    p = PresenceTracker(ZONES, alpha=1.0, timeout_s=30)
    p.observe(rssi("tag-a", -50, 0))
    assert p.tick(29) == []
    ev = p.tick(30)
    assert [(e.state, e.t) for e in ev] == [("cleared", 30)] and "not heard" in ev[0].reason
    ev = p.observe(Reading("pir-1", "occupancy", True, None, 40))
    assert [e.state for e in ev] == ["raised"]
    assert p.observe(Reading("pir-1", "occupancy", True, None, 41)) == []
    assert [e.state for e in p.observe(Reading("pir-1", "occupancy", False, None, 50))] == ["cleared"]


def test_config_errors():
    with pytest.raises(ValueError, match="leave_dbm must be below"):
        PresenceTracker([{"name": "z", "enter_dbm": -80, "leave_dbm": -70}])
    with pytest.raises(ValueError, match="alpha"):
        PresenceTracker(ZONES, alpha=0)
