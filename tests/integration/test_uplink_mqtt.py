"""MQTT uplink and shared-subscription consumer against a real Mosquitto on a free loopback port."""

import time
import zlib

import pytest

from gateway.core import senml, wire
from gateway.core.errors import UplinkError
from gateway.core.model import EncodedBatch, Reading
from backend.receiver import Receiver
from backend.mqtt_consumer import MqttConsumer
from gateway.adapters.uplink.mqtt import MqttUplink, gateway_of
from tests.support import reserve_port
from tests.support.mosquitto import Broker, have_mosquitto
from tests.support.pki import make_pki

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")
SECRET = "s3cret-Pa55"


def signed(key, seq, gw="gw-test"):
    records = senml.encode_records([Reading("s1", "temp", 20.0 + seq, "Cel", 10.0)], (), gw + "/")
    return EncodedBatch(1, seq, wire.Signer(key)(wire.encode_payload(gw, 1, seq, True, records)), readings=1)


def wait(pred, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not pred():
        time.sleep(0.02)
    return pred()


def test_puback_acks_shared_subscription_splits_and_no_subscriber_is_not_delivery(tmp_path, signing_key, trust):
    with Broker(tmp_path / "b") as broker:
        up = MqttUplink.from_url(broker.url + "/edge", timeout=5)
        assert gateway_of(signed(signing_key, 0).data) == "gw-test"
        with pytest.raises(UplinkError) as err:
            up.send(signed(signing_key, 0))  # nobody subscribed: the broker would drop it
        assert err.value.retryable and "no subscriber" in str(err.value)
        receivers = [Receiver(str(tmp_path / ("r%d.sqlite" % i)), trust) for i in range(2)]
        consumers = [MqttConsumer.from_url(broker.url + "/edge", r, group="fleet").start() for r in receivers]
        try:
            assert all(c.wait_subscribed(5) for c in consumers)
            for seq in range(1, 41):
                assert up.send(signed(signing_key, seq)) == 0  # returns only after the PUBACK
            assert wait(lambda: sum(r.stats()["stored"] for r in receivers) == 40)
            seqs = [s for r in receivers for (s,) in r.query("SELECT seq FROM batches")]
            assert sorted(seqs) == list(range(1, 41))  # each batch to exactly one member of the group
            assert all(r.stats()["stored"] > 0 for r in receivers)  # and the group really shares the load
            assert all(c.counters["acked"] == c.counters["messages"] for c in consumers)
        finally:
            for c in consumers:
                c.stop()
            up.close()


def test_broker_down_is_retryable_and_reconnects(tmp_path, signing_key, trust):
    broker = Broker(tmp_path / "b", port=reserve_port())
    up = MqttUplink.from_url(broker.url + "/edge", timeout=1, reconnect=(0.2, 0.5), require_subscribers=False)
    try:
        t = time.monotonic()
        with pytest.raises(UplinkError) as err:
            up.send(signed(signing_key, 0))
        assert err.value.retryable and "not connected" in str(err.value) and time.monotonic() - t < 3
        broker.start()
        assert wait(lambda: _try(up, signed(signing_key, 1)), 10)
        broker.kill()
        with pytest.raises(UplinkError):
            up.send(signed(signing_key, 2))
        broker.start()
        assert wait(lambda: _try(up, signed(signing_key, 3)), 10)
    finally:
        up.close()
        broker.stop()


def _try(up, batch):
    try:
        up.send(batch)
        return True
    except UplinkError:
        time.sleep(0.1)
        return False


def test_tls_with_password_and_pinned_ca_never_logs_the_password(tmp_path, signing_key, trust, caplog):
    pki = make_pki(str(tmp_path))
    with Broker(tmp_path / "b", tls=(pki["server_cert"], pki["server_key"], pki["ca"]),
                users={"gw": SECRET}) as broker:
        r = Receiver(str(tmp_path / "r.sqlite"), trust)
        consumer = MqttConsumer(r, port=broker.port, group="g", username="gw", password=SECRET, tls=True,
                                ca_file=pki["ca"]).start()
        good = MqttUplink(port=broker.port, username="gw", password=SECRET, tls=True, ca_file=pki["ca"], timeout=5)
        bad = MqttUplink(port=broker.port, username="gw", password="wrong", tls=True, ca_file=pki["ca"], timeout=2,
                         connect_timeout=2)
        untrusted = MqttUplink(port=broker.port, username="gw", password=SECRET, tls=True, timeout=2,
                               connect_timeout=2)
        try:
            assert consumer.wait_subscribed(5)
            assert good.send(signed(signing_key, 1)) == 0
            assert wait(lambda: r.stats()["stored"] == 1)
            with pytest.raises(UplinkError) as err:
                bad.send(signed(signing_key, 2))
            assert "refused" in str(err.value) or "not connected" in str(err.value)
            with pytest.raises(UplinkError):
                untrusted.send(signed(signing_key, 3))  # the throwaway CA is not in the system store
            assert good.describe() == "mqtts://gw@127.0.0.1:%d/edge" % broker.port
        finally:
            for c in (good, bad, untrusted, consumer):
                c.stop() if c is consumer else c.close()
        text = caplog.text + str(err.value) + good.describe()
        assert SECRET not in text and "wrong" not in text


def test_client_certificate_authentication(tmp_path, signing_key, trust):
    pki = make_pki(str(tmp_path), client=True)
    with Broker(tmp_path / "b", tls=(pki["server_cert"], pki["server_key"], pki["ca"]),
                require_certificate=True) as broker:
        r = Receiver(str(tmp_path / "r.sqlite"), trust)
        consumer = MqttConsumer(r, port=broker.port, group="g", tls=True, ca_file=pki["ca"],
                                cert_file=pki["client_cert"], key_file=pki["client_key"]).start()
        up = MqttUplink(port=broker.port, tls=True, ca_file=pki["ca"], cert_file=pki["client_cert"],
                        key_file=pki["client_key"], timeout=5)
        anonymous = MqttUplink(port=broker.port, tls=True, ca_file=pki["ca"], timeout=2, connect_timeout=2)
        try:
            assert consumer.wait_subscribed(5)
            assert up.send(signed(signing_key, 1)) == 0 and wait(lambda: r.stats()["stored"] == 1)
            with pytest.raises(UplinkError):
                anonymous.send(signed(signing_key, 2))
        finally:
            up.close()
            anonymous.close()
            consumer.stop()


# -- the consumer under poison input and storage failures (issue 13, finding 3) ----------------------------------
def counted(consumer, name, n=1):
    return lambda: consumer.counters[name] >= n


def test_poison_message_and_a_crashing_process_do_not_stop_the_consumer(tmp_path, signing_key, trust, monkeypatch,
                                                                       caplog):
    with Broker(tmp_path / "b") as broker:
        r = Receiver(str(tmp_path / "r.sqlite"), trust)
        real_check = r.check  # the consumer's entry point (paho's thread verifies, the writer stores)
        crashes = []

        def check_with_a_bug(data, encoding=None):
            plain = zlib.decompress(data) if encoding == "deflate" else data  # the uplink deflates by default
            if plain == signed(signing_key, 3).data and not crashes:
                crashes.append(data)
                raise RuntimeError("simulated consumer bug")
            return real_check(data, encoding)

        monkeypatch.setattr(r, "check", check_with_a_bug)
        consumer = MqttConsumer.from_url(broker.url + "/edge", r, group="g", redeliver=(0.2, 1.0)).start()
        up = MqttUplink.from_url(broker.url + "/edge", gw="gw-test", timeout=5)
        try:
            assert consumer.wait_subscribed(5)
            up.send(bytes.fromhex("c482006161"))  # a CBOR decimal fraction: once killed paho's thread
            up.send(b"\xff" * 7)
            for seq in range(1, 9):
                up.send(signed(signing_key, seq))
            assert wait(lambda: r.stats()["stored"] == 8), (r.stats(), consumer.counters)
            assert sorted(s for (s,) in r.query("SELECT seq FROM batches")) == list(range(1, 9))
            assert consumer.counters["consumer_errors"] == 1 and crashes  # seq 3 crashed once, then came back
            assert consumer.counters["redeliveries"] >= 1
            assert r.stats()["rejected"] == 2  # the poison is rejected for good (acknowledged, counted)
            assert any(rec.levelname == "ERROR" and "simulated consumer bug" in rec.getMessage()
                       for rec in caplog.records)
        finally:
            up.close()
            consumer.stop()
            r.close()


def test_a_batch_that_failed_to_store_is_redelivered_after_the_failure_clears(tmp_path, signing_key, trust):
    import sqlite3
    path = str(tmp_path / "r.sqlite")
    with Broker(tmp_path / "b") as broker:
        r = Receiver(path, trust, busy_timeout=0.05)
        consumer = MqttConsumer.from_url(broker.url + "/edge", r, group="g", redeliver=(0.3, 0.6)).start()
        up = MqttUplink.from_url(broker.url + "/edge", timeout=5)
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            assert consumer.wait_subscribed(5)
            blocker.execute("BEGIN EXCLUSIVE")  # the receiver's database is locked: every store fails
            up.send(signed(signing_key, 1))  # the broker acknowledged it: it owns the batch now
            assert wait(counted(consumer, "not_acked"))
            assert r.stats()["store_failures"] >= 1 and r.stats()["stored"] == 0
            blocker.execute("ROLLBACK")
            assert wait(lambda: r.stats()["stored"] == 1), (r.stats(), consumer.counters)
            assert r.query("SELECT seq FROM batches") == [(1,)]
            assert consumer.counters["redeliveries"] >= 1 and consumer.counters["acked"] >= 1
            up.send(signed(signing_key, 2))  # and the consumer goes on normally
            assert wait(lambda: r.stats()["stored"] == 2)
        finally:
            blocker.close()
            up.close()
            consumer.stop()
            r.close()


def test_a_restarted_consumer_resumes_its_session_and_an_ended_one_leaves(tmp_path, signing_key, trust):
    path = str(tmp_path / "r.sqlite")
    with Broker(tmp_path / "b") as broker:
        up = MqttUplink.from_url(broker.url + "/edge", timeout=5)
        r = Receiver(path, trust)
        first = MqttConsumer.from_url(broker.url + "/edge", r, group="g").start()
        try:
            assert first.wait_subscribed(5)
            first.stop()  # a restart: the session (and the shared subscription) stays on the broker
            up.send(signed(signing_key, 1))  # queued for the offline session
            again = MqttConsumer.from_url(broker.url + "/edge", r, group="g").start()
            assert again.client_id == first.client_id
            assert wait(lambda: r.stats()["stored"] == 1)
            again.stop(end_session=True)  # retired: the broker forgets the member
            seqs = iter(range(2, 100))
            assert wait(lambda: _no_subscriber(up, signed(signing_key, next(seqs))), 5)
        finally:
            up.close()
            r.close()


def _no_subscriber(up, batch):
    try:
        up.send(batch)
    except UplinkError as exc:
        return "no subscriber" in str(exc)
    return False
