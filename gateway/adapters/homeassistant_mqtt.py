"""The Home Assistant publisher: readings and events to a local MQTT broker, announced through MQTT discovery.

It runs beside the signed uplink and never in its way: the event loop only hands tuples to ``submit`` (a
``put_nowait`` into a bounded queue); a worker thread builds the JSON (``gateway.core.homeassistant``) and
publishes through its own paho client (``uplink.mqtt.Connection``, its own network thread). While the local broker
is unreachable, what is submitted is dropped and counted (``dropped_offline``), as is what finds the queue full
(``dropped_full``): Home Assistant shows live state, the signed uplink is where data is kept.

* On connect: ``online`` (retained) on the availability topic, whose last will is ``offline`` (retained), so
  Home Assistant marks every entity unavailable when the gateway dies; every entity announced so far is announced
  again, and again whenever Home Assistant comes back (its birth message ``online`` on ``<prefix>/status``).
* An entity's config (retained, QoS 1) goes out before its first state; states are retained (QoS 0), so a
  restarted Home Assistant shows the last values at once.
* ``close()`` publishes ``offline`` before it disconnects (a clean stop).

Nothing here is signed: it is for a broker on the site's own network (docs/security.md).
"""

import logging
import queue
import threading

from gateway.adapters.uplink.mqtt import Connection
from gateway.core.homeassistant import OFFLINE, ONLINE

log = logging.getLogger(__name__)

READING, EVENT, RESTATE = "r", "e", "s"


class HomeAssistantPublisher:
    def __init__(self, discovery, host="127.0.0.1", port=1883, username="", password="", tls=False, ca_file=None,
                 client_id="", keepalive=30, queue_size=1000, reconnect=(1, 30)):
        self.discovery = discovery
        self.client_id = client_id or "edge-gateway-ha-%s" % discovery.node
        self._conn = Connection(host, port, self.client_id, username, password, tls, ca_file, keepalive=keepalive,
                                protocol="311", reconnect=reconnect)
        self._conn.client.will_set(discovery.availability, OFFLINE, qos=1, retain=True)
        self._conn.subscriber(self._on_connect, self._on_message, lambda *args: None)
        self._queue = queue.Queue(queue_size)
        self._configs = {}  # config topic -> payload: what was announced (announced again after a reconnect)
        self._reannounce = threading.Event()
        self._thread = None
        self.counters = {"published": 0, "announced": 0, "dropped_offline": 0, "dropped_full": 0, "publish_failed": 0,
                         "connects": 0}

    # -- the event loop's side: never blocks --------------------------------------------------------------------
    def submit(self, readings=(), events=()):
        """Hand readings and events over (from the event loop): queued, or dropped and counted."""
        items = [(READING, r.sensor, r.name, r.value, r.unit) for r in readings]
        items += [(EVENT, e.sensor, e.name, e.state, e.reason) for e in events]
        if not items:
            return
        if not self._conn.connected:
            self.counters["dropped_offline"] += len(items)
            return
        for item in items:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.counters["dropped_full"] += 1

    def submit_gateway(self, values):
        """The gateway's own entities: ``{name: value}`` (a number is a diagnostic sensor, a bool a binary one)."""
        self.submit([_Value(None, name, value) for name, value in values.items()])

    # -- paho's thread ----------------------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not self._conn.on_connect(reason_code):
            log.warning("homeassistant: broker refused the connection: %s", reason_code)
            return
        self.counters["connects"] += 1
        client.publish(self.discovery.availability, ONLINE, qos=1, retain=True)
        client.subscribe("%s/status" % self.discovery.prefix, qos=1)
        self._reannounce.set()
        self._wake()

    def _on_message(self, client, userdata, msg):
        if bytes(msg.payload).strip().lower() == ONLINE.encode():  # Home Assistant (re)started
            self._reannounce.set()
            self._wake()

    def _wake(self):
        try:
            self._queue.put_nowait((RESTATE,))
        except queue.Full:
            pass  # the worker is busy anyway and checks the flag before each item

    # -- the worker thread ------------------------------------------------------------------------------------
    def _publish(self, topic, payload, qos=0, retain=True):
        info = self._conn.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == 0:
            self.counters["published"] += 1
        else:
            self.counters["publish_failed"] += 1  # the broker went away while the item waited

    def _announce_again(self):
        self._reannounce.clear()
        for topic, payload in list(self._configs.items()):
            self._publish(topic, payload, qos=1)

    def _handle(self, item):
        kind = item[0]
        if kind == RESTATE:
            return
        d = self.discovery
        if kind == READING:
            config_topic, config, state_topic, state = d.reading(*item[1:])
        else:
            config_topic, config, state_topic, state = d.event(*item[1:])
        if config is None:
            return
        if config_topic not in self._configs:
            self._configs[config_topic] = payload = d.encode(config)
            self.counters["announced"] += 1
            self._publish(config_topic, payload, qos=1)
        self._publish(state_topic, state)

    def _work(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._reannounce.is_set():
                self._announce_again()
            self._handle(item)

    def start(self):
        self._thread = threading.Thread(target=self._work, name="homeassistant", daemon=True)
        self._thread.start()
        self._conn.start()
        return self

    def wait_connected(self, timeout):
        return self._conn.wait_connected(timeout)

    def close(self, timeout=5.0):
        """A clean stop: ``offline`` (retained) on the availability topic, then disconnect."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout)
        if self._conn.connected:
            info = self._conn.client.publish(self.discovery.availability, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("homeassistant: could not publish offline: %s", exc)
        self._conn.stop()


class _Value:
    """A reading of the gateway itself (no time: Home Assistant shows it as it arrives)."""

    __slots__ = ("sensor", "name", "value", "unit")

    def __init__(self, sensor, name, value, unit=None):
        self.sensor, self.name, self.value, self.unit = sensor, name, value, unit
