"""Transport compression: the uplinks deflate the signed batch, the receiver and the MQTT consumer inflate it with a
hard bound, and what is verified and stored is the signed bytes exactly (the coding is hop-by-hop)."""

import hashlib
import http.server
import threading
import time
import tracemalloc
import zlib

import cbor2
import pytest

from backend.receiver import Receiver, ReceiverServer, inflate
from gateway.adapters.uplink.http import HttpUplink
from gateway.app import config
from gateway.core import senml, wire
from gateway.core.errors import UplinkError, VerifyError
from gateway.core.model import EncodedBatch, Reading
from gateway.core.wire import MAX_BATCH_BYTES


def batch(key, seq, n=100, gw="gw-test"):
    readings = [Reading("s1", "temp", round(4.0 + (i % 7) / 100, 2), "Cel", 1_767_225_600 + i, 0.01)
                for i in range(n)]
    records = senml.encode_records(readings, (), gw + "/", time_quantum=1.0)
    return EncodedBatch(1, seq, wire.Signer(key)(wire.encode_payload(gw, 1, seq, True, records)), readings=n)


def wait_for(pred, timeout=10):
    """Poll a condition (no fixed sleep: returns as soon as it holds)."""
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.02)
    return pred()


def digest_of(data):
    return hashlib.sha256(cbor2.loads(data).value[2]).digest()


def bomb(size):
    """A zlib stream of ``size`` zero bytes, built without holding them."""
    c = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    parts = [c.compress(chunk) for _ in range(size >> 20)]
    return b"".join(parts) + c.flush()


@pytest.fixture
def receiver(tmp_path, trust):
    rx = Receiver(str(tmp_path / "rx.sqlite"), trust)
    server = ReceiverServer(rx).start()
    yield rx, server
    server.stop()
    rx.close()


def test_deflated_batches_are_stored_and_the_stored_content_is_the_signed_bytes(receiver, signing_key):
    rx, server = receiver
    up = HttpUplink(server.url)
    sent = [batch(signing_key, seq) for seq in range(5)]
    try:
        for b in sent:
            assert up.send(b) == 201
        assert up.send(sent[0]) == 200  # a repeat, deflated again: the same content, a duplicate
    finally:
        up.close()
    assert up.counters["deflated"] == 6 and up.counters["coding_fallbacks"] == 0
    assert up.counters["body_bytes"] < up.counters["signed_bytes"] / 1.5
    assert up.counters["bytes_sent"] > up.counters["body_bytes"]  # request lines and headers counted too
    stats = rx.stats()
    assert stats["stored"] == 5 and stats["duplicates"] == 1 and stats["deflated"] == 6
    assert stats["deflated_bytes_out"] == sum(len(b.data) for b in sent) + len(sent[0].data)
    digests = dict(rx.query("SELECT seq, digest FROM batches"))
    assert digests == {b.seq: digest_of(b.data) for b in sent}
    assert rx.query("SELECT count(*) FROM records")[0][0] == 500


def test_compress_off_sends_the_signed_bytes_plain(receiver, signing_key, tmp_path):
    rx, server = receiver
    cfg = config.loads('[uplink]\nurl = "%s"\ncompress = false\n' % server.url)
    assert cfg.uplink.compress is False and config.loads("").uplink.compress is True
    up = HttpUplink.from_section(cfg.uplink)
    try:
        assert up.send(batch(signing_key, 1)) == 201
    finally:
        up.close()
    assert up.counters["deflated"] == 0 and rx.stats()["deflated"] == 0


class _OldReceiver(http.server.BaseHTTPRequestHandler):
    """A backend that predates compression: ``refuse`` 415 answers a coded body; 400 parses it as CBOR anyway."""
    protocol_version = "HTTP/1.1"
    refuse = 415
    seen = None

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        coding = self.headers.get("Content-Encoding")
        self.seen.append(coding)
        if coding and self.refuse == 415:
            status = 415
        else:
            status = 201 if body[:1] == b"\xd2" and not self.headers.get("X-Bad") else 400
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def old_receiver():
    servers = []

    def start(refuse):
        seen = []
        handler = type("Handler", (_OldReceiver,), {"refuse": refuse, "seen": seen})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return "http://127.0.0.1:%d/v1/batches" % httpd.server_address[1], seen
    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("refuse", [415, 400])
def test_a_receiver_that_cannot_read_deflate_gets_plain_bodies_from_then_on(old_receiver, signing_key, refuse):
    url, seen = old_receiver(refuse)
    up = HttpUplink(url)
    try:
        assert up.send(batch(signing_key, 1)) == 201  # refused deflated, taken plain: one send, two requests
        assert up.plain_only and up.counters["coding_fallbacks"] == 1
        assert up.send(batch(signing_key, 2)) == 201
    finally:
        up.close()
    assert seen == ["deflate", None, None]  # remembered: no deflated body after the fallback


def test_a_batch_refused_plain_too_is_the_batchs_fault_and_compression_stays_on(old_receiver, signing_key):
    url, seen = old_receiver(400)
    up = HttpUplink(url, headers={"X-Bad": "1"})
    try:
        with pytest.raises(UplinkError) as err:
            up.send(batch(signing_key, 1))
    finally:
        up.close()
    assert err.value.status == 400 and not err.value.retryable  # quarantined, as before compression
    assert not up.plain_only and seen == ["deflate", None]


def test_inflate_is_bounded_and_typed():
    data = bytes(range(256)) * 40
    assert inflate(zlib.compress(data), len(data)) == data
    with pytest.raises(VerifyError) as err:
        inflate(zlib.compress(data), len(data) - 1)
    assert err.value.reason == "oversize"
    packed = zlib.compress(data)
    for bad in (packed[:-5], packed + b"x", b"\x78\x9c garbage", b"", packed[:2] + bytes(20)):
        with pytest.raises(VerifyError) as err:
            inflate(bad, 1 << 20)
        assert err.value.reason == "malformed", bad[:8]


def test_a_zip_bomb_costs_no_memory_and_is_413(receiver):
    rx, server = receiver
    payload = bomb(256 << 20)  # 256 MiB of zeros in ~250 KB: under the body limit, far over the batch limit
    assert len(payload) < MAX_BATCH_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(VerifyError) as err:
            inflate(payload, MAX_BATCH_BYTES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.reason == "oversize"
    assert peak < 3 * MAX_BATCH_BYTES  # the bound plus zlib's tail, never the 256 MiB
    up = HttpUplink(server.url, compress=False)
    up.headers["Content-Encoding"] = "deflate"  # the bomb, sent as a deflated body
    try:
        with pytest.raises(UplinkError) as err:
            up.send(payload)
    finally:
        up.close()
    assert err.value.status == 413 and "oversize" in str(err.value)
    assert rx.stats()["rejections"] == {"oversize": 1}


@pytest.mark.parametrize("coding, status, reason", [("deflate", 400, "malformed"), ("gzip", 415, "content_encoding"),
                                                     ("deflate, deflate", 415, "content_encoding")])
def test_bad_codings_are_typed_rejections(receiver, signing_key, coding, status, reason):
    rx, server = receiver
    up = HttpUplink(server.url, compress=False, headers={"Content-Encoding": coding})
    try:
        with pytest.raises(UplinkError) as err:
            up.send(batch(signing_key, 1))  # the plain signed bytes, mislabelled
    finally:
        up.close()
    assert err.value.status == status
    assert rx.stats()["rejections"] == {reason: 1}


def test_mqtt_through_mosquitto_with_the_content_encoding_property(tmp_path, signing_key, trust):
    from tests.support.mosquitto import Broker, have_mosquitto
    if not have_mosquitto():
        pytest.skip("mosquitto is not installed")
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from backend.mqtt_consumer import MqttConsumer
    from gateway.adapters.uplink.mqtt import MqttUplink
    with Broker(tmp_path / "b") as broker:
        rx = Receiver(str(tmp_path / "rx.sqlite"), trust)
        consumer = MqttConsumer.from_url(broker.url + "/edge", rx).start()
        seen, got = [], threading.Event()
        spy = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

        def on_message(client, userdata, msg):
            seen.append((msg.properties.PayloadFormatIndicator, msg.properties.UserProperty, msg.payload))
            got.set()
        spy.on_message = on_message
        spy.on_connect = lambda c, u, f, rc, p: c.subscribe("edge/+/batches", qos=1)
        spy.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        subscribed = threading.Event()
        spy.connect("127.0.0.1", broker.port)
        spy.loop_start()
        up = MqttUplink.from_url(broker.url + "/edge", timeout=5)
        try:
            assert consumer.wait_subscribed(5) and subscribed.wait(5)
            sent = [batch(signing_key, seq) for seq in range(3)]
            for b in sent:
                assert up.send(b) == 0
            assert got.wait(5)
            assert wait_for(lambda: rx.stats()["stored"] == 3)
        finally:
            up.close()
            consumer.stop(end_session=True)
            spy.loop_stop()
            spy.disconnect()
        stats = rx.stats()
        assert stats["stored"] == 3 and stats["deflated"] == 3
        indicator, props, payload = seen[0]
        assert indicator == 0 and ("content-encoding", "deflate") in props
        assert zlib.decompress(payload) == sent[0].data  # the signed bytes, deflated on this hop only
        assert dict(rx.query("SELECT seq, digest FROM batches")) == {b.seq: digest_of(b.data) for b in sent}
        assert up.counters["deflated"] == 3 and up.counters["payload_bytes"] < up.counters["signed_bytes"]
        rx.close()
