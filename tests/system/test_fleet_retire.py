"""Retiring a worker of a shared subscription group without loss (issue 16; docs/backend.md, "Retiring a worker").

Mosquitto keeps routing a group member's share into its session while the member is offline, and drops what a
session held when the session ends, although the publishers had their PUBACK. The first test pins that behaviour
of the broker (the reason ``retire`` exists); the second retires one of three PostgreSQL workers with SIGUSR2 in
the middle of a fleet simulator's run and finds every acknowledged batch in the database exactly once.
"""

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support import wait_until
from tests.support.fleet import (assert_exactly_once, enrolled, final_stats, fleet_run, sim_finished,
                                 sim_results, start_workers, stored)
from tests.support.mosquitto import Broker, have_mosquitto
from tests.support.postgres import pg_url, postgres  # noqa: F401  (fixtures: a real PostgreSQL)

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")

SHARED = "$share/g/edge/+/batches"


def _member(broker, client_id, clean_start=False, subscribe=True):
    """A raw paho MQTT v5 client with a one-hour session, subscribed to ``SHARED`` unless told not to; it
    acknowledges every message. Returns ``(client, payloads received, CONNACK's session present flag)``."""
    got, subscribed, present = [], threading.Event(), []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.on_message = lambda client, userdata, msg: got.append(msg.payload)
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_connect = lambda client, userdata, flags, rc, props: present.append(flags.session_present)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", broker.port, 30, clean_start=clean_start, properties=props)
    c.loop_start()
    wait_until(lambda: present, 5, "CONNACK for %s" % client_id)
    if subscribe:
        c.subscribe(SHARED, qos=1)
        assert subscribed.wait(5)
    return c, got, present[0]


def test_mosquitto_routes_to_an_offline_member_and_drops_that_share_when_its_session_ends(tmp_path):
    with Broker(tmp_path / "b") as broker:
        a, _, _ = _member(broker, "member-a")
        b, got_b, _ = _member(broker, "member-b")
        a.disconnect()  # offline, its session kept (an hour)
        a.loop_stop()
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pub", protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        try:
            for i in range(40):
                pub.publish("edge/gw/batches", b"%d" % i, qos=1).wait_for_publish(5)  # PUBACK: the broker owns it
            wait_until(lambda: len(got_b) >= 20, 5, "the online member's share")
            time.sleep(0.5)  # a bounded look for more: none should come
            assert len(got_b) == 20, "the broker kept half of the messages for the offline member"
            # the offline member's session ends (here: it comes back with a clean start); its share is gone
            a2, got_a2, present = _member(broker, "member-a", clean_start=True)
            assert present is False
            for i in range(40, 42):
                pub.publish("edge/gw/batches", b"%d" % i, qos=1).wait_for_publish(5)
            wait_until(lambda: len(got_a2) + len(got_b) >= 22, 5, "the two new messages")
            time.sleep(0.5)
            assert sorted(got_a2 + got_b) != sorted(b"%d" % i for i in range(42))
            assert len(got_a2) + len(got_b) == 22  # 20 of the 42 acknowledged messages were dropped, not redispatched
            a2.disconnect()
        finally:
            pub.disconnect()
            b.disconnect()


GATEWAYS, SECONDS, RATE, RECORDS = 60, 20, 2.0, 10
RETIRE_AT = 8  # seconds into the run
BOOT = 11


def test_a_worker_retired_mid_run_loses_nothing(tmp_path, pg_url):  # noqa: F811
    broker = Broker(tmp_path / "broker").start()
    trust, sim_args = enrolled(tmp_path, GATEWAYS, 5, BOOT)
    workers = []
    try:
        workers = start_workers(tmp_path, trust, broker, pg_url, 3, "fleet", "rx-retire")
        with fleet_run(tmp_path, sim_args, broker, RATE, RECORDS, SECONDS) as sim:
            time.sleep(RETIRE_AT)  # the schedule under test: the retirement lands mid-run, under traffic
            victim = workers[1]
            assert victim.retire(60) == 0, open(victim.log_path).read()[-2000:]
            sim_finished(sim, tmp_path, SECONDS + 60)
        report, acked = sim_results(tmp_path)
        assert report["made"] == report["acked"] == len(acked) > GATEWAYS * SECONDS * RATE * 0.9

        assert_exactly_once(acked, *stored(pg_url, BOOT, len(acked), timeout=30))

        # the retired worker drained and ended its session: the broker holds nothing for its client id
        log = open(victim.log_path).read()
        assert "retiring: unsubscribing" in log and "retired: drained" in log
        victim_stats = final_stats(victim)
        assert victim_stats["stored"] > 0 and victim_stats["consumer"]["not_acked"] == 0
        probe, got, present = _member(broker, victim.args[victim.args.index("--mqtt-client-id") + 1],
                                      subscribe=False)
        time.sleep(0.5)  # a bounded look: a session kept would deliver what it held now
        probe.disconnect()
        assert present is False and got == []
        for w in workers:
            if w is not victim:
                w.stop()
                w.proc.wait(30)
    finally:
        for w in workers:
            if w.proc and w.proc.poll() is None:
                w.proc.kill()
        broker.stop()
