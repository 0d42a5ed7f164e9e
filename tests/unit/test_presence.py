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


# -- the product feature: [presence] config, the stage in the pipeline, privacy -----------------------------------
import types

from gateway.adapters import keys
from gateway.app.config import loads
from gateway.app.service import build_rules
from gateway.core import wire
from gateway.core.clock import FakeClock
from gateway.core.errors import ConfigError
from gateway.core.pipeline import Pipeline
from gateway.core.presence import PresenceStage

GW = "gw-site"
KEY = keys.SigningKey.from_seed(bytes(range(32)))
TRUST = keys.TrustStore({"keys": [KEY.jwk(GW)]})
BADGES = ["C4:7C:8D:6A:00:%02X" % i for i in range(4)]  # unaliased beacons: their MACs are their ids
SITE = """
[gateway]
id = "%s"

[presence]
mode = "%s"
alpha = 1.0
timeout_s = 30
report_s = 60

[[presence.zones]]
name = "lab"
beacons = [%s]
sensors = ["pir-lab"]
enter_dbm = -65
leave_dbm = -75

[[presence.zones]]
name = "far"
gateway = "gw-other"
beacons = ["tag-z"]
"""


def site(mode):
    return loads(SITE % (GW, mode, ", ".join('"%s"' % b for b in BADGES)), "site.toml")


def run_site(cfg):
    """A day in the lab through the agent's pipeline (signed batches out); returns every record that left."""
    stage = build_rules(cfg)
    assert isinstance(stage, PresenceStage)
    clock = FakeClock(mono=100.0, wall=1_750_000_000.0)
    pipe = Pipeline(gw=GW, boot=1, signer=wire.Signer(KEY), clock=clock, rules=stage, health_interval=1e9,
                    batch=types.SimpleNamespace(max_readings=50, max_age_s=5.0, time_quantum_s=0.01))
    batches = []
    t = 100.0
    for step in range(200):
        t += 1.0
        for i, badge in enumerate(BADGES):
            if step < 50 * (i + 1):  # badge i stays 50*(i+1) s, then goes quiet: it times out
                batches += pipe.accept(Reading(badge, "rssi", -55 - i, "dBm", t), t)
                batches += pipe.accept(Reading(badge, "batt", 90, "%EL", t), t)
        if step % 20 == 0:
            batches += pipe.accept(Reading("pir-lab", "occupancy", step < 100, None, t), t)
            batches += pipe.accept(Reading("pir-lab", "temp", 21.5, "Cel", t), t)
        batches += pipe.tick(t)
    batches += pipe.flush(t)
    return [r for b in batches for r in wire.verify(b.data, TRUST).records], b"".join(b.data for b in batches)


def test_counts_mode_sends_no_address_in_any_record():
    records, raw = run_site(site("counts"))
    for r in records:
        text = " ".join(str(v) for v in r.values())
        assert not any(b in text or b.replace(":", "") in text for b in BADGES), r
        if "pir-lab" in text:  # the occupancy sensor's own other readings travel, as any fixed sensor's
            assert r["n"] == GW + "/pir-lab/temp", r
    for b in BADGES:
        assert b.encode() not in raw  # not in the signed bytes either
    counts = [(r["t"], r["v"]) for r in records if r["n"] == GW + "/lab/count"]
    assert max(v for _, v in counts) == 4 and counts[-1][1] == 1  # all four came, three timed out
    events = [r["vs"] for r in records if r["n"] == GW + "/lab/presence"]
    assert events[0].startswith("raised: a beacon entered; 1 present")
    assert any(e.startswith("info: a beacon not heard for 30 s; 3 present") for e in events)
    assert not any(r["n"].endswith(("/rssi", "/batt")) for r in records)  # a badge's battery would name it
    assert [r["v"] for r in records if r["n"] == GW + "/pir-lab/temp"]  # not a beacon: it travels
    assert not any(r["n"].startswith(GW + "/far/") for r in records)  # another gateway's zone


def test_addresses_mode_names_the_beacons():
    records, _ = run_site(site("addresses"))
    events = [r["vs"] for r in records if r["n"] == GW + "/lab/presence"]
    assert events[0] == "raised: %s entered; 1 present" % BADGES[0]
    assert "raised: pir-lab detects occupancy; 1 present" not in events  # the lab was already occupied
    assert any(BADGES[2] + " not heard for 30 s" in e for e in events)
    assert {r["n"] for r in records if r["n"].endswith("/batt")} == {"%s/%s/batt" % (GW, b) for b in BADGES}
    assert not any(r["n"].endswith("/rssi") for r in records)


def test_counts_follow_changes_and_repeat_every_report_s():
    stage = build_rules(site("counts"))
    res = stage.process(rssi(BADGES[0], -50, 10.0))
    assert [(r.sensor, r.name, r.value) for r in res.send] == [("lab", "count", 1)] and res.events[0].value == 1
    assert stage.process(rssi(BADGES[0], -50, 11.0)).send == ()  # no change, no record
    first = stage.tick(12.0)
    assert [(r.sensor, r.name, r.value) for r in first.send] == [("lab", "count", 1)]
    stage.process(rssi(BADGES[0], -50, 70.0))
    assert not stage.tick(71.0).send
    assert [(r.name, r.value) for r in stage.tick(72.0).send] == [("count", 1)]
    assert stage.process(Reading(BADGES[1], "batt", 80, "%EL", 73.0)).send == ()  # counts mode: withheld
    assert stage.counters == {"consumed": 3, "withheld": 1}


def test_hysteresis_and_zone_timeout_through_the_stage():
    cfg = loads(SITE.replace("timeout_s = 30\n", "timeout_s = 30\n", 1).replace(
        'leave_dbm = -75\n', 'leave_dbm = -75\ntimeout_s = 5\n', 1) % (GW, "counts", '"b1"'), "site.toml")
    stage = build_rules(cfg)
    seen = []
    for t, v in enumerate([-70, -64, -70, -74, -66, -76, -68, -64]):  # alpha 1: no smoothing
        seen += [(e.state, e.value) for e in stage.process(rssi("b1", v, float(t))).events]
    assert seen == [("raised", 1), ("cleared", 0), ("raised", 1)]  # enters above -65, leaves below -75 only
    assert stage.tick(11.9).events == ()
    assert [(e.state, e.value) for e in stage.tick(12.0).events] == [("cleared", 0)]  # the zone's 5 s


@pytest.mark.parametrize("change,key,says", [
    ('mode = "counts"', "presence.mode", "counts, addresses"),
    ("leave_dbm = -75", "presence.zones[0].leave_dbm", "must be below enter_dbm"),
    ('name = "lab"', "presence.zones[0].name", "short identifier"),
    ("alpha = 1.0", "presence.alpha", "greater than 0"),
    ('sensors = ["pir-lab"]', "presence.zones[0].sensors", "list of sensor ids"),
    ("report_s = 60", "presence.report", "did you mean 'report_s'"),
])
def test_presence_config_errors_name_the_key(change, key, says):
    bad = {'mode = "counts"': 'mode = "names"', "leave_dbm = -75": "leave_dbm = -60", 'name = "lab"': 'name = "a b"',
           "alpha = 1.0": "alpha = 0", 'sensors = ["pir-lab"]': 'sensors = "pir-lab"',
           "report_s = 60": "report = 60"}[change]
    text = (SITE % (GW, "counts", '"b1"')).replace(change, bad, 1)
    with pytest.raises(ConfigError, match=says) as exc:
        loads(text, "site.toml")
    assert exc.value.key == key and "site.toml" in str(exc.value)
