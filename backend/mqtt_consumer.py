"""The receiver's MQTT front: a shared-subscription consumer that acknowledges a batch only once it is stored.

``MqttConsumer`` subscribes with an MQTT v5 shared subscription ``$share/<group>/<prefix>/+/batches``
at QoS 1 with manual acknowledgements, so a message is acknowledged to the broker only after it was stored (201),
found already stored (200 duplicate, 409 conflict: kept apart) or rejected for good (4xx, counted by the receiver).

**Group commit.** paho's network thread verifies each message as it arrives (``Receiver.check``: the signature,
the strict decode) and hands it to a bounded queue; one writer thread takes what has arrived (up to
``max_group`` batches, waiting at most ``linger`` seconds for more after the first), stores the group in one
transaction (``Receiver.store_many``; on PostgreSQL one INSERT of the batch rows and one COPY of the records)
and then acknowledges each message, in the order they came (MQTT v5 section 4.6), after that COMMIT. A full
queue blocks the network thread, so the broker's socket pushes back instead of this process holding an unbounded
backlog. A message acknowledged on another connection than the one it came on would acknowledge a stranger
(packet ids are per connection), so a message of a connection since closed is stored but not acknowledged: the
broker redelivers it, and it is then a duplicate.

Nothing the broker delivers can stop the consumer:

* A 5xx (the receiver's database failed) is not acknowledged. The broker resends an unacknowledged QoS 1
  message only when the session resumes, so the consumer keeps a persistent session (``clean_start`` false,
  ``session_expiry`` seconds, a client id that is the same at every start of the same receiver) and, after a
  storage failure, reconnects after a capped, doubling delay (``redeliver``): the broker then redelivers
  every message it did not get an acknowledgement for.
* An exception escaping paho's callback would kill its network thread while the broker kept acknowledging
  publishers; one escaping the writer would stop acknowledging. Both are caught, counted
  (``consumer_errors``), logged at ERROR, not acknowledged, and followed by the same reconnect.

**Retiring.** While a member of a shared group is offline, Mosquitto keeps routing its share of the messages into
its session, and drops them when the session ends (expiry, or a DISCONNECT with session expiry 0), although the
publishers had their PUBACK (docs/backend.md, "Retiring a worker"). ``retire()`` leaves the group without that
loss: UNSUBSCRIBE (the broker stops routing new messages to this member; what it had already queued for it still
comes), store and acknowledge everything that arrives until nothing is unacknowledged and nothing has arrived for
``quiet`` seconds, then DISCONNECT with session expiry 0. If it cannot drain (no broker, a storage failure that
does not clear), it keeps the session and says so: a restart under the same client id finishes the job.

A message may carry the MQTT v5 user property ``content-encoding: deflate`` (Payload Format Indicator 0): its
payload is then the signed batch in a zlib stream, which ``Receiver.check`` inflates with the same bound as the
HTTP front (``backend/receiver.py``); a property naming another coding is a counted rejection.

It shares the paho connection helper and the MQTT URL parser with the gateway's uplink
(``gateway/adapters/uplink/mqtt.py``, the only module that imports paho); the import points from the backend
down to the adapters, as ``tests/unit/test_layers.py`` allows.
"""

import hashlib
import logging
import os
import queue
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
                 reconnect=(1, 10), session_expiry=3600, redeliver=(1.0, 30.0), max_group=32, linger=0.002):
        if not group or any(c in group for c in "/+#\0"):
            raise ValueError("shared subscription group must be one topic level, not %r" % (group,))
        if not 1 <= max_group <= 1000 or not 0 <= linger <= 1:
            raise ValueError("max_group must be 1..1000 and linger 0..1 s")
        self.receiver = receiver
        self.topic = "$share/%s/%s/+/batches" % (group, topic_prefix.strip("/"))
        self.client_id = client_id or consumer_client_id(group, receiver.db_path)
        self._conn = Connection(host, port, self.client_id, username, password, tls, ca_file, cert_file, key_file,
                                 keepalive, "5", manual_ack=True, reconnect=reconnect, session_expiry=session_expiry)
        self._conn.subscriber(self._on_connect, self._on_message, self._on_subscribe)
        self._conn.client.on_unsubscribe = self._on_unsubscribe
        self.counters = {"messages": 0, "acked": 0, "not_acked": 0, "consumer_errors": 0, "ack_failures": 0,
                         "redeliveries": 0, "subscribed": 0, "groups": 0, "stale": 0}
        self.max_group, self.linger = max_group, linger
        self._subscribed = threading.Event()
        self._unsubscribed = threading.Event()
        # exact doubling (no jitter): one consumer's reconnects need no spreading, and tests can count on them
        self._backoff = Backoff(redeliver[0], redeliver[1], jitter=0.0)
        self._cond = threading.Condition()
        self._redeliver_at = None  # monotonic time of the next reconnect, or None
        self._closed = False
        self._retiring = False
        self._supervisor = None
        # the writer: messages verified by paho's thread, in arrival order, waiting for their group's COMMIT (one
        # group's worth: the next group fills while one commits, and a decoded 100-reading batch is ~40 KB)
        self._queue = queue.Queue(max_group)
        self._writer = None
        self._writer_stop = threading.Event()
        self._unacked = 0  # messages of the current connection not acknowledged yet (the drain waits for 0)
        self._last_arrival = 0.0  # monotonic

    @classmethod
    def from_url(cls, url, receiver, group="receivers", **kw):
        opts = parse_url(url)
        opts.update(kw)
        return cls(receiver, group=group, **opts)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if self._conn.on_connect(reason_code):
            with self._cond:
                self._unacked = 0  # a new connection: the broker redelivers whatever the old one did not ack
            if self._retiring:  # the connection dropped while retiring: the UNSUBSCRIBE may not have arrived
                client.unsubscribe(self.topic)
            else:  # also when the session is present: the broker may have lost it
                client.subscribe(self.topic, qos=1)
        else:
            log.warning("mqtt consumer: broker refused the connection: %s", reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        if any(rc.is_failure for rc in reason_codes):
            log.error("mqtt consumer: subscription to %s refused: %s", self.topic, reason_codes)
            return
        self.counters["subscribed"] += 1
        self._subscribed.set()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        self._unsubscribed.set()

    # -- paho's network thread: verify, then queue for the writer ---------------------------------------------------
    def _on_message(self, client, userdata, msg):
        self.counters["messages"] += 1
        generation = self._conn.generation
        with self._cond:
            self._unacked += 1
            self._last_arrival = time.monotonic()
        try:
            checked = self.receiver.check(msg.payload, content_encoding_of(msg.properties))
        except Exception as exc:  # deliberate catch-all: the one place an exception would stop the consumer
            # Escaping here kills paho's network thread while the broker keeps acknowledging publishers, and
            # check() answers every input with a status, so this is our bug: count it, log it at ERROR, keep the
            # message unacknowledged (the broker still owns it) and reconnect later to have it redelivered.
            self.counters["consumer_errors"] += 1
            log.error("mqtt consumer: internal error on a message from %s (not acknowledged): %s", msg.topic, exc,
                      exc_info=True)
            self._schedule_redelivery()
            return
        item = (msg, generation, checked)
        while True:  # bounded: a full queue pushes back on the broker's socket, but never blocks a stop
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if self._writer_stop.is_set():
                    return  # not acknowledged: the broker redelivers it to the next session

    # -- the writer thread: one transaction per group, then the acknowledgements --------------------------------------
    def _take_group(self):
        """The next group: the oldest waiting message, then what arrives within ``linger`` of it, up to
        ``max_group``. None once stopping (what is still queued is not acknowledged: the broker redelivers it)."""
        while not self._writer_stop.is_set():  # stopping: what is still queued stays the broker's
            try:
                group = [self._queue.get(timeout=0.2)]
                break
            except queue.Empty:
                pass
        else:
            return None
        deadline = time.monotonic() + self.linger
        while len(group) < self.max_group:
            left = deadline - time.monotonic()
            try:
                group.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return group

    def _write(self):
        while True:
            group = self._take_group()
            if group is None:
                return
            try:
                self._commit(group)
            except Exception as exc:  # deliberate catch-all: an escape would stop every acknowledgement
                self.counters["consumer_errors"] += 1
                log.error("mqtt consumer: internal error storing %d batches (not acknowledged): %s", len(group), exc,
                          exc_info=True)
                self._schedule_redelivery()

    def _commit(self, group):
        verified = [checked[1:] for _, _, checked in group if checked[0] is None]
        stored = iter(self.receiver.store_many(verified) if verified else ())
        self.counters["groups"] += 1
        for msg, generation, checked in group:
            status, body = next(stored) if checked[0] is None else checked
            if status >= 500:
                # Not acknowledged: the broker still owns it and redelivers it when the session resumes.
                self.counters["not_acked"] += 1
                log.error("mqtt consumer: could not store a batch from %s (%s); not acknowledged", msg.topic, body)
                self._schedule_redelivery()
                continue
            self._ack(msg, generation)
            if status < 300:
                with self._cond:
                    self._backoff.reset()

    def _ack(self, msg, generation):
        # Under the connection's lock: a disconnect bumps its generation under the same lock, so a packet id of
        # a closed connection is never acknowledged on the next one.
        with self._conn.cond:
            if generation != self._conn.generation:
                self.counters["stale"] += 1  # stored; the broker redelivers it, and it is a duplicate then
                return
            ok = self._conn.client.ack(msg.mid, msg.qos) == MQTTErrorCode.MQTT_ERR_SUCCESS
        if ok:
            self.counters["acked"] += 1
            with self._cond:
                self._unacked = max(0, self._unacked - 1)
                self._cond.notify_all()
        else:  # the connection is gone: the broker redelivers it on the next session, and it is a duplicate then
            self.counters["ack_failures"] += 1

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
        if self._writer is None:
            self._writer_stop.clear()
            self._writer = threading.Thread(target=self._write, name="mqtt-consumer-writer", daemon=True)
            self._writer.start()
        self._conn.start()
        self._subscribed.wait(wait)
        return self

    def wait_subscribed(self, timeout):
        return self._subscribed.wait(timeout)

    def retire(self, quiet=1.0, timeout=60.0):
        """Leave the shared group for good without losing what the broker routed here (see the module's
        docstring): UNSUBSCRIBE, drain (store and acknowledge) until nothing is unacknowledged and nothing has
        arrived for ``quiet`` seconds, then DISCONNECT with session expiry 0. Returns True when the session
        ended drained; False when it could not drain within ``timeout`` seconds: the session is then kept (a
        restart under the same client id resumes it) and the consumer is stopped either way."""
        deadline = time.monotonic() + timeout
        self._retiring = True
        drained = False
        if self._conn.wait_connected(max(0.0, deadline - time.monotonic())):
            self._unsubscribed.clear()
            self._conn.client.unsubscribe(self.topic)
            if self._unsubscribed.wait(max(0.0, deadline - time.monotonic())):
                drained = self._drain(quiet, deadline)
        if drained:
            log.info("mqtt consumer: retired from %s: drained, session ended", self.topic)
        else:
            log.error("mqtt consumer: could not drain %s within %.0f s (%d unacknowledged); the session is kept: "
                      "start this worker again under client id %s to finish", self.topic, timeout, self._unacked,
                      self.client_id)
        self.stop(end_session=drained)
        return drained

    def _drain(self, quiet, deadline):
        with self._cond:
            while True:
                now = time.monotonic()
                idle = self._unacked == 0 and self._redeliver_at is None and self._queue.empty()
                if idle and now - self._last_arrival >= quiet and self._conn.connected:
                    return True
                if now >= deadline:
                    return False
                self._cond.wait(min(deadline - now, max(0.05, quiet - (now - self._last_arrival)), 0.2))

    def stop(self, end_session=False):
        """Disconnect. The session stays on the broker for ``session_expiry`` seconds (a restart resumes it)
        unless ``end_session``: then the broker forgets it, with whatever it still held for this consumer (use
        ``retire`` to leave a shared group without loss)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.join(10)
        writer, self._writer = self._writer, None
        self._writer_stop.set()
        if writer is not None:
            writer.join(30)  # the group in hand commits and is acknowledged; the rest stays the broker's
        self._conn.stop(end_session)
