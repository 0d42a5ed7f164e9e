"""Signed commands end to end: ``edge-gateway command sign|send`` -> a real Mosquitto -> ``edge-gateway run`` (MQTT
uplink, ``[downlink] operators``) -> outcome records in its batches -> ``edge-gateway receive --mqtt``'s database.

A valid command is applied once; a forged (unknown key), wrong-gateway, replayed (also after a restart), expired,
oversized and unknown-action command are each rejected, counted, reported upstream with the reason, and change
nothing. Commands published while the agent is down wait in its persistent session.
"""

import os
import time

import cbor2
import pytest

from gateway.adapters import keys
from gateway.app.config import to_toml
from gateway.core import commands, wire
from tests.support import reserve_port
from tests.support.downlink import CommandFiles, Gateway, cli, operator_setup, op_seq_of
from tests.support.downlink import await_outcomes as await_stored
from tests.support.faults import GW, Receiver
from tests.support.mosquitto import Broker, have_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")]


def publish_raw(port, topic, data):
    """What anyone with the broker's credentials can do: any bytes on the gateway's commands topic."""
    from gateway.adapters.uplink.mqtt import Connection
    conn = Connection("127.0.0.1", port)
    conn.client.on_connect = lambda client, userdata, flags, rc, props: conn.on_connect(rc)
    conn.start()
    try:
        assert conn.wait_connected(10)
        info = conn.client.publish(topic, data, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        conn.stop()


@pytest.mark.timeout(120)
def test_commands_over_mqtt_applied_once_rejections_reported(tmp_path):
    work = str(tmp_path)
    store, op_key, operator = operator_setup(work)
    other = keys.SigningKey.generate()  # not in the gateway's operator file: a forger
    broker = Broker(tmp_path / "broker").start()
    url = broker.url + "/edge"
    cfg_path = os.path.join(work, "config.toml")
    with open(cfg_path, "w") as f:
        f.write(to_toml({
            "gateway": {"id": GW, "state_dir": store, "key": "key.pem"},
            "batch": {"max_age_s": 0.5},
            "uplink": {"kind": "mqtt", "backoff_min_s": 0.1, "backoff_max_s": 1.0,
                       "mqtt": {"host": "127.0.0.1", "port": broker.port, "topic_prefix": "edge"}},
            "clock": {"mode": "synced"},
            "downlink": {"operators": os.path.join(work, "ops", "operator.jwks.json")}}))
    receiver = Receiver(work, os.path.join(store, "jwks.json"), reserve_port(), mqtt=url).start()
    gateway = Gateway(work, cfg_path)

    files = CommandFiles(work, op_key)
    signed, raw = files.signed, files.raw

    def config_text():
        with open(cfg_path) as f:
            return f.read()

    def await_outcomes(expected, what):
        return await_stored(receiver.db, expected, what)

    try:
        gateway.start()
        good = signed("good.cose", "config_set", "batch.max_age_s", "0.7")  # op_seq 1
        cli("command", "send", "--mqtt", url, good)
        got = await_outcomes({"1": 1}, "the applied outcome")
        assert got["1"][0].startswith("applied: config_set key=batch.max_age_s value=0.7")
        assert "max_age_s = 0.7" in config_text()
        applied_config = config_text()

        exp = int(time.time())
        forged = raw("forged.cose", commands.sign_command(other, GW, 50, exp + 600, "restart"))
        wrong_gw = signed("wrong-gw.cose", "restart", gw="gw-other")  # op_seq 2
        expired = raw("expired.cose", commands.sign_command(operator, GW, 3, exp - 1, "restart"))

        def by_hand(op_seq, action, args):  # signed by the real operator key, past sign_command's own checks
            payload = cbor2.dumps({"v": 1, "gw": GW, "op_seq": op_seq, "exp": exp + 600, "action": action,
                                   "args": args}, canonical=True)
            return wire.sign(payload, operator, commands.protected_header(operator.kid_bytes))
        oversize = raw("oversize.cose", by_hand(9, "config_set", {"key": "gateway.log_level", "value": "x" * 5000}))
        unknown = raw("unknown.cose", by_hand(4, "reboot", {}))
        assert op_seq_of(wrong_gw) == 2
        cli("command", "send", "--mqtt", url, good, forged, expired, oversize, unknown)
        with open(wrong_gw, "rb") as f:  # send routes it to gw-other's topic; a replayer puts it on ours
            publish_raw(broker.port, "edge/%s/commands" % GW, f.read())
        got = await_outcomes({"1": 2, "unverified": 2, "2": 1, "3": 1, "4": 1}, "the five rejections")
        assert got["1"][1].startswith("rejected: replayed")
        assert sorted(v.split(":")[1].strip() for v in got["unverified"]) == ["oversize", "unknown_key"]
        assert got["2"] == [got["2"][0]] and got["2"][0].startswith("rejected: wrong_gateway")
        assert got["3"][0].startswith("rejected: expired")
        assert got["4"][0].startswith("rejected: unknown_action")
        assert config_text() == applied_config  # nothing changed

        assert gateway.stop() == 0
        stopped = gateway.text()
        for reason in ("replayed", "unknown_key", "wrong_gateway", "expired", "oversize", "unknown_action"):
            assert "'downlink.rejected.%s': 1" % reason in stopped, reason
        assert "'downlink.applied': 1" in stopped

        # while the agent is down: the old command again, and a new one; both wait in its persistent session
        requeue = signed("requeue.cose", "store_requeue")  # op_seq 3 (the operator's counter; 3 was never applied)
        cli("command", "send", "--mqtt", url, good, requeue)
        gateway.start()
        got = await_outcomes({"1": 3, "3": 2}, "the outcomes after the restart")
        assert got["1"][2].startswith("rejected: replayed")  # at most once, also after a restart
        assert got["3"][1].startswith("applied: store_requeue")

        diagnose = signed("diagnose.cose", "diagnose")  # op_seq 4
        cli("command", "send", "--mqtt", url, diagnose)
        got = await_outcomes({"4": 2}, "the diagnose outcome")
        assert got["4"][1].startswith("applied: diagnose") and "PASS config" in got["4"][1]

        restart = signed("restart.cose", "restart")  # op_seq 5
        cli("command", "send", "--mqtt", url, restart)
        gateway.proc.wait(30)
        assert gateway.proc.returncode == 75  # EXIT_RESTART: systemd starts it again
        got = await_outcomes({"5": 1}, "the restart outcome")
        assert got["5"][0].startswith("applied: restart")
        with open(os.path.join(store, "downlink-seq.json")) as f:
            assert f.read().strip() == '{"%s": 5}' % operator.kid
        assert config_text() == applied_config
    finally:
        if gateway.proc is not None:
            gateway.stop()
        receiver.stop()
        broker.stop()
