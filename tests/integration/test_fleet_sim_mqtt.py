"""fleet-sim's one-thread MQTT sender (tools/fleet_mqtt.py) against a real Mosquitto and a real consumer.

The simulator runs in this process (``Fleet.run`` in a thread); an ``MqttConsumer`` stores into a SQLite
``Receiver``. What the loop owns, beyond what the 200-gateway system test covers: a broker SIGKILLed and restarted
under it (every batch is still acknowledged in the end, and every acknowledged batch the broker had time to hand on
is stored), a broker refusing a gateway's publishes (not acknowledged: rejected, counted), and a cut-off gateway's
connection closed for the outage and opened once after it.
"""

import threading
import time

import pytest

from backend.mqtt_consumer import MqttConsumer
from backend.receiver import Receiver
from gateway.adapters.keys import TrustStore
from tests.support import wait_until
from tests.support.mosquitto import Broker, have_mosquitto
from tools.fleet_sim import Fleet, Plan, enroll

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")


class Rig:
    """A broker, a SQLite receiver behind a shared-subscription consumer, and the plan's gateways enrolled."""

    def __init__(self, tmp_path, plan, broker):
        self.plan, self.broker = plan, broker
        trust = str(tmp_path / "jwks.json")
        enroll(trust, plan)
        self.receiver = Receiver(str(tmp_path / "r.sqlite"), TrustStore.load(trust))
        self.consumer = MqttConsumer.from_url(broker.url + "/edge", self.receiver, group="g", reconnect=(0.2, 0.5))

    def start_consumer(self):
        self.consumer.start()
        assert self.consumer.wait_subscribed(10)

    def stored(self):
        """``{(gw, boot, seq): records}`` of the receiver's batches."""
        return {(gw, boot, seq): n for gw, boot, seq, n in self.receiver.query(
            "SELECT gw, boot, seq, count(*) FROM records GROUP BY gw, boot, seq")}

    def close(self):
        self.consumer.stop()
        self.broker.stop()


def run_in_thread(fleet):
    """``Fleet.run`` in a thread; the returned dict gets the report under ``"report"``."""
    out = {}
    thread = threading.Thread(target=lambda: out.update(report=fleet.run()), daemon=True)
    thread.start()
    return thread, out


def acked_at(fleet):
    """``{(gw, boot, seq): wall time of its PUBACK}`` of every acknowledged batch."""
    return {(g.gw, fleet.plan.boot, seq): acked for g in fleet.gateways for seq, _n, _cut, _sent, acked in g.acked}


@pytest.mark.timeout(90)
def test_a_broker_killed_and_restarted_mid_run_loses_no_acknowledged_batch(tmp_path):
    plan = Plan(10, 10.0, 20, 6.0, seed=2, boot=5, drain=30.0, timeout=2.0)
    rig = Rig(tmp_path, plan, Broker(tmp_path / "broker").start())
    try:
        rig.start_consumer()
        fleet = Fleet(plan, rig.broker.url + "/edge")
        thread, out = run_in_thread(fleet)
        wait_until(lambda: sum(len(g.acked) for g in fleet.gateways) >= 100, 20, "100 batches acknowledged")
        rig.broker.kill()
        killed = time.time()
        time.sleep(1.0)  # kept: the broker stays dead a while (the fault under test)
        rig.broker.start()
        thread.join(60)
        assert not thread.is_alive()
        report = out["report"]
        # the simulator: every batch it made was acknowledged in the end, after retries through the outage
        assert report["made"] == report["acked"] == 10 * 10 * 6 and report["pending"] == report["rejected"] == 0
        assert report["retries"] > 0 and report["failures"].get("retryable", 0) == report["retries"]
        acked = acked_at(fleet)
        assert len(acked) == report["acked"]
        # every acknowledged batch is stored, exactly with its records, except what the broker itself lost: it
        # acknowledged those and was killed (persistence off) before its subscriber had them, so only the last
        # moments before the kill
        wait_until(lambda: len(set(acked) - set(rig.stored())) <= sum(t > killed - 0.5 for t in acked.values()),
                   20, "the receiver storing every acknowledged batch")
        stored = rig.stored()
        lost = {k: t for k, t in acked.items() if k not in stored}
        assert all(killed - 0.5 < t <= killed for t in lost.values()), lost
        assert all(stored[k] == plan.records for k in acked if k in stored)
        after = [k for k, t in acked.items() if t > killed]
        assert len(after) > 100 and all(k in stored for k in after)
    finally:
        rig.close()


@pytest.mark.timeout(60)
def test_a_publish_the_broker_refuses_is_rejected_not_acknowledged(tmp_path):
    """Mosquitto's ACL lets every gateway publish but sim-0001: its PUBACKs carry 0x87 (not authorized). With
    ``--preseal`` (each PUBLISH made before the run): what the broker accepted is what the consumer stores."""
    plan = Plan(3, 5.0, 5, 2.0, seed=1, boot=9, drain=10.0, timeout=2.0, preseal=True)
    allowed = ["topic read $share/g/edge/+/batches", "topic read edge/+/batches"]
    allowed += ["topic write edge/sim-%04d/batches" % i for i in (0, 2)]
    rig = Rig(tmp_path, plan, Broker(tmp_path / "broker", acl=allowed).start())
    try:
        rig.start_consumer()
        fleet = Fleet(plan, rig.broker.url + "/edge")
        report = fleet.run()
        made = {g.gw: g.counts["made"] for g in fleet.gateways}
        assert report["rejected"] == made["sim-0001"] == 10 and report["failures"] == {"status_135": 10}
        assert report["acked"] == made["sim-0000"] + made["sim-0002"] == report["made"] - 10
        assert report["pending"] == 0 and report["retries"] == 0  # a refusal is final: not retried
        wait_until(lambda: len(rig.stored()) == report["acked"], 10, "the receiver storing the accepted batches")
        assert {gw for gw, _b, _s in rig.stored()} == {"sim-0000", "sim-0002"}
    finally:
        rig.close()


@pytest.mark.timeout(60)
def test_cut_off_gateways_close_their_connection_and_reconnect_once_with_their_backlog(tmp_path):
    plan = Plan(5, 10.0, 5, 4.0, seed=4, boot=3, cut_share=0.4, cut_at=1.0, cut_for=1.5, drain=10.0)
    rig = Rig(tmp_path, plan, Broker(tmp_path / "broker").start())
    try:
        rig.start_consumer()
        fleet = Fleet(plan, rig.broker.url + "/edge")
        report = fleet.run()
        assert report["made"] == report["acked"] == 200 and report["retries"] == 0
        outage = report["outage"]
        assert outage["gateways"] == 2 and outage["caught_up"] == 2 and outage["drain_s"] is not None
        assert 2 * 10 * 1.5 - 4 <= outage["backlog_at_reconnect"] <= 2 * 10 * 1.5 + 2
        # the broker saw every gateway connect once, the cut-off ones once more after the outage (and the consumer)
        with open(rig.broker.log) as f:
            connects = sum("New client connected" in line for line in f)
        assert connects == 5 + 2 + 1
        # the cut-off gateways sent nothing during the outage
        cut, start = set(fleet.cut_ids), time.time() - (time.monotonic() - fleet.start)  # the start, wall clock
        sent = [sent - start for g in fleet.gateways if g.gw in cut for _seq, _n, _c, sent, _a in g.acked]
        assert sent and not [t for t in sent if 1.05 < t < 2.45]
        wait_until(lambda: len(rig.stored()) == 200, 10, "the receiver storing every batch")
    finally:
        rig.close()

