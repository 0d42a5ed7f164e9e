"""The read API (issue 16 point 4; docs/backend.md "The read API") on both engines: the answers from signed batches
stored by the real receiver, downsampling, the query plans (index lookups), and the HTTP side on the ops listener:
hostile parameters are 4xx, access off / loopback / token, read-only."""

import json
import re

import pytest

from backend.readapi import Attention, ReadApi
from backend.readhttp import ApiAccess, ReadFront
from backend.receiver import Receiver, ReceiverServer
from gateway.core import senml, wire
from gateway.core.model import Event, Reading
from tests.support import get_json, http_get

GW = "gw-test"
T0 = 1_750_000_000.0
TOKEN = "s3cret-token-0123456789"


def signed(key, boot, seq, readings=(), events=(), clock=True):
    records = senml.encode_records(list(readings), list(events), GW + "/")
    return wire.sign(wire.encode_payload(GW, boot, seq, clock, records), key)


def fill(rx, key):
    """One gateway's history: two boots, four sensors, health counters, alarms raised and cleared."""
    temps = [Reading("s1", "temp", 4.0 + (i % 7) * 0.5, "Cel", T0 + 60 * i) for i in range(100)]
    health = [Reading("health", "dropped_batches", 3, None, T0), Reading("health", "expired_batches", 2, None, T0),
              Reading("health", "last_stop.crash.ValueError", 1, None, T0 + 3000)]
    batches = [
        (1, 0, temps[:50] + [Reading("s1", "batt", 80, "%EL", T0)], ()),
        (1, 1, [], [Event("s1", "alarm.high", "raised", "temp 8.50 above high 8.00", T0 + 600)]),
        (1, 2, [], [Event("s1", "alarm.high", "cleared", "temp 7.50 back below high 8.00 (hysteresis 0.50)",
                          T0 + 900)]),
        (2, 0, temps[50:] + health + [
            Reading("s2", "temp", 21.0, "Cel", T0 + 100), Reading("s2", "batt", 9, "%EL", T0 + 100),
            Reading("s3", "temp", 150.0, "Cel", T0 + 5900), Reading("s3", "rssi", -97, "dBm", T0 + 5900),
            Reading("s4", "temp", 7.9, "Cel", T0 + 5900)],
         [Event("s2", "silent", "raised", "no reading for 600 s (stale_after 600 s)", T0 + 700),
          Event("s4", "alarm.high", "cleared", "temp 7.00 back below high 8.00 (hysteresis 0.50)", T0 + 5000)]),
        (2, 1, [], [Event("s3", "alarm.high_high", "raised", "temp 150.00 above high_high 90.00", T0 + 5900)]),
    ]
    for boot, seq, readings, events in batches:
        assert rx.process(signed(key, boot, seq, readings, events))[0] == 201
    return temps


@pytest.fixture
def rx(db_target, trust, signing_key):
    receiver = Receiver(db_target, trust, clock=lambda: T0 + 7000)
    fill(receiver, signing_key)
    yield receiver
    receiver.close()


def test_gateways_sensors_alarms_and_attention_from_stored_batches(rx):
    api = ReadApi(rx._store, clock=lambda: T0 + 7000)
    (g,) = api.gateways()["gateways"]
    assert (g["gw"], g["boot"], g["seq"], g["clock_synced"], g["boots"], g["restarts"]) == (GW, 2, 1, True, 2, 1)
    assert g["last_seen"] == T0 + 7000 and g["newest_reading"] == T0 + 60 * 99
    assert g["drops"] == 5 and g["health"]["dropped_batches"] == 3 and g["last_stop"] == "crash.ValueError"
    assert g["version"] is None and g["queue_batches"] is None and g["sensors"] == 4  # not sent: shown as absent

    sensors = {s["sensor"]: s for s in api.sensors(GW)["sensors"]}
    assert set(sensors) == {"s1", "s2", "s3", "s4"}
    s1 = sensors["s1"]
    assert s1["readings"]["temp"] == {"t": T0 + 60 * 99, "u": "Cel", "v": 4.5} and s1["battery"]["v"] == 80
    assert s1["open_events"] == [] and s1["thresholds"] == {"temp": {"high": 8.0}}  # raised, then cleared
    assert sensors["s3"]["signal"] == {"t": T0 + 5900, "u": "dBm", "v": -97}
    assert api.sensors("gw-nobody") is None

    alarms = api.alarms()["alarms"]
    assert [(a["sensor"], a["event"], a["alarm"]) for a in alarms] == [("s3", "alarm.high_high", True),
                                                                      ("s2", "silent", False)]

    att = api.attention(Attention(silent_after_s=1800))["attention"]
    kinds = {a["sensor"]: sorted(r["kind"] for r in a["reasons"]) for a in att}
    assert kinds == {"s3": ["alarm", "out_of_range", "weak_signal"], "s2": ["battery_low", "silent"],
                     "s4": ["drifting"]}
    assert [a["sensor"] for a in att] == ["s3", "s2", "s4"]  # ranked by score: 85, 80, 15
    assert "s1" not in kinds  # its alarm was cleared, its battery is fine, it reports


def test_readings_in_a_range_and_downsampled_with_their_extremes(rx):
    api = ReadApi(rx._store)
    raw = api.readings(GW, "s1/temp", T0, T0 + 60 * 99, 1000)
    assert raw["total"] == 100 and not raw["downsampled"] and len(raw["points"]) == 100
    assert raw["points"][:2] == [[T0, 4.0], [T0 + 60, 4.5]] and raw["unit"] == "Cel"
    assert [(e["event"], e["state"]) for e in raw["events"]] == [("alarm.high", "raised"), ("alarm.high", "cleared")]
    assert raw["thresholds"] == {"high": 8.0}
    part = api.readings(GW, "s1/temp", T0 + 60 * 10, T0 + 60 * 19, 1000)
    assert part["total"] == 10 and [p[0] for p in part["points"]] == [T0 + 60 * i for i in range(10, 20)]
    small = api.readings(GW, "s1/temp", T0, T0 + 60 * 99, 10)
    assert small["downsampled"] and small["total"] == 100 and len(small["points"]) <= 10
    assert min(e[1] for e in small["envelope"]) == 4.0 and max(e[2] for e in small["envelope"]) == 7.0
    # every bucket's mean lies within its own extremes, and the buckets cover all 100 readings once
    assert all(lo <= p[1] <= hi for p, (_, lo, hi) in zip(small["points"], small["envelope"]))
    assert api.readings(GW, "nothing/here", T0, T0 + 10, 10)["points"] == []


def test_read_queries_are_index_lookups(rx, db_target):
    """Every statement the read API runs, explained by the engine: seeks on an index, never a table scan."""
    store = rx._store
    seen = []
    real = store._rows

    def recording(sql, args=()):
        seen.append((sql, args))
        return real(sql, args)

    store._rows = recording
    api = ReadApi(store)
    api.gateways(), api.sensors(GW), api.alarms(), api.attention(), api.readings(GW, "s1/temp", T0, T0 + 6000, 10)
    statements = {sql: args for sql, args in seen}
    assert len(statements) >= 8
    postgres = db_target.startswith("postgresql")
    if postgres:
        store.conn.execute("SET enable_seqscan = off")  # tiny tables: ask for the plan the indexes give
    for sql, args in statements.items():
        plan = "\n".join(str(r[0] if postgres else r[3]) for r in real(
            ("EXPLAIN " if postgres else "EXPLAIN QUERY PLAN ") + sql, args))
        if postgres:
            assert "Seq Scan" not in plan and "Index Cond" in plan, (sql, plan)
        else:
            scans = re.findall(r"^(\w+) (records|batches)\b(.*)$", plan, re.M)
            assert scans and all(kind == "SEARCH" and "INDEX" in how or "PRIMARY KEY" in how
                                 for kind, _, how in scans), (sql, plan)


# -- over HTTP -----------------------------------------------------------------------------------------------------
@pytest.fixture
def served(rx):
    srv = ReceiverServer(rx).start()
    yield srv
    srv.stop()


HOSTILE = [
    ("/api/v1/readings?gw=gw-test&name=s1/temp&max_points=nan", 400),
    ("/api/v1/readings?gw=gw-test&name=s1/temp&max_points=1e999", 400),
    ("/api/v1/readings?gw=gw-test&name=s1/temp&max_points=1", 400),
    ("/api/v1/readings?gw=gw-test&name=s1/temp&from=10&to=5", 400),
    ("/api/v1/readings?gw=gw-test&name=s1/temp&from=%C0%AF", 400),
    ("/api/v1/readings?gw=gw-test&name=%00x", 400),
    ("/api/v1/readings?gw=gw-test&name=/etc/passwd", 400),
    ("/api/v1/readings?gw=gw-test", 400),
    ("/api/v1/readings?gw=gw-test&gw=other&name=s1/temp", 400),
    ("/api/v1/sensors?gw=../../x", 400),
    ("/api/v1/sensors?gw=" + "a" * 65, 400),
    ("/api/v1/sensors?gw=gw-nobody", 404),
    ("/api/v1/sensors?gw=gw-test&days=-1", 400),
    ("/api/v1/gateways?drop=table", 400),
    ("/api/v1/attention?battery_below=101", 400),
    ("/api/v1/attention?" + "&".join("x%d=1" % i for i in range(40)), 400),
    ("/api/v1/gateways?" + "x" * 3000, 414),
    ("/api/v1/nothing", 404),
    ("/fleet/../receiver.sqlite", 404),
    ("/fleet/secrets.txt", 404),
]


@pytest.mark.parametrize("path,status", HOSTILE)
def test_hostile_parameters_are_4xx_and_the_api_keeps_answering(served, path, status):
    got, body = get_json(served.ops_url, path)
    assert got == status and body["error"] and body["detail"], body
    assert get_json(served.ops_url, "/api/v1/gateways")[0] == 200
    assert served.receiver.stats()["http_errors"] == 0


def test_the_endpoints_over_http_and_read_only(served):
    base = served.ops_url
    status, body = get_json(base, "/api/v1/readings?gw=gw-test&name=s1/temp&span=600")
    assert status == 200 and body["to"] == T0 + 60 * 99 and body["total"] == 11  # the newest 10 minutes
    assert get_json(base, "/api/v1/alarms?gw=gw-test")[1]["alarms"][0]["event"] == "alarm.high_high"
    assert sorted(get_json(base, "/api/v1")[1]["endpoints"]) == [
        "/api/v1/" + e for e in ("alarms", "attention", "gateways", "readings", "sensors")]
    status, headers, page = http_get(base, "/fleet/")
    assert status == 200 and b'<svg id="plot"' in page and "script-src 'self'" in headers["content-security-policy"]
    assert http_get(base, "/fleet")[0] == 308
    for name in ("app.js", "style.css"):
        status, headers, data = http_get(base, "/fleet/" + name)
        assert status == 200 and data and b"http://" not in data.replace(b"http://www.w3.org/2000/svg", b"")
    import http.client
    import urllib.parse
    u = urllib.parse.urlsplit(base)
    for method in ("POST", "DELETE", "PUT"):
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
        conn.request(method, "/api/v1/gateways", body=b"{}")
        resp = conn.getresponse()
        assert (resp.status, resp.getheader("Allow")) == (405, "GET")
        conn.close()


def test_access_off_and_token(rx, tmp_path):
    off = ReceiverServer(rx, api=ApiAccess("off")).start()
    try:
        assert off.fleet_url is None
        assert get_json(off.ops_url, "/api/v1/gateways")[0] == 404 and http_get(off.ops_url, "/fleet/")[0] == 404
        assert get_json(off.ops_url, "/stats")[0] == 200  # the rest of the ops listener stays
    finally:
        off.stop()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    srv = ReceiverServer(rx, api=ApiAccess.from_args("token", str(token_file))).start()
    try:
        status, headers, _ = http_get(srv.ops_url, "/api/v1/gateways")
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert get_json(srv.ops_url, "/api/v1/gateways", {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
        status, body = get_json(srv.ops_url, "/api/v1/gateways", {"Authorization": "Bearer " + TOKEN})
        assert status == 200 and body["gateways"][0]["gw"] == GW
        assert http_get(srv.ops_url, "/fleet/")[0] == 200  # the page's files hold no data
    finally:
        srv.stop()


def test_loopback_mode_refuses_other_peers_and_tokens_are_checked_at_start(tmp_path, rx):
    front = ReadFront(rx.db_path, ApiAccess("loopback"))
    try:
        for peer, status in (("127.0.0.1", 200), ("::1", 200), ("::ffff:127.0.0.2", 200), ("192.0.2.7", 403),
                             ("10.0.0.1", 403), ("", 403), ("not-an-ip", 403)):
            got, _, body = front.handle("GET", "/api/v1/gateways", "", peer)
            assert got == status, (peer, body)
            assert front.handle("GET", "/fleet/", "", peer)[0] == status
    finally:
        front.close()
    short = tmp_path / "short"
    short.write_text("abc")
    for mode, path, match in (("token", None, "--api-token-file"), ("token", str(short), "at least 16"),
                              ("token", str(tmp_path / "missing"), "cannot read"),
                              ("loopback", str(short), "at least 16")):
        with pytest.raises(ValueError, match=match):
            ApiAccess.from_args(mode, path)


def test_a_failing_database_is_503_then_recovers(tmp_path, trust, signing_key):
    path = tmp_path / "rx.sqlite"
    rx = Receiver(str(path), trust)
    fill(rx, signing_key)
    front = ReadFront(str(path))
    try:
        assert front.handle("GET", "/api/v1/gateways", "", "127.0.0.1")[0] == 200
        front._storage.db.close()  # the connection breaks under the API
        status, headers, body = front.handle("GET", "/api/v1/gateways", "", "127.0.0.1")
        assert status == 503 and ("Retry-After", "5") in headers and json.loads(body)["error"] == "store_failed"
        assert front.handle("GET", "/api/v1/gateways", "", "127.0.0.1")[0] == 200  # reopened
    finally:
        front.close()
        rx.close()
