"""The read API's pure parts: the attention ranking, thresholds read from alarm reasons, names split, and the
query-string checks every endpoint goes through (hostile parameters are typed 4xx, never an exception)."""

import pytest

from backend.readapi import Attention, rank, split, thresholds_of
from backend.readhttp import ApiAccess, ApiError, Params


def sensor(name, readings=None, events=(), last_seen=1000.0, battery=None, signal=None, thresholds=None):
    return {"sensor": name, "last_seen": last_seen, "readings": readings or {}, "battery": battery,
            "signal": signal, "thresholds": thresholds or {},
            "open_events": [{"event": e, "t": last_seen, "reason": r} for e, r in events]}


def kinds(items):
    return {i["sensor"]: [r["kind"] for r in i["reasons"]] for i in items}


def test_rank_names_each_kind_of_trouble_and_orders_by_weight():
    sensors = [
        sensor("ok", {"temp": {"t": 1000, "u": "Cel", "v": 5.0}}, battery={"t": 1000, "u": "%EL", "v": 90}),
        sensor("quiet", last_seen=1000.0 - 3600),                                   # silent by age
        sensor("told-silent", events=[("silent", "no reading for 600 s")]),        # silent by its gateway
        sensor("low", battery={"t": 1000, "u": "%EL", "v": 12}),
        sensor("weak", signal={"t": 1000, "u": "dBm", "v": -95}),
        sensor("hot", {"temp": {"t": 1000, "u": "Cel", "v": 9.0}}, events=[("alarm.high", "temp 9.00 above high 8.00")],
               thresholds={"temp": {"high": 8.0}}),
        sensor("broken", {"temp": {"t": 1000, "u": "Cel", "v": -300.0}}),
        sensor("warming", {"temp": {"t": 1000, "u": "Cel", "v": 7.5}}, thresholds={"temp": {"low": 2.0, "high": 8.0}}),
        sensor("cold-ok", {"temp": {"t": 1000, "u": "Cel", "v": 4.0}}, thresholds={"temp": {"low": 2.0, "high": 8.0}}),
    ]
    items = rank("gw", sensors, 1000.0, Attention(silent_after_s=1800))
    assert kinds(items) == {"quiet": ["silent"], "told-silent": ["silent"], "low": ["battery_low"],
                            "weak": ["weak_signal"], "hot": ["alarm"], "broken": ["out_of_range"],
                            "warming": ["drifting"]}
    scores = {i["sensor"]: i["score"] for i in items}
    assert scores["quiet"] > scores["hot"] > scores["low"] > scores["broken"] > scores["weak"] > scores["warming"]
    assert "60 min" in items[0]["reasons"][0]["text"]  # how long, in words a support team reads
    # the limits are parameters: a lower battery limit, a longer silence
    relaxed = rank("gw", sensors, 1000.0, Attention(silent_after_s=7200, battery_below=10, rssi_below=-100))
    assert {"quiet", "low", "weak"}.isdisjoint(kinds(relaxed))


def test_drifting_is_measured_against_the_band_or_the_threshold():
    near = {"temp": {"t": 0, "u": "Cel", "v": 2.5}}
    band = {"temp": {"low": 2.0, "high": 8.0}}  # 10 % of a 6-degree band: within 0.6 of a limit
    assert kinds(rank("g", [sensor("a", near, thresholds=band)], 0, Attention())) == {"a": ["drifting"]}
    assert "near low 2" in rank("g", [sensor("a", near, thresholds=band)], 0, Attention())[0]["reasons"][0]["text"]
    far = {"temp": {"t": 0, "u": "Cel", "v": 2.7}}
    assert rank("g", [sensor("a", far, thresholds=band)], 0, Attention()) == []
    beyond = {"temp": {"t": 0, "u": "Cel", "v": -20.5}}
    only_low = {"temp": {"low_low": -18.0}}  # one threshold: 10 % of its size
    assert "beyond low_low -18" in rank("g", [sensor("f", beyond, thresholds=only_low)], 0,
                                        Attention())[0]["reasons"][0]["text"]


def test_thresholds_come_from_what_the_rules_engine_writes():
    assert thresholds_of(["temp 8.50 above high 8.00", "temp 7.50 back below high 8.00 (hysteresis 0.50)",
                          "temp -19.00 below low_low -18.00 for 300 s", "temp 9.00 escalated to high_high",
                          "temp 9.10 down from high_high, still beyond high 8.50"]) == {"high": 8.5, "low_low": -18.0}
    assert thresholds_of(["", None, "no number here"]) == {}


def test_split_takes_the_gateway_prefix_off():
    assert split("gw-1", "gw-1/a4:c1:38:0b:5e:ed/temp") == ("a4:c1:38:0b:5e:ed", "temp")
    assert split("gw-1", "gw-1/health/board1.reopen") == ("health", "board1.reopen")
    assert split("gw-1", "other/x/y") == ("other/x", "y") and split("gw-1", "lonely") == ("", "lonely")


@pytest.mark.parametrize("query,status,reason", [
    ("a=1&a=2", 400, "repeated_parameter"),
    ("zzz=1", 400, "unknown_parameter"),
    ("a=%ff%fe", 400, "bad_query"),
    ("a=" + "9" * 3000, 414, "query_too_long"),
    ("&".join("a%d=1" % i for i in range(17)), 400, "bad_query"),  # over 16 fields
])
def test_query_strings_that_are_refused(query, status, reason):
    with pytest.raises(ApiError) as info:
        Params(query, ("a", "b"))
    assert (info.value.status, info.value.reason) == (status, reason)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999", "0x10", "", "1" * 40, "١٢", "5 5", "11"])
def test_numbers_must_be_finite_ascii_and_in_bounds(text):
    p = Params("a=" + text, ("a",))
    if text == "":
        assert p.number("a", 7.0, 0, 10) == 7.0  # empty: the default
        return
    with pytest.raises(ApiError) as info:
        p.number("a", 7.0, 0, 10)
    assert info.value.status == 400 and "a must be a number from 0 to 10" in info.value.detail


def test_access_modes():
    with pytest.raises(ValueError, match="one of off, loopback, token"):
        ApiAccess("open")
    with pytest.raises(ValueError, match="at least 16"):
        ApiAccess("token", "short")
    token = ApiAccess("token", "x" * 20)
    assert "x" * 20 not in repr(token)  # never in a log line
    token.check("192.0.2.1", "Bearer " + "x" * 20, True)
    token.check("192.0.2.1", None, False)  # the page's files
    for auth in (None, "Bearer", "Basic " + "x" * 20, "Bearer " + "x" * 19, "Bearer \udcff"):
        with pytest.raises(ApiError) as info:
            token.check("192.0.2.1", auth, True)
        assert info.value.status == 401
    with pytest.raises(ApiError) as info:
        ApiAccess("off").check("127.0.0.1", None, False)
    assert info.value.status == 404
