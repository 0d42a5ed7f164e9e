"""The five field scenarios (gateway/scenarios, docs/scenarios.md), each in its quick form, end to end: real agent,
store, signing, HTTP uplink and receiver on loopback; each test asserts the scenario's outcome numbers."""

import io
import json
import types

import pytest

from tools.scenarios import SCENARIOS, UnknownScenario, run_scenario

pytestmark = pytest.mark.timeout(90)


def quick(name, seed=1):
    out = io.StringIO()
    args = types.SimpleNamespace(scenario=name, quick=True, seed=seed, json=True)
    summary = run_scenario(args, out)
    printed = json.loads(out.getvalue())  # --json prints exactly one JSON object
    assert printed["scenario"] == name and printed["ok"] == summary["ok"]
    assert summary["runtime_s"] < 30, "quick form too slow"
    assert summary["ok"], summary["failed"]
    d = summary["delivery"]
    assert d["batches_missing"] == 0 and d["batches_unexpected"] == 0
    assert d["records_stored"] == d["records_committed"] > 0
    return summary


def test_cold_chain():
    s = quick("cold-chain")
    assert s["false_alarms"] == 0 and s["door_excursions_over_limit"] > 0
    assert s["alarm_sensors"] == ["cooler-C", "fridge-001", "fridge-002"]
    assert all(0 <= v <= 30 for v in s["alarm_latency_sim_s"].values())
    assert s["outage_alarm_batches"] >= 1 and s["backlog_batches_overtaken"] >= 1
    assert s["alarm_lane_violations"] == 0
    assert s["silent_events"] == ["cooler-B"]
    assert s["readings_sent"] < s["readings_in"]
    # the buzzer board (MicroPython on a pty): on at each fridge alarm within 1 s of the scenario's clock, its ack
    # within a generous real-time bound, off when the alarm cleared; once with the uplink down; its death reported
    b = s["buzzer"]
    assert [(o["on"], o["sensor"], o["state"]) for o in b["orders"]] == [
        (True, "fridge-001", "raised"), (False, "fridge-001", "cleared"), (True, "fridge-002", "raised"),
        (False, "fridge-002", "cleared")]
    assert all(0 <= o["after_event_sim_s"] <= 1.0 and o["ack_real_s"] < 5.0 for o in b["orders"])
    assert 165 * 60 <= b["orders"][2]["sim_t"] <= 195 * 60  # fridge-002's alarm fell in the 30 min outage
    assert b["board_log"] == ["buzzer=1", "buzzer=0", "buzzer=1", "buzzer=0"]
    assert b["board_counters"]["error.no_ack"] >= 1 and 0 <= b["dead_detected_real_s"] < 10
    assert [vs.split(":")[0] for _, vs in b["dead_records"]] == ["raised"]


def test_race_tracking():
    s = quick("race-tracking")
    assert s["in_order"] and s["positions_uncovered"] == 0
    assert s["worst_position_error_deg"] <= 0.00002 + 1e-6
    assert s["link_cuts"] >= 1 and s["uplink_failures"] > 0
    assert s["max_lag_up_s"] is not None and s["max_lag_up_s"] <= 6.0
    assert s["positions_sent"] < s["positions_in"] and s["reduction_pct"] > 0


def test_reserve():
    s = quick("reserve")
    a, rej = s["attacks"], s["receiver_rejections"]
    assert min(a["replays"], a["forged"], a["flipped"], a["resigned"]) > 0
    assert rej == {"bad_signature": a["flipped"] + a["resigned"], "unknown_kid": a["forged"]}
    assert s["receiver_duplicates"] == s["expected_duplicates"] >= a["replays"]
    assert s["receiver_stored"] == s["delivery"]["batches_committed"] and s["quarantined"] == 0
    assert s["intrusions_stored"] == s["intrusions"] > 0


def test_campus():
    s = quick("campus")
    assert s["badge_segments_checked"] >= 10 and s["badge_segments_wrong"] == 0
    assert s["occupancy_checks"] >= 5 and s["occupancy_wrong"] == 0 and s["guest_meeting_seen"]
    assert s["adverts_heard"] >= 20 * s["records_sent"] and s["presence_events"] > 0


def test_home_support():
    s = quick("home-support")
    assert s["battery_low"] == ["bedroom", "living"] and s["silent"] == ["bathroom", "living"]
    assert all(v > 0 for v in s["battery_warning_lead_min"].values())
    assert all(600 <= v <= 720 for v in s["silent_after_last_reading_s"].values())
    assert s["meter_readings"] > 20
    from tools.sim.radio import BluezRadio
    if BluezRadio.available():  # the test extras are installed: the adverts went through bleak and BlueZ
        assert s["ble_path"] == "bluez-mock"


def test_unknown_scenario_is_a_clear_error():
    with pytest.raises(UnknownScenario, match="one of"):
        run_scenario(types.SimpleNamespace(scenario="nope", quick=True, seed=1, json=True), io.StringIO())
    assert len(SCENARIOS) == 5
