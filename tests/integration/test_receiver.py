"""The reference receiver over real HTTP on loopback: verify, dedup, durable store, typed rejections."""

import http.client
import json
import urllib.parse

import pytest

from gateway.core import senml, wire
from gateway.adapters.keys import SigningKey
from gateway.core.model import Reading
from backend.receiver import Receiver, ReceiverServer
from tests.support import post_batch


@pytest.fixture
def server(tmp_path, trust):
    srv = ReceiverServer(Receiver(str(tmp_path / "rx.sqlite"), trust)).start()
    yield srv
    srv.stop()
    srv.receiver.close()


post = post_batch  # (status, body, Retry-After)

def batch(key, seq, n=3, gw="gw-test"):
    readings = [Reading("s1", "temp", 4.0 + i / 4, "Cel", 1000.0 + i) for i in range(n)]
    return wire.sign(wire.encode_payload(gw, 1, seq, True, senml.encode_records(readings, (), gw + "/")), key)


def test_stores_once_and_answers_duplicates(server, signing_key):
    data = batch(signing_key, 1)
    status, body, _ = post(server.url, data)
    assert status == 201 and body["records"] == 3
    status, body, _ = post(server.url, data)
    assert status == 200 and body["status"] == "duplicate"
    rows = server.receiver.query("SELECT n, t, v, u FROM records ORDER BY t")
    assert rows == [("gw-test/s1/temp", 1000, 4.0, "Cel"), ("gw-test/s1/temp", 1001, 4.25, "Cel"),
                    ("gw-test/s1/temp", 1002, 4.5, "Cel")]
    assert server.receiver.query("SELECT COUNT(*) FROM batches") == [(1,)]
    stats = server.receiver.stats()
    assert stats["stored"] == 1 and stats["duplicates"] == 1 and stats["rejected"] == 0


def test_rejections_are_typed_counted_and_harmless(server, signing_key):
    good = batch(signing_key, 2)
    flipped = bytearray(good)
    flipped[-5] ^= 0x10
    stranger = batch(SigningKey.generate(), 3)
    impostor = batch(signing_key, 4, gw="gw-other")
    cases = [(bytes(flipped), 403, "bad_signature"), (stranger, 403, "unknown_kid"), (impostor, 403, "gw_mismatch"),
             (b"\x00garbage", 400, "not_cose"), (b"", 400, "malformed")]
    for data, status, reason in cases:
        got, body, _ = post(server.url, data)
        assert (got, body["error"]) == (status, reason)
    got, body, _ = post(server.url, good, ctype="text/plain")
    assert (got, body["error"]) == (415, "content_type")
    assert post(server.url, good)[0] == 201  # still alive and storing
    stats = server.receiver.stats()
    assert stats["rejected"] == 6 and stats["stored"] == 1
    assert stats["rejections"] == {"bad_signature": 1, "unknown_kid": 1, "gw_mismatch": 1, "malformed": 1, "not_cose": 1,
                                   "content_type": 1}


def test_oversize_body_is_refused_before_reading(server):
    u = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    conn.putrequest("POST", u.path)
    conn.putheader("Content-Type", wire.HTTP_CONTENT_TYPE)
    conn.putheader("Content-Length", str(wire.MAX_BATCH_BYTES + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"] == "oversize"
    conn.close()


def test_maintenance_answers_503_with_retry_after(server, signing_key):
    server.maintenance(5)
    status, body, retry = post(server.url, batch(signing_key, 9))
    assert status == 503 and int(retry) >= 1
    server.maintenance(0)
    assert post(server.url, batch(signing_key, 9))[0] == 201


def test_stats_endpoint(server, signing_key):
    post(server.url, batch(signing_key, 5))
    u = urllib.parse.urlsplit(server.ops_url)  # /stats is on the ops listener, not on the ingest port
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    conn.request("GET", "/stats")
    stats = json.loads(conn.getresponse().read())
    assert stats["stored"] == 1 and stats["records"] == 3
