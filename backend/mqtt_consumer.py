"""The receiver's MQTT front: a shared-subscription consumer that acknowledges a batch only once it is stored.

``MqttConsumer`` subscribes with an MQTT v5 shared subscription ``$share/<group>/<prefix>/+/batches``
at QoS 1 with manual acknowledgements, so a message is acknowledged to the broker only after
``receiver.process`` stored it (201), found it already stored (200 duplicate, 409 conflict: kept apart) or
rejected it for good (4xx, counted by the receiver). Nothing the broker delivers can stop the consumer:

* A 5xx (the receiver's database failed) is not acknowledged. The broker resends an unacknowledged QoS 1
  message only when the session resumes, so the consumer keeps a persistent session (``clean_start`` false,
  ``session_expiry`` seconds, a client id that is the same at every start of the same receiver) and, after a
  storage failure, reconnects after a capped, doubling delay (``redeliver``): the broker then redelivers
  every message it did not get an acknowledgement for.
* An exception escaping ``on_message`` would kill paho's network thread while the broker kept acknowledging
  publishers. The callback therefore catches it, counts it (``consumer_errors``), logs it at ERROR, does not
  acknowledge, and schedules the same reconnect.
* Limits: while a member of a shared group is offline, Mosquitto keeps routing its share of the messages into
  its session (up to ``max_queued_messages``), and drops them when the session expires. A consumer must come
  back under the same client id within ``session_expiry``, or leave for good with ``stop(end_session=True)``.

A message may carry the MQTT v5 user property ``content-encoding: deflate`` (Payload Format Indicator 0): its
payload is then the signed batch in a zlib stream, which ``receiver.process`` inflates with the same bound as the
HTTP front (``backend/receiver.py``); a property naming another coding is a counted rejection.

It shares the paho connection helper and the MQTT URL parser with the gateway's uplink
(``gateway/adapters/uplink/mqtt.py``, the only module that imports paho); the import points from the backend
down to the adapters, as ``tests/unit/test_layers.py`` allows.
"""

import hashlib
import logging
import os
import secrets
import socket
import threading
import time

from gateway.adapters.uplink.mqtt import Connection, MQTTErrorCode, content_encoding_of, parse_url
from gateway.core.backoff import Backoff
from backend.storage import is_postgres_url, redact

log = logging.getLogger(__name__)


def consumer_client_id(group, db_path):
    """A client id that is the same at every start of one receiver (host, database file, group), so a restarted
    receiver resumes its session (a PostgreSQL URL counts without its password); random for an in-memory
    database."""
    if not db_path or db_path == ":memory:" or str(db_path).startswith("file:"):
        return "rx-%s-%s" % (group, secrets.token_hex(8))
    where = redact(db_path) if is_postgres_url(db_path) else os.path.abspath(db_path)
    ident = "%s\0%s\0%s" % (socket.gethostname(), where, group)
    return "rx-%s-%s" % (group, hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:16])


class MqttConsumer:
    """The receiver's MQTT front: ``$share/<group>/<prefix>/+/batches`` at QoS 1, acknowledged after storing."""

    def __init__(self, receiver, host="127.0.0.1", port=1883, topic_prefix="edge", group="receivers", client_id="",
                 username="", password="", tls=False, ca_file=None, cert_file=None, key_file=None, keepalive=30,
                 reconnect=(1, 10), session_expiry=3600, redeliver=(1.0, 30.0)):
        if not group or any(c in group for c in "/+#\0"):
            raise ValueError("shared subscription group must be one topic level, not %r" % (group,))
        self.receiver = receiver
        self.topic = "$share/%s/%s/+/batches" % (group, topic_prefix.strip("/"))
        self.client_id = client_id or consumer_client_id(group, receiver.db_path)
        self._conn = Connection(host, port, self.client_id, username, password, tls, ca_file, cert_file, key_file,
                                 keepalive, "5", manual_ack=True, reconnect=reconnect, session_expiry=session_expiry)
        self._conn.subscriber(self._on_connect, self._on_message, self._on_subscribe)
        self.counters = {"messages": 0, "acked": 0, "not_acked": 0, "consumer_errors": 0, "ack_failures": 0,
                         "redeliveries": 0, "subscribed": 0}
        self._subscribed = threading.Event()
        # exact doubling (no jitter): one consumer's reconnects need no spreading, and tests can count on them
        self._backoff = Backoff(redeliver[0], redeliver[1], jitter=0.0)
        self._cond = threading.Condition()
        self._redeliver_at = None  # monotonic time of the next reconnect, or None
        self._closed = False
        self._supervisor = None

    @classmethod
    def from_url(cls, url, receiver, group="receivers", **kw):
        opts = parse_url(url)
        opts.update(kw)
        return cls(receiver, group=group, **opts)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if self._conn.on_connect(reason_code):
            client.subscribe(self.topic, qos=1)  # also when the session is present: the broker may have lost it
        else:
            log.warning("mqtt consumer: broker refused the connection: %s", reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        if any(rc.is_failure for rc in reason_codes):
            log.error("mqtt consumer: subscription to %s refused: %s", self.topic, reason_codes)
            return
        self.counters["subscribed"] += 1
        self._subscribed.set()

    def _on_message(self, client, userdata, msg):
        self.counters["messages"] += 1
        try:
            status, body = self.receiver.process(msg.payload, content_encoding_of(msg.properties))
        except Exception as exc:  # deliberate catch-all: the one place an exception would stop the consumer
            # Escaping here kills paho's network thread while the broker keeps acknowledging publishers, and
            # process() answers every input with a status, so this is our bug: count it, log it at ERROR, keep the
            # message unacknowledged (the broker still owns it) and reconnect later to have it redelivered.
            self.counters["consumer_errors"] += 1
            log.error("mqtt consumer: internal error on a message from %s (not acknowledged): %s", msg.topic, exc,
                      exc_info=True)
            self._schedule_redelivery()
            return
        if status >= 500:
            # Not acknowledged: the broker still owns it and redelivers it when the session resumes.
            self.counters["not_acked"] += 1
            log.error("mqtt consumer: could not store a batch from %s (%s); not acknowledged", msg.topic, body)
            self._schedule_redelivery()
            return
        if client.ack(msg.mid, msg.qos) == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.counters["acked"] += 1
        else:  # the connection is gone: the broker redelivers it on the next session, and it is a duplicate then
            self.counters["ack_failures"] += 1
        if status < 300:
            with self._cond:
                self._backoff.reset()

    # -- redelivery: reconnect (bounded, capped doubling delay) so the broker resends what was not acknowledged ----
    def _schedule_redelivery(self):
        with self._cond:
            if self._redeliver_at is None and not self._closed:
                self._redeliver_at = time.monotonic() + self._backoff.next()
                self._cond.notify_all()

    def _supervise(self):
        while True:
            with self._cond:
                while not self._closed and (self._redeliver_at is None or self._redeliver_at > time.monotonic()):
                    self._cond.wait(None if self._redeliver_at is None else self._redeliver_at - time.monotonic())
                if self._closed:
                    return
                self._redeliver_at = None
                self.counters["redeliveries"] += 1
            # Not under the lock: loop_stop() joins paho's thread, whose callbacks take the lock.
            log.info("mqtt consumer: reconnecting so the broker redelivers unacknowledged batches")
            self._conn.stop()
            with self._cond:  # stop() sets _closed under the lock and joins this thread before it disconnects
                if self._closed:
                    return
                self._conn.start()

    def start(self, wait=5.0):
        """Connect and subscribe (waits up to ``wait`` seconds for the SUBACK; keeps trying in the background)."""
        with self._cond:
            self._closed = False
            if self._supervisor is None:
                self._supervisor = threading.Thread(target=self._supervise, name="mqtt-consumer-redeliver",
                                                    daemon=True)
                self._supervisor.start()
        self._conn.start()
        self._subscribed.wait(wait)
        return self

    def wait_subscribed(self, timeout):
        return self._subscribed.wait(timeout)

    def stop(self, end_session=False):
        """Disconnect. The session stays on the broker for ``session_expiry`` seconds (a restart resumes it)
        unless ``end_session``: then the broker forgets it, with whatever it still held for this consumer."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.join(10)
        self._conn.stop(end_session)
