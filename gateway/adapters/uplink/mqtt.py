"""MQTT uplink (QoS 1, PUBACK is the acknowledgement) and the receiver's shared-subscription consumer.

The only module that imports paho-mqtt (2.x callback API). ``docs/store-and-forward.md`` has the semantics.

Uplink (``MqttUplink``):

* Publishes each batch at QoS 1 to ``<prefix>/<gw>/batches``. ``gw`` is read from the signed payload itself
  (unless given), so the topic always names the gateway that signed the batch.
* ``send`` blocks until the PUBACK for that message id, or raises a retryable ``UplinkError`` after ``timeout``
  seconds, on a disconnect, or while the broker is unreachable. paho's network thread reconnects with capped
  exponential backoff; the agent's own backoff (with jitter) paces the retries of ``send``.
* MQTT v5 PUBACK reason codes are honoured: ``0x10 no matching subscribers`` is *not* an acknowledgement when
  ``require_subscribers`` is on (the default), because the broker would drop the batch and the store is the
  only place that keeps it; not-authorised, bad topic, bad payload format and packet-too-large are rejections
  (``retryable=False``: the agent quarantines the batch); other failures are retryable. MQTT 3.1.1 has no reason
  codes: every PUBACK acknowledges.
* On every (re)connect, messages paho still holds from before are dropped rather than republished: the store
  re-sends them, so nothing is published twice by two owners.
* TLS (system trust store or a pinned ``ca_file``; verification cannot be turned off), username/password,
  client certificates. The password is never logged nor put in ``describe()``.

Consumer (``MqttConsumer``): subscribes with an MQTT v5 shared subscription ``$share/<group>/<prefix>/+/batches``
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
"""

import hashlib
import logging
import os
import secrets
import socket
import ssl
import threading
import time
import urllib.parse

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.core.errors import UplinkError
from gateway.adapters.uplink import Uplink

log = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 0x10
REJECTED = {0x87: "not authorized", 0x90: "topic name invalid", 0x95: "packet too large",
            0x99: "payload format invalid"}
PROTOCOLS = {"5": MQTTProtocolVersion.MQTTv5, "311": MQTTProtocolVersion.MQTTv311}


def gateway_of(data):
    """The ``gw`` of a signed batch, read without verifying (the topic only routes; backends verify)."""
    try:
        msg = cbor2.loads(data)
        payload = cbor2.loads(msg.value[2])
        gw = payload["gw"]
    except (cbor2.CBORDecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise UplinkError("batch is not a COSE_Sign1 with a gw: %s" % exc, retryable=False) from exc
    if not isinstance(gw, str) or not gw or any(c in gw for c in "/+#\0"):
        raise UplinkError("gw %r cannot be a topic level" % (gw,), retryable=False)
    return gw


def _tls_context(ca_file=None, cert_file=None, key_file=None):
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    return ctx


def _parse_url(url):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("MQTT url must be mqtt://HOST[:PORT]/PREFIX or mqtts://..., not %r" % (url,))
    prefix = parts.path.strip("/") or "edge"
    port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    return dict(host=parts.hostname, port=port, topic_prefix=prefix, tls=parts.scheme == "mqtts",
                username=urllib.parse.unquote(parts.username or ""),
                password=urllib.parse.unquote(parts.password or ""))


class _Connection:
    """One paho client on its own network thread, with connection state other threads can wait for."""

    def __init__(self, host, port, client_id="", username="", password="", tls=False, ca_file=None,
                 cert_file=None, key_file=None, keepalive=30, protocol="5", manual_ack=False, reconnect=(1, 30),
                 session_expiry=None):
        self.host, self.port = host, port
        self.session_expiry = session_expiry  # None: a clean session at every connect (the uplink's choice)
        self.protocol = PROTOCOLS[str(protocol)]
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "",
                                  protocol=self.protocol, manual_ack=manual_ack,
                                  **({} if self.protocol == MQTTProtocolVersion.MQTTv5 else {"clean_session": True}))
        if username:
            self.client.username_pw_set(username, password or None)
        if tls or ca_file or cert_file:
            self.client.tls_set_context(_tls_context(ca_file, cert_file, key_file))
        self.client.reconnect_delay_set(*reconnect)
        self.keepalive = keepalive
        self.cond = threading.Condition()
        self.connected = False
        self.generation = 0  # bumped at every disconnect
        self.last_error = "not connected yet"
        self.started = False

    @property
    def v5(self):
        return self.protocol == MQTTProtocolVersion.MQTTv5

    def start(self):
        if not self.started:
            self.started = True
            if self.session_expiry is None or not self.v5:
                self.client.connect_async(self.host, self.port, self.keepalive)
            else:  # resume the session (and what the broker holds for it) at every connect
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = int(self.session_expiry)
                self.client.connect_async(self.host, self.port, self.keepalive, clean_start=False, properties=props)
            self.client.loop_start()

    def on_connect(self, reason_code):
        with self.cond:
            if reason_code.is_failure:
                self.last_error = "broker refused the connection: %s" % reason_code
            else:
                self.connected = True
                self.last_error = None
            self.cond.notify_all()
        return not reason_code.is_failure

    def on_disconnect(self, reason_code):
        with self.cond:
            was = self.connected
            self.connected = False
            self.generation += 1
            if reason_code is not None and reason_code.is_failure:
                self.last_error = "disconnected: %s" % reason_code
            elif self.last_error is None:
                self.last_error = "disconnected"
            self.cond.notify_all()
        return was

    def on_connect_fail(self):
        with self.cond:
            self.last_error = "cannot connect to %s:%d" % (self.host, self.port)
            self.cond.notify_all()

    def wait_connected(self, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.connected:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def stop(self, end_session=False):
        if self.started:
            self.started = False
            props = None
            if end_session and self.session_expiry is not None and self.v5:
                props = Properties(PacketTypes.DISCONNECT)
                props.SessionExpiryInterval = 0
            try:
                self.client.disconnect(properties=props)
            finally:
                self.client.loop_stop()


class MqttUplink(Uplink):
    name = "mqtt"

    def __init__(self, host="127.0.0.1", port=1883, topic_prefix="edge", gw=None, client_id="", username="",
                 password="", tls=False, ca_file=None, cert_file=None, key_file=None, keepalive=30, timeout=10.0,
                 protocol="5", require_subscribers=True, connect_timeout=None, reconnect=(1, 30)):
        if any(c in topic_prefix for c in "+#\0") or not topic_prefix.strip("/"):
            raise ValueError("MQTT topic prefix must be a non-empty topic without wildcards, not %r" % (topic_prefix,))
        self.prefix = topic_prefix.strip("/")
        self.gw = gw
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.require_subscribers = require_subscribers
        self.scheme = "mqtts" if (tls or ca_file or cert_file) else "mqtt"
        self.user = username
        self._conn = _Connection(host, port, client_id, username, password, tls, ca_file, cert_file, key_file,
                                 keepalive, protocol, reconnect=reconnect)
        self._acks = {}  # mid -> PUBACK reason code (value), written by paho's thread
        c = self._conn.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = lambda client, userdata: self._conn.on_connect_fail()
        c.on_publish = self._on_publish
        self.last_latency = None

    @classmethod
    def from_config(cls, config, gw=None):
        """From an ``UplinkSection`` (its ``.mqtt`` table, plus ``timeout_s``)."""
        m = config.mqtt
        return cls(m.host, m.port, m.topic_prefix, gw=gw, client_id=m.client_id, username=m.username,
                   password=m.password, tls=m.tls, ca_file=m.ca_file or None, cert_file=m.cert_file or None,
                   key_file=m.key_file or None, keepalive=m.keepalive_s, timeout=getattr(config, "timeout_s", 10.0))

    @classmethod
    def from_url(cls, url, gw=None, **kw):
        """``mqtt://[user:pass@]HOST[:PORT]/PREFIX`` or ``mqtts://...`` (system trust store unless ``ca_file``)."""
        opts = _parse_url(url)
        opts.update(kw)
        return cls(gw=gw, **opts)

    def describe(self):
        user = self.user + "@" if self.user else ""
        return "%s://%s%s:%d/%s" % (self.scheme, user, self._conn.host, self._conn.port, self.prefix)

    # -- paho callbacks (network thread) ------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if self._conn.on_connect(reason_code):
            stale = client.drop_out_messages()  # the store re-sends them; paho must not republish them too
            log.info("mqtt: connected to %s%s", self.describe(),
                     " (dropped %d unacknowledged publishes; the store re-sends them)" % len(stale) if stale else "")
        else:
            log.warning("mqtt: %s refused the connection: %s", self.describe(), reason_code)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self._conn.on_disconnect(reason_code):
            log.warning("mqtt: disconnected from %s: %s", self.describe(), reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._conn.cond:
            self._acks[mid] = reason_code.value if reason_code is not None else 0
            self._conn.cond.notify_all()

    # -- sending ------------------------------------------------------------------------------------------------
    def topic_for(self, data):
        return "%s/%s/batches" % (self.prefix, self.gw or gateway_of(data))

    def send(self, batch):
        data = batch.data if hasattr(batch, "data") else batch
        topic = self.topic_for(data)
        conn = self._conn
        conn.start()
        start = time.monotonic()
        if not conn.wait_connected(self.connect_timeout):
            raise UplinkError("MQTT broker %s not connected: %s" % (self.describe(), conn.last_error),
                              retryable=True)
        with conn.cond:
            generation = conn.generation
        info = conn.client.publish(topic, data, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise UplinkError("MQTT publish to %s failed: %s" % (self.describe(), mqtt.error_string(info.rc)),
                              retryable=True)
        deadline = start + self.timeout
        with conn.cond:
            while not info.is_published():
                left = deadline - time.monotonic()
                if conn.generation != generation or left <= 0:
                    self._acks.pop(info.mid, None)
                    why = "connection lost" if conn.generation != generation else "no PUBACK within %.1f s" % (
                        self.timeout)
                    raise UplinkError("MQTT publish to %s: %s" % (self.describe(), why), retryable=True)
                conn.cond.wait(min(left, 0.05))
            code = self._acks.pop(info.mid, 0)
        self.last_latency = time.monotonic() - start
        if code == NO_MATCHING_SUBSCRIBERS and self.require_subscribers:
            raise UplinkError("MQTT broker %s has no subscriber for %s; keeping the batch" % (self.describe(), topic),
                              retryable=True)
        if code >= 0x80:
            text = REJECTED.get(code)
            raise UplinkError("MQTT broker %s refused the batch: reason 0x%02x %s" % (
                self.describe(), code, text or "(unspecified)"), retryable=text is None, status=code)
        return code

    def close(self):
        self._conn.stop()


def consumer_client_id(group, db_path):
    """A client id that is the same at every start of one receiver (host, database file, group), so a restarted
    receiver resumes its session; random for an in-memory database."""
    if not db_path or db_path == ":memory:" or str(db_path).startswith("file:"):
        return "rx-%s-%s" % (group, secrets.token_hex(8))
    ident = "%s\0%s\0%s" % (socket.gethostname(), os.path.abspath(db_path), group)
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
        self._conn = _Connection(host, port, self.client_id, username, password, tls, ca_file, cert_file, key_file,
                                 keepalive, "5", manual_ack=True, reconnect=reconnect, session_expiry=session_expiry)
        c = self._conn.client
        c.on_connect = self._on_connect
        c.on_disconnect = lambda client, userdata, flags, rc, props: self._conn.on_disconnect(rc)
        c.on_connect_fail = lambda client, userdata: self._conn.on_connect_fail()
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.counters = {"messages": 0, "acked": 0, "not_acked": 0, "consumer_errors": 0, "ack_failures": 0,
                         "redeliveries": 0, "subscribed": 0}
        self._subscribed = threading.Event()
        self._first_delay, self._max_delay = redeliver
        self._delay = self._first_delay
        self._cond = threading.Condition()
        self._redeliver_at = None  # monotonic time of the next reconnect, or None
        self._closed = False
        self._supervisor = None

    @classmethod
    def from_url(cls, url, receiver, group="receivers", **kw):
        opts = _parse_url(url)
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
            status, body = self.receiver.process(msg.payload)
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
                self._delay = self._first_delay

    # -- redelivery: reconnect (bounded, capped doubling delay) so the broker resends what was not acknowledged ----
    def _schedule_redelivery(self):
        with self._cond:
            if self._redeliver_at is None and not self._closed:
                self._redeliver_at = time.monotonic() + self._delay
                self._delay = min(self._delay * 2, self._max_delay)
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
