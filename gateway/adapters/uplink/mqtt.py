"""MQTT uplink (QoS 1, PUBACK is the acknowledgement), and the connection helper the backend's consumer shares.

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
* ``compress`` (the default, MQTT v5 only): the payload is the signed batch deflated (a zlib stream, level 6)
  when that is smaller, marked with the user property ``content-encoding: deflate`` and Payload Format
  Indicator 0; the consumer inflates it (``backend/mqtt_consumer.py``). What is signed is unchanged: the
  compression is hop-by-hop. A consumer that does not read the property cannot verify such a payload, so a
  fleet with such consumers sets ``uplink.compress = false`` (MQTT has no answer to fall back on).
* TLS (system trust store or a pinned ``ca_file``; verification cannot be turned off), username/password,
  client certificates. The password is never logged nor put in ``describe()``.

The backend's shared-subscription consumer (``backend/mqtt_consumer.py``) uses ``Connection`` and
``parse_url`` from here.
"""

import logging
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

from gateway.adapters.uplink.base import FAIL, OK, WARN, Probe, Uplink, deflated
from gateway.core.errors import UplinkError
from gateway.core.redact import plaintext_uplink, redact_url

log = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 0x10
REJECTED = {0x87: "not authorized", 0x90: "topic name invalid", 0x95: "packet too large",
            0x99: "payload format invalid"}
PROTOCOLS = {"5": MQTTProtocolVersion.MQTTv5, "311": MQTTProtocolVersion.MQTTv311}
#: the MQTT v5 user property that names a payload's content coding, as HTTP's ``Content-Encoding``
CONTENT_ENCODING = "content-encoding"


def content_encoding_of(properties):
    """The ``content-encoding`` user property of a received message (v5 ``Properties`` or None), or None."""
    for key, value in getattr(properties, "UserProperty", None) or ():
        if key.lower() == CONTENT_ENCODING:
            return value
    return None


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


def parse_url(url):
    """``mqtt://[user:pass@]HOST[:PORT]/PREFIX`` or ``mqtts://...`` -> the keyword arguments of ``MqttUplink``
    (``host``, ``port``, ``topic_prefix``, ``tls``, ``username``, ``password``). The one MQTT URL parser: the
    uplink, the backend's consumer and provision use it. ``ValueError`` (the URL redacted) when it is not one."""
    try:
        parts = urllib.parse.urlsplit(url)
        hostname = parts.hostname
        port = parts.port
    except ValueError:
        parts = hostname = port = None
    if parts is None or parts.scheme not in ("mqtt", "mqtts") or not hostname:
        raise ValueError("MQTT url must be mqtt://HOST[:PORT]/PREFIX or mqtts://..., not %r" % (redact_url(url),))
    prefix = parts.path.strip("/") or "edge"
    port = port or (8883 if parts.scheme == "mqtts" else 1883)
    return dict(host=parts.hostname, port=port, topic_prefix=prefix, tls=parts.scheme == "mqtts",
                username=urllib.parse.unquote(parts.username or ""),
                password=urllib.parse.unquote(parts.password or ""))


def probe_broker(host, port, tls, timeout, tls_files=(None, None, None), ca_key="uplink.mqtt.ca_file",
                 monotonic=time.monotonic):
    """A TCP connect to a broker and, with ``tls``, a verified handshake: a ``Probe`` (no MQTT session, nothing is
    published). ``ca_key`` is the config key a certificate error's fix names. The uplink's probe and ``doctor``'s
    Home Assistant check use it."""
    where = "mqtt %s:%d" % (host, port)
    start = monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return Probe(FAIL, "%s unreachable: %s" % (where, exc.strerror or exc), "check the broker address and "
                     "firewall", monotonic() - start)
    try:
        if tls:
            sock = _tls_context(*tls_files).wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        return Probe(FAIL, "%s: TLS certificate not valid: %s" % (where, exc.verify_message),
                     "check the clock and %s" % ca_key, monotonic() - start)
    except (ssl.SSLError, OSError) as exc:
        return Probe(FAIL, "%s: TLS failed: %s" % (where, exc), "check port and tls setting", monotonic() - start)
    finally:
        sock.close()
    return Probe(OK, "%s reachable%s" % (where, ", TLS verified" if tls else ""), latency_s=monotonic() - start)


class Connection:
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

    def subscriber(self, on_connect, on_message, on_subscribe):
        """Wire paho's callbacks for a subscribing client (the backend's consumer, the gateway's downlink): the
        connection keeps its own state on disconnects and failed connects; the owner handles the rest."""
        c = self.client
        c.on_connect = on_connect
        c.on_disconnect = lambda client, userdata, flags, rc, props: self.on_disconnect(rc)
        c.on_connect_fail = lambda client, userdata: self.on_connect_fail()
        c.on_message = on_message
        c.on_subscribe = on_subscribe

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
    kind = "mqtt"
    frame_bytes = 60  # PUBLISH header, topic, packet id, properties (docs/performance.md, "Bytes on the wire")
    schemes = ("mqtt", "mqtts")
    downlink = "subscribe"

    def __init__(self, host="127.0.0.1", port=1883, topic_prefix="edge", gw=None, client_id="", username="",
                 password="", tls=False, ca_file=None, cert_file=None, key_file=None, keepalive=30, timeout=10.0,
                 protocol="5", require_subscribers=True, connect_timeout=None, reconnect=(1, 30), compress=True):
        if any(c in topic_prefix for c in "+#\0") or not topic_prefix.strip("/"):
            raise ValueError("MQTT topic prefix must be a non-empty topic without wildcards, not %r" % (topic_prefix,))
        self.prefix = topic_prefix.strip("/")
        self.gw = gw
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.require_subscribers = require_subscribers
        self.compress = compress and str(protocol) == "5"  # v3.1.1 has no properties to say so
        self.counters = {"payload_bytes": 0, "signed_bytes": 0, "deflated": 0}
        self.scheme = "mqtts" if (tls or ca_file or cert_file) else "mqtt"
        self.user = username
        self.tls_files = (ca_file, cert_file, key_file)
        self._conn = Connection(host, port, client_id, username, password, tls, ca_file, cert_file, key_file,
                                 keepalive, protocol, reconnect=reconnect)
        self._acks = {}  # mid -> PUBACK reason code (value), written by paho's thread
        c = self._conn.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = lambda client, userdata: self._conn.on_connect_fail()
        c.on_publish = self._on_publish
        self.last_latency = None

    @classmethod
    def from_section(cls, section, gw=None):
        """From an ``UplinkSection`` (its ``.mqtt`` table, plus ``timeout_s``)."""
        m = section.mqtt
        return cls(m.host, m.port, m.topic_prefix, gw=gw, client_id=m.client_id, username=m.username,
                   password=m.password, tls=m.tls, ca_file=m.ca_file or None, cert_file=m.cert_file or None,
                   key_file=m.key_file or None, keepalive=m.keepalive_s, timeout=section.timeout_s,
                   compress=section.compress)

    @classmethod
    def from_url(cls, url, timeout=10.0, retry_max_s=None, gw=None, **kw):
        """``mqtt://[user:pass@]HOST[:PORT]/PREFIX`` or ``mqtts://...`` (system trust store unless ``ca_file``).
        ``retry_max_s`` caps paho's reconnect delay (it starts at a quarter of that, at most 1 s)."""
        opts = parse_url(url)
        if retry_max_s is not None:
            opts["reconnect"] = (min(1.0, retry_max_s / 4), retry_max_s)
        opts.update(kw)
        return cls(gw=gw, timeout=timeout, **opts)

    @classmethod
    def config_from_url(cls, url, ca_file=None):
        opts = parse_url(url)
        table = {"host": opts["host"], "port": opts["port"], "topic_prefix": opts["topic_prefix"]}
        table.update((k, opts[k]) for k in ("tls", "username", "password") if opts[k])
        if ca_file:
            table["ca_file"] = ca_file
        return {"kind": cls.kind, "mqtt": table, **({"ca_file": ca_file} if ca_file else {})}

    @classmethod
    def transport(cls, section):
        m = section.mqtt
        clear = plaintext_uplink("mqtt", host=m.host, tls=m.tls)
        if clear:
            return Probe(WARN, clear, "set uplink.mqtt.tls = true and the broker's TLS port (usually 8883), or "
                                      "provision with mqtts://")
        return Probe(OK, "mqtt %s:%d: %s" % (m.host, m.port, "TLS" if m.tls else
                                              "plain text to this machine (loopback)"))

    def describe(self):
        user = self.user + "@" if self.user else ""
        return "%s://%s%s:%d/%s" % (self.scheme, user, self._conn.host, self._conn.port, self.prefix)

    def probe(self, timeout, monotonic=time.monotonic):
        """A TCP connect to the broker and, with TLS, a verified handshake (no MQTT session: nothing is published)."""
        return probe_broker(self._conn.host, self._conn.port, self.scheme == "mqtts", timeout, self.tls_files,
                            monotonic=monotonic)

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

    def message_for(self, data, topic=None):
        """``(topic, payload, properties)`` of the QoS 1 PUBLISH that carries the signed batch ``data``: deflated
        and marked when ``compress`` makes it smaller, else as it is (properties None). ``send`` and the fleet
        simulator's one-thread sender (tools/fleet_mqtt.py) publish this."""
        topic = topic or self.topic_for(data)
        packed = deflated(data) if self.compress else None
        if packed is None:
            return topic, data, None
        props = Properties(PacketTypes.PUBLISH)
        props.PayloadFormatIndicator = 0  # bytes, not UTF-8
        props.UserProperty = (CONTENT_ENCODING, "deflate")
        return topic, packed, props

    def check_puback(self, code, topic):
        """``code``, a PUBACK's reason code, when it acknowledges the batch; else the ``UplinkError`` it means
        (no matching subscribers: retryable while ``require_subscribers``; the ``REJECTED`` codes: not retryable;
        any other failure: retryable), raised."""
        if code == NO_MATCHING_SUBSCRIBERS and self.require_subscribers:
            raise UplinkError("MQTT broker %s has no subscriber for %s; keeping the batch" % (self.describe(), topic),
                              retryable=True)
        if code >= 0x80:
            text = REJECTED.get(code)
            raise UplinkError("MQTT broker %s refused the batch: reason 0x%02x %s" % (
                self.describe(), code, text or "(unspecified)"), retryable=text is None, status=code)
        return code

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
        topic, payload, props = self.message_for(data, topic)
        info = conn.client.publish(topic, payload, qos=1, properties=props)
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
        self.counters["payload_bytes"] += len(payload)
        self.counters["signed_bytes"] += len(data)
        self.counters["deflated"] += payload is not data
        return self.check_puback(code, topic)

    def close(self):
        self._conn.stop()
