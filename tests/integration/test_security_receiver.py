"""The receiver against hostile or broken peers, over real HTTP on loopback (issue 13, "Nothing lost, nobody in").

Each test pins one class of failure: a repeat with other content, values SQLite cannot hold, a verifier that
raises something untyped, bytes after the batch, a bad ``Content-Length``, a bug inside the request path. After
each, the receiver must still store an ordinary batch from another gateway.
"""

import dataclasses
import http.client
import json
import socket
import sqlite3
import urllib.parse

import cbor2
import pytest

from backend import receiver as receiver_mod
from gateway.core import senml, wire
from gateway.adapters.keys import SigningKey, TrustStore
from gateway.core.model import Reading
from backend.receiver import Receiver, ReceiverServer
from tests.support import post_batch


@pytest.fixture
def other_key():
    return SigningKey.generate()


@pytest.fixture
def two_gw_trust(signing_key, other_key):
    return TrustStore({"keys": [signing_key.jwk("gw-test"), other_key.jwk("gw-other")]})


@pytest.fixture
def server(tmp_path, two_gw_trust):
    srv = ReceiverServer(Receiver(str(tmp_path / "rx.sqlite"), two_gw_trust)).start()
    yield srv
    srv.stop()
    srv.receiver.close()


def post(url, body, ctype=None):
    return post_batch(url, body, ctype)[:2]  # (status, body)

def raw_request(url, head, body=b""):
    """Send exact bytes; return the status code of the answer (or None if the connection closed unanswered)."""
    u = urllib.parse.urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as s:
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    if not answer:
        return None
    return int(answer.split(b" ", 2)[1])


def batch(key, seq, gw="gw-test", values=(4.0, 4.25, 4.5), boot=1):
    readings = [Reading("s1", "temp", v, "Cel", 1000.0 + i) for i, v in enumerate(values)]
    return wire.sign(wire.encode_payload(gw, boot, seq, True, senml.encode_records(readings, (), gw + "/")), key)


def still_stores(server, other_key, seq=100):
    status, body = post(server.url, batch(other_key, seq, gw="gw-other"))
    assert (status, body["status"]) == (201, "stored")


# -- finding 1: a repeat with other content is a conflict, not a duplicate ---------------------------------------
def test_repeat_with_other_content_is_kept_apart_counted_and_answered_409(server, signing_key):
    first, reused = batch(signing_key, 7), batch(signing_key, 7, values=(9.0, 9.5, 10.0))
    assert post(server.url, first)[0] == 201
    assert post(server.url, first) == (200, {"status": "duplicate", "gw": "gw-test", "boot": 1, "seq": 7})
    for _ in range(2):
        status, body = post(server.url, reused)
        assert status == 409 and body["status"] == "conflict" and (body["gw"], body["boot"], body["seq"]) == (
            "gw-test", 1, 7)
    rx = server.receiver
    assert rx.query("SELECT v FROM records ORDER BY t") == [(4.0,), (4.25,), (4.5,)]  # the first content stays
    rows = rx.query("SELECT gw, boot, seq, kid, reason, data FROM conflicts")
    assert len(rows) == 1 and rows[0][:4] == ("gw-test", 1, 7, signing_key.kid) and rows[0][5] == reused
    assert rows[0][4]
    stats = rx.stats()
    assert (stats["stored"], stats["duplicates"], stats["conflicts"], stats["rejected"]) == (1, 1, 2, 0)


def test_old_database_is_migrated_and_rows_without_digest_count_as_duplicates(tmp_path, two_gw_trust,
                                                                              signing_key):
    path = str(tmp_path / "old.sqlite")
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE batches (gw TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, kid TEXT NOT NULL,
            clock INTEGER NOT NULL, anchor_mono REAL, anchor_wall REAL, received REAL NOT NULL,
            records INTEGER NOT NULL, PRIMARY KEY (gw, boot, seq)) WITHOUT ROWID;
        CREATE TABLE records (gw TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, n TEXT NOT NULL,
            t REAL NOT NULL, u TEXT, v REAL, vs TEXT, vb INTEGER);
        INSERT INTO batches VALUES ('gw-test', 1, 1, 'k', 1, NULL, NULL, 5.0, 3);""")
    db.commit()
    db.close()
    srv = ReceiverServer(Receiver(path, two_gw_trust)).start()
    try:
        assert post(srv.url, batch(signing_key, 1, values=(1.0, 2.0, 3.0)))[0] == 200  # unknown digest: duplicate
        assert post(srv.url, batch(signing_key, 2))[0] == 201
        assert post(srv.url, batch(signing_key, 2, values=(7.0, 7.0, 7.0)))[0] == 409  # new rows have a digest
        assert srv.receiver.query("SELECT seq, digest IS NULL FROM batches ORDER BY seq") == [(1, 1), (2, 0)]
    finally:
        srv.stop()
        srv.receiver.close()


# -- finding 2: values SQLite cannot hold get a permanent 4xx and never wedge the shared connection ------------
def signed_records(key, gw, seq, records):
    return wire.sign(wire.encode_payload(gw, 1, seq, True, records), key)


@pytest.mark.parametrize("record", [
    {-2: "gw-test/s1/temp", -3: 123456789012345678901234567890, 2: 1},  # time beyond 64 bits
    {-2: "gw-test/s1/temp", -3: 1000, 2: 123456789012345678901234567890},  # value beyond 64 bits
    {-2: "gw-test/s1/temp", -3: 1000, 2: float("nan")},  # NaN (SQLite would store NULL)
    {-2: "gw-test/s1/temp", -3: float("inf"), 2: 1.0},
], ids=["bignum-time", "bignum-value", "nan", "inf-time"])
def test_signed_poison_values_are_rejected_4xx_and_the_receiver_keeps_storing(server, signing_key, other_key,
                                                                             record):
    status, body = post(server.url, signed_records(signing_key, "gw-test", 3, [record]))
    assert 400 <= status < 500, body
    assert server.receiver.query("SELECT COUNT(*) FROM batches") == [(0,)]
    still_stores(server, other_key)
    assert server.receiver.stats()["rejected"] == 1


@pytest.mark.parametrize("change", [
    {"records": [{"n": "gw-test/s1/temp", "t": 10 ** 30, "v": 1}]},
    {"records": [{"n": "gw-test/s1/temp", "t": 1.0, "v": -(10 ** 30)}]},
    {"records": [{"n": "gw-test/s1/temp", "t": 1.0, "v": float("nan")}]},
    {"records": [{"n": "gw-test/s1/temp", "t": float("-inf"), "v": 1.0}]},
    {"records": [{"n": "gw-test/s1/temp", "t": 1.0, "vs": "\ud800"}]},
    {"records": [{"n": "gw-test/s1/temp", "t": 1.0, "vb": 2}]},
    {"records": [{"n": "gw-test/s1/temp", "t": 1.0, "v": 1.0}, {"n": "x", "t": None, "v": 1.0}]},
    {"boot": 1 << 64},
    {"seq": 1 << 63},
], ids=["t-bignum", "v-bignum", "v-nan", "t-inf", "surrogate", "vb-int", "no-time", "boot-uint64", "seq-2^63"])
def test_receiver_guards_its_own_storage_whatever_verify_lets_through(server, signing_key, other_key, monkeypatch,
                                                                      change):
    """A verifier that lets a value through (today's, or a future lax one) must not reach SQLite unchecked."""
    real_verify = wire.verify

    def lax_verify(data, trust, max_bytes):
        b = real_verify(data, trust, max_bytes)
        return dataclasses.replace(b, **change) if b.gw == "gw-test" else b

    monkeypatch.setattr(receiver_mod, "verify", lax_verify)
    status, body = post(server.url, batch(signing_key, 4))
    assert (status, body["error"]) == (422, "unstorable")
    rx = server.receiver
    assert rx.query("SELECT COUNT(*) FROM batches") == [(0,)] and rx.query("SELECT COUNT(*) FROM records") == [(0,)]
    still_stores(server, other_key)
    assert rx.stats()["rejections"] == {"unstorable": 1}


def test_an_exception_inside_the_transaction_rolls_back_and_the_connection_stays_usable(server, signing_key,
                                                                                        other_key, monkeypatch):
    """Not only sqlite3.Error: any exception between BEGIN and COMMIT must end the transaction."""
    store = server.receiver._store
    real_db = store.db

    class Exploding:
        def __getattr__(self, name):
            return getattr(real_db, name)

        def executemany(self, *a):
            raise OverflowError("simulated: a value the driver cannot bind")

    monkeypatch.setattr(store, "db", Exploding())
    status, body = post(server.url, batch(signing_key, 5))
    assert status == 500 and body == {"error": "internal"}  # our bug: counted, not a dead handler thread
    assert not real_db.in_transaction
    monkeypatch.setattr(store, "db", real_db)
    still_stores(server, other_key)
    assert post(server.url, batch(signing_key, 5))[0] == 201  # the failed attempt left nothing behind
    assert server.receiver.stats()["http_errors"] == 1


def test_storage_failure_is_503_with_retry_after_and_clears(tmp_path, two_gw_trust, signing_key):
    path = str(tmp_path / "rx.sqlite")
    srv = ReceiverServer(Receiver(path, two_gw_trust, busy_timeout=0.05)).start()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        u = urllib.parse.urlsplit(srv.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
        data = batch(signing_key, 6)
        conn.request("POST", u.path, body=data, headers={"Content-Type": wire.HTTP_CONTENT_TYPE})
        resp = conn.getresponse()
        assert resp.status == 503 and json.loads(resp.read())["error"] == "store_failed"
        assert resp.getheader("Retry-After") == "1"
        conn.close()
        blocker.execute("ROLLBACK")
        assert post(srv.url, data)[0] == 201
        assert srv.receiver.stats()["store_failures"] == 1
    finally:
        blocker.close()
        srv.stop()
        srv.receiver.close()


# -- finding 3 (receiver part): a verifier that raises an untyped exception -------------------------------------
def test_decimal_fraction_and_other_untyped_decoder_failures_are_400_not_a_dead_thread(server, other_key):
    for data in (bytes.fromhex("c482006161"), b"\xc4\x82\x00\x61\x61" + batch(other_key, 1, gw="gw-other")):
        status, body = post(server.url, data)
        assert 400 <= status < 500, body
    still_stores(server, other_key)


def test_untyped_verifier_bug_is_a_counted_permanent_rejection(server, other_key, monkeypatch, caplog):
    def broken_verify(data, trust, max_bytes):
        raise KeyError("verifier bug")

    monkeypatch.setattr(receiver_mod, "verify", broken_verify)
    status, body = post(server.url, batch(other_key, 1, gw="gw-other"))
    assert (status, body["error"]) == (400, "unverifiable")
    assert server.receiver.stats()["internal_errors"] == 1
    assert any(r.levelname == "ERROR" and "verifier bug" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    still_stores(server, other_key)


# -- finding 4: one batch per body, exactly Content-Length bytes ------------------------------------------------
def test_trailing_bytes_and_two_batches_in_one_body_are_rejected(server, signing_key):
    one, two = batch(signing_key, 1), batch(signing_key, 2)
    for body in (one + b"\x00", one + b"garbage", one + two):
        status, answer = post(server.url, body)
        assert status == 400, answer
    rx = server.receiver
    assert rx.query("SELECT COUNT(*) FROM batches") == [(0,)]
    assert post(server.url, one)[0] == 201 and post(server.url, two)[0] == 201


@pytest.mark.parametrize("length", ["\u00b2", "\u0663", "+5", "-1", "1e3", "0x10", " ", "9" * 40],
                         ids=["superscript-two", "arabic-three", "plus", "negative", "exponent", "hex", "blank",
                              "huge"])
def test_content_length_must_be_ascii_digits(server, signing_key, other_key, length):
    head = ("POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/cose\r\nContent-Length: %s\r\n\r\n"
            % length).encode("utf-8")
    status = raw_request(server.url, head, b"\x00\x01")
    assert status in (400, 411, 413), status
    still_stores(server, other_key)
    assert server.receiver.stats()["http_errors"] == 0


@pytest.mark.parametrize("headers", [
    "Content-Length: 5\r\nContent-Length: 6\r\n",
    "Transfer-Encoding: chunked\r\n",
    "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
], ids=["two-lengths", "chunked", "chunked-and-length"])
def test_ambiguous_framing_is_refused(server, other_key, headers):
    head = ("POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/cose\r\n%s\r\n" % headers).encode()
    assert raw_request(server.url, head, b"5\r\nhello\r\n0\r\n\r\n") in (400, 411)
    still_stores(server, other_key)


def test_short_body_is_never_answered_and_never_stored(server, signing_key, other_key):
    data = batch(signing_key, 1)
    head = ("POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/cose\r\nContent-Length: %d\r\n\r\n"
            % (len(data) + 10)).encode()
    assert raw_request(server.url, head, data) is None
    assert server.receiver.query("SELECT COUNT(*) FROM batches") == [(0,)]
    still_stores(server, other_key)


# -- finding 5: nothing escapes the request path ----------------------------------------------------------------
def test_a_bug_in_the_request_path_is_a_counted_500_and_the_server_goes_on(server, other_key, monkeypatch,
                                                                            caplog):
    def bug(data):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(server.receiver, "process", bug)
    assert post(server.url, batch(other_key, 1, gw="gw-other")) == (500, {"error": "internal"})
    monkeypatch.setattr(server.receiver, "stats", lambda: {"x": object()})  # not JSON: the GET path fails too
    assert raw_request(server.ops_url, b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n") == 500  # the ops listener
    monkeypatch.undo()
    still_stores(server, other_key, seq=2)
    assert server.receiver.stats()["http_errors"] == 2
    assert sum(r.levelname == "ERROR" for r in caplog.records) >= 2


def test_payload_digest_ignores_the_signer_but_not_the_content(signing_key):
    other = SigningKey.generate()
    payload = wire.encode_payload("gw-test", 1, 1, True, [{-2: "gw-test/a", 2: 1}])
    a, b = wire.sign(payload, signing_key), wire.sign(payload, other)
    assert a != b and receiver_mod.content_digest(a) == receiver_mod.content_digest(b)
    changed = wire.sign(wire.encode_payload("gw-test", 1, 1, True, [{-2: "gw-test/a", 2: 2}]), signing_key)
    assert receiver_mod.content_digest(changed) != receiver_mod.content_digest(a)
    assert cbor2.loads(a).value[2] == payload
