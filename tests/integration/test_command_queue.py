"""The reference receiver's command queue (docs/backend.md, "Commands"), on SQLite and on a real PostgreSQL.

``POST /v1/commands`` checks the operator's signature and bounds each gateway's queue; the answer to a verified
batch of that gateway hands the queued commands over (through the real HTTP front to the real ``HttpUplink``),
again and again until the gateway's outcome record comes back; the outcomes are stored and ``status`` lists them.
"""

import http.client
import json
import time
import urllib.parse

import pytest

from backend import command_queue
from backend.receiver import Receiver, ReceiverServer
from gateway.adapters.keys import SigningKey, TrustStore
from gateway.adapters.uplink.http import HttpUplink
from gateway.core import commands, senml, wire
from gateway.core.model import Event, Reading

GW = "gw-test"
OPERATOR = SigningKey.from_seed(bytes(range(1, 33)))
OPERATORS = {OPERATOR.kid_bytes: OPERATOR.public}


@pytest.fixture
def receiver(db_target, signing_key):
    trust = TrustStore({"keys": [signing_key.jwk(GW)]})
    rx = Receiver(db_target, trust, operators=OPERATORS)
    yield rx
    rx.close()


def command(op_seq, action="store_requeue", args=None, gw=GW, ttl=600, key=OPERATOR):
    return commands.sign_command(key, gw, op_seq, int(time.time()) + ttl, action, args)


def batch(key, seq, events=(), boot=1):
    readings = [Reading("s1", "temp", 4.5, "Cel", 1_700_000_000.0 + seq)]
    records = senml.encode_records(readings, events, GW + "/")
    return wire.sign(wire.encode_payload(GW, boot, seq, True, records), key)


def outcome(op_seq, state, text, data):
    return Event("downlink", str(op_seq), state, "%s [cmd %s]" % (text, commands.command_digest(data)), time.time())


def test_queue_checks_the_signature_and_bounds_each_gateway(receiver):
    good = command(1)
    assert receiver.queue_command(good)[0] == 201
    status, body = receiver.queue_command(good)
    assert (status, body["status"]) == (200, "duplicate")
    other = SigningKey.generate()
    refused = {
        "unknown_key": command(2, key=other),
        "expired": command(3, ttl=-1),
        "oversize": b"\xd2" + bytes(5000),
        "malformed": b"not a command",
        "conflict": command(1, "restart"),  # op_seq 1 of this key is taken by other bytes
    }
    for reason, data in refused.items():
        status, body = receiver.queue_command(data)
        assert body["error"] == reason, (reason, body)
        assert status == {"unknown_key": 403, "expired": 410, "oversize": 413, "malformed": 400,
                          "conflict": 409}[reason]
    forged = bytearray(command(4))
    forged[-1] ^= 1
    assert receiver.queue_command(bytes(forged))[1]["error"] == "bad_signature"
    for seq in range(2, command_queue.MAX_QUEUED + 1):
        assert receiver.queue_command(command(10 + seq))[0] == 201
    status, body = receiver.queue_command(command(99))
    assert (status, body["error"]) == (429, "full")
    stats = receiver.stats()
    assert stats["commands_queued"] == command_queue.MAX_QUEUED and stats["commands_refused"] == 7
    assert stats["rejections"]["command.full"] == 1 and stats["rejections"]["command.unknown_key"] == 1
    assert receiver.queue_command(command(5, gw="gw-elsewhere"))[0] == 201  # another gateway's own bound


def test_commands_are_handed_over_until_their_outcome_comes_back(receiver, signing_key):
    first, second = command(1), command(2, "config_set", {"key": "batch.max_age_s", "value": "5"})
    for data in (first, second):
        assert receiver.queue_command(data)[0] == 201
    sent = batch(signing_key, 0)
    status, body = receiver.process(sent, hand_over=True)
    assert status == 201 and commands.commands_from_answer(json.dumps(body).encode()) == [first, second]
    assert "commands" not in receiver.process(batch(signing_key, 1))[1]  # MQTT: no answer to carry them
    status, body = receiver.process(sent, hand_over=True)  # a duplicate (the answer was lost) is answered too
    assert status == 200 and len(body["commands"]) == 2  # the answer may have been lost: again
    applied = outcome(1, "applied", "store_requeue  (key %s, seq 1): nothing is quarantined" % OPERATOR.kid, first)
    status, body = receiver.process(batch(signing_key, 2, [applied]), hand_over=True)
    assert commands.commands_from_answer(json.dumps(body).encode()) == [second]
    checking = outcome(2, "checking", "config_set ...: a batch must be delivered", second)
    assert receiver.process(batch(signing_key, 3, [checking]), hand_over=True)[1].get("commands") is None
    done = outcome(2, "reverted", "config_set ...: no batch delivered", second)
    replay = outcome(1, "rejected", "replayed: op_seq 1 is not above 1", first)
    receiver.process(batch(signing_key, 4, [done, replay]), hand_over=True)
    rows = receiver.command_status(GW)
    assert [(r["op_seq"], r["action"], r["state"], r["handed"]) for r in rows] == [
        (2, "config_set", "reverted", 3), (1, "store_requeue", "applied", 2)]  # the first final outcome stays
    assert rows[1]["outcome"].endswith("nothing is quarantined [cmd %s]" % commands.command_digest(first))
    n = receiver.query("SELECT COUNT(*) FROM command_outcomes WHERE gw = ?", (GW,))[0][0]
    assert n == 4  # every outcome record is kept


def test_outcomes_of_commands_sent_over_mqtt_are_listed(receiver, signing_key):
    data = command(7, "diagnose")
    rec = outcome(7, "applied", "diagnose  (key %s, seq 7): PASS config" % OPERATOR.kid, data)
    receiver.process(batch(signing_key, 0, [rec]))
    rows = receiver.command_status(GW)
    assert [(r["op_seq"], r["action"], r["state"], r["kid"]) for r in rows] == [(7, None, "applied", OPERATOR.kid)]


def test_outcomes_in_a_group_commit_settle_their_commands_in_the_same_transaction(receiver, signing_key):
    """The MQTT consumer commits groups (``store_many``; on PostgreSQL a group this size goes in by COPY): the
    outcome a batch of the group carries is recorded with it, once, and a repeat of that batch records none."""
    first, second = command(1), command(2, "diagnose")
    for data in (first, second):
        assert receiver.queue_command(data)[0] == 201
    applied = outcome(1, "applied", "store_requeue  (key %s, seq 1): nothing is quarantined" % OPERATOR.kid, first)
    failed = outcome(2, "failed", "diagnose  (key %s, seq 2): FAIL clock" % OPERATOR.kid, second)
    datas = [batch(signing_key, 0), batch(signing_key, 1, [applied]), batch(signing_key, 2), batch(signing_key, 3),
             batch(signing_key, 4, [failed]), batch(signing_key, 1, [applied])]
    items = [receiver.check(d)[1:] for d in datas]
    assert [status for status, _ in receiver.store_many(items)] == [201, 201, 201, 201, 201, 200]
    rows = receiver.command_status(GW)
    assert [(r["op_seq"], r["state"]) for r in rows] == [(2, "failed"), (1, "applied")]
    assert receiver.query("SELECT seq FROM command_outcomes WHERE gw = ? ORDER BY seq", (GW,)) == [(1,), (4,)]
    assert receiver.query("SELECT COUNT(*) FROM records WHERE gw = ?", (GW,)) == [(7,)]  # 5 readings, 2 outcomes


def test_an_expired_command_is_not_handed_over(receiver, signing_key, monkeypatch):
    data = command(1, ttl=30)
    assert receiver.queue_command(data)[0] == 201
    later = time.time() + 60
    monkeypatch.setattr(receiver, "clock", lambda: later)
    assert "commands" not in receiver.process(batch(signing_key, 0), hand_over=True)[1]
    assert [r["state"] for r in receiver.command_status(GW)] == ["expired"]


def test_the_http_uplink_takes_the_commands_from_the_answer(tmp_path, signing_key):
    """Real HTTP on loopback: the receiver's front queues a command and hands it to ``HttpUplink``'s sink."""
    trust = TrustStore({"keys": [signing_key.jwk(GW)]})
    server = ReceiverServer(Receiver(str(tmp_path / "rx.sqlite"), trust, operators=OPERATORS)).start()
    try:
        data = command(1)
        u = urllib.parse.urlsplit(server.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
        conn.request("POST", "/v1/commands", body=data, headers={"Content-Type": wire.HTTP_CONTENT_TYPE})
        resp = conn.getresponse()
        assert resp.status == 201 and json.loads(resp.read())["op_seq"] == 1
        conn.close()
        got = []
        uplink = HttpUplink(server.url)
        uplink.set_command_sink(got.append)
        assert uplink.send(batch(signing_key, 0)) == 201
        assert uplink.send(batch(signing_key, 1)) == 201  # the same connection: the answer was read whole
        assert got == [[data], [data]] and uplink.counters["commands_received"] == 2
        assert uplink.counters["requests"] == 2
        uplink.close()
    finally:
        server.stop()
        server.receiver.close()
