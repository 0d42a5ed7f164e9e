"""The Home Assistant publisher end to end: ``edge-gateway run`` (a line board on a real pty, an alarm rule, the
signed HTTP uplink to the reference receiver) with ``[homeassistant]`` on a real Mosquitto. Checked as Home
Assistant would see it: retained discovery configs that are valid JSON with the fields it requires, ``device`` and
``via_device``, units and device classes from the SenML units, the alarm as a binary_sensor, state that follows the
readings the uplink carried, availability ``online`` while running, ``offline`` after a clean stop (published by
the agent) and after SIGKILL (the broker's last will); and the uplink delivering with the local broker down."""

import json
import signal
import subprocess
import sys
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from backend.receiver import Receiver, ReceiverServer
from gateway.adapters.keys import TrustStore
from tests.support import closed_port, wait_until, write_agent_config
from tests.support.mosquitto import Broker
from tools.sim.harness import PtyNode

pytestmark = pytest.mark.timeout(120)
EG = [sys.executable, "-m", "gateway.cli"]
GW = "gw-ha"
AVAIL = "edge-gateway/%s/availability" % GW


class Watcher:
    """A subscriber on the broker: the last message (and its retain flag) per topic, and every payload."""

    def __init__(self, broker, topics=("homeassistant/#", "edge-gateway/#")):
        self.last, self.history = {}, {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p: [c.subscribe(t, qos=1) for t in topics]
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.last[msg.topic] = (msg.payload.decode(), msg.retain)
            self.history.setdefault(msg.topic, []).append(msg.payload.decode())

    def get(self, topic):
        with self.lock:
            return self.last.get(topic, (None, None))[0]

    def configs(self):
        with self.lock:
            return {t: (json.loads(p), retain) for t, (p, retain) in self.last.items() if t.endswith("/config")}

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def _config(tmp_path, port, url, broker_url):
    return write_agent_config(tmp_path, port, url, gw=GW, extra="""
[homeassistant]
enabled = true
broker = "%s"
status_s = 1
[[rules]]
match = {name = "temp"}
low = 100.0
""" % broker_url)


@pytest.fixture
def rig(tmp_path):
    node = PtyNode("line_node", ["--sensors", 2, "--rate", 5, "--prefix", "unit", "--tick", 0],
                   link=str(tmp_path / "ttyB"))
    node.start()
    servers, procs = [], []
    yield tmp_path, node, servers, procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    for s in servers:
        s.stop()
    node.stop()


def _receiver(tmp_path, key, servers):
    receiver = Receiver(str(tmp_path / "rx.sqlite"), TrustStore({"keys": [key.jwk(GW)]}))
    server = ReceiverServer(receiver).start()
    servers.append(server)
    return receiver, server


def _start(cfg, procs):
    proc = subprocess.Popen(EG + ["run", "--config", cfg], stderr=subprocess.DEVNULL)
    procs.append(proc)
    return proc


def test_discovery_state_and_availability(rig):
    tmp_path, node, servers, procs = rig
    with Broker(tmp_path / "mosquitto") as broker:
        cfg, key = _config(tmp_path, node.path, "http://127.0.0.1:1/x", broker.url)
        receiver, server = _receiver(tmp_path, key, servers)
        text = open(cfg).read().replace("http://127.0.0.1:1/x", server.url)
        open(cfg, "w").write(text)
        agent = _start(cfg, procs)
        live = Watcher(broker)
        try:
            temp_topic = "edge-gateway/%s/unit-1/temp" % GW
            wait_until(lambda: len(live.history.get(temp_topic, [])) >= 10, 30, "ten states of unit-1/temp")
            wait_until(lambda: live.get(AVAIL) == "online", 10, "availability online")
            wait_until(lambda: live.get("edge-gateway/%s/gateway/queue_batches" % GW) is not None, 10,
                       "the gateway's own entities")
            late = Watcher(broker)  # subscribes after the announcements: only retained messages reach it
            wait_until(lambda: len(late.configs()) >= 7, 10, "the retained discovery configs")
            configs = late.configs()
            late.close()
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(20) == 0
            wait_until(lambda: live.get(AVAIL) == "offline", 10, "offline after a clean stop")
            states = list(live.history[temp_topic])
        finally:
            live.close()
    assert all(retain for _, retain in configs.values())
    gw_id = "edge-gateway_%s" % GW
    by_topic = {t: c for t, (c, _) in configs.items()}
    for topic, c in by_topic.items():  # what Home Assistant requires of a discovered entity with a device
        assert topic.startswith("homeassistant/") and topic.split("/")[2] == GW and topic.endswith("/config")
        assert c["unique_id"] and c["state_topic"].startswith("edge-gateway/%s/" % GW), c
        assert c["availability_topic"] == AVAIL and c["payload_not_available"] == "offline"
        assert isinstance(c["device"]["identifiers"], list) and c["device"]["identifiers"][0]
    assert len({c["unique_id"] for c in by_topic.values()}) == len(by_topic)
    temp = by_topic["homeassistant/sensor/%s/unit-1_temp/config" % GW]
    assert (temp["device_class"], temp["unit_of_measurement"], temp["state_class"]) == ("temperature", "°C",
                                                                                          "measurement")
    assert temp["device"]["via_device"] == gw_id and temp["device"]["name"] == "unit-1"
    hum = by_topic["homeassistant/sensor/%s/unit-2_hum/config" % GW]
    assert (hum["device_class"], hum["unit_of_measurement"]) == ("humidity", "%")
    alarm = by_topic["homeassistant/binary_sensor/%s/unit-1_alarm_low/config" % GW]
    assert alarm["device_class"] == "problem" and alarm["payload_on"] == "ON"
    gateway = by_topic["homeassistant/sensor/%s/gateway_queue_batches/config" % GW]
    assert gateway["device"]["identifiers"] == [gw_id] and gateway["entity_category"] == "diagnostic"
    uplink = by_topic["homeassistant/binary_sensor/%s/gateway_uplink/config" % GW]
    assert uplink["device_class"] == "connectivity"
    # state follows the readings: one state per value the signed uplink carried, in order (the uplink keeps the
    # board's 0.01 resolution, Home Assistant gets the decimal text)
    sent = [v for (v,) in receiver.query("SELECT v FROM records WHERE n = ? ORDER BY t", ("%s/unit-1/temp" % GW,))]
    assert len(states) == len(sent) >= 10 and all(abs(float(a) - b) <= 0.005 for a, b in zip(states, sent)), (
        states, sent)
    assert live.history["edge-gateway/%s/unit-1/alarm.low" % GW][0] == "ON"


def test_last_will_on_sigkill_and_uplink_without_the_local_broker(rig):
    tmp_path, node, servers, procs = rig
    broker = Broker(tmp_path / "mosquitto").start()
    try:
        cfg, key = _config(tmp_path, node.path, "http://127.0.0.1:1/x", broker.url)
        receiver, server = _receiver(tmp_path, key, servers)
        text = open(cfg).read().replace("http://127.0.0.1:1/x", server.url)
        open(cfg, "w").write(text)
        live = Watcher(broker)
        agent = _start(cfg, procs)
        try:
            wait_until(lambda: live.get(AVAIL) == "online", 30, "availability online")
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
            wait_until(lambda: live.get(AVAIL) == "offline", 10, "the last will after SIGKILL")
        finally:
            live.close()
    finally:
        broker.stop()
    # the local broker is gone (nothing listens): the signed uplink is not delayed
    down = "mqtt://127.0.0.1:%d" % closed_port()
    text = open(cfg).read().replace(broker.url, down)
    open(cfg, "w").write(text)
    before = receiver.stats()["records"]
    agent = _start(cfg, procs)
    wait_until(lambda: receiver.stats()["records"] >= before + 40, 30, "records over the uplink")
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(20) == 0
