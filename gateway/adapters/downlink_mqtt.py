"""The downlink's MQTT subscriber: ``<prefix>/<gw>/commands`` at QoS 1 on a persistent session.

A small client of its own (``uplink.mqtt.Connection``, the same broker settings as the uplink), not the uplink's
connection: the uplink deliberately starts a clean session at every connect (its store re-sends), while commands
published during an outage must wait on the broker for this gateway, which needs a stable client id and a session
that outlives a disconnect (``session_expiry``).

Each message goes to ``handler(payload, ack)`` on paho's thread; the handler must not block (the agent's
``Downlink.submit`` hands it to the event loop) and calls ``ack()`` once the command's fate is decided and durable.
Until then the broker keeps the message and redelivers it on the next session, where the gateway's ``op_seq``
check refuses it as ``replayed`` if it had been applied: at-least-once delivery, at-most-once application.
"""

import logging

from gateway.adapters.uplink.mqtt import Connection

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 86400  # how long the broker keeps commands for a gateway that is offline


def commands_topic(prefix, gw):
    return "%s/%s/commands" % (prefix.strip("/"), gw)


class CommandSubscriber:
    def __init__(self, handler, gw, host="127.0.0.1", port=1883, topic_prefix="edge", client_id="", username="",
                 password="", tls=False, ca_file=None, cert_file=None, key_file=None, keepalive=30,
                 session_expiry=SESSION_EXPIRY_S, reconnect=(1, 30)):
        if any(c in gw for c in "/+#\0"):
            raise ValueError("gateway id %r cannot be a topic level" % (gw,))
        self.handler = handler
        self.topic = commands_topic(topic_prefix, gw)
        self.client_id = client_id or "edge-gateway-cmd-%s" % gw
        self._conn = Connection(host, port, self.client_id, username, password, tls, ca_file, cert_file, key_file,
                                keepalive, "5", manual_ack=True, reconnect=reconnect, session_expiry=session_expiry)
        self._conn.subscriber(self._on_connect, self._on_message, self._on_subscribe)
        self.counters = {"messages": 0, "acked": 0, "subscribed": 0}

    @classmethod
    def from_section(cls, handler, gw, section, client_id=""):
        """From the ``[uplink]`` section (its ``.mqtt`` table): the same broker, credentials and TLS."""
        m = section.mqtt
        return cls(handler, gw, m.host, m.port, m.topic_prefix, client_id=client_id, username=m.username,
                   password=m.password, tls=m.tls, ca_file=m.ca_file or None, cert_file=m.cert_file or None,
                   key_file=m.key_file or None, keepalive=m.keepalive_s)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if self._conn.on_connect(reason_code):
            client.subscribe(self.topic, qos=1)  # also with a session present: the broker may have lost it
        else:
            log.warning("downlink: broker refused the connection: %s", reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        if any(rc.is_failure for rc in reason_codes):
            log.error("downlink: subscription to %s refused: %s", self.topic, reason_codes)
            return
        self.counters["subscribed"] += 1
        log.info("downlink: subscribed to %s", self.topic)

    def _on_message(self, client, userdata, msg):
        self.counters["messages"] += 1
        mid, qos = msg.mid, msg.qos

        def ack():
            client.ack(mid, qos)
            self.counters["acked"] += 1
        self.handler(bytes(msg.payload), ack)

    def start(self):
        self._conn.start()
        return self

    def wait_connected(self, timeout):
        return self._conn.wait_connected(timeout)

    def close(self):
        self._conn.stop()
