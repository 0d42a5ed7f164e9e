"""fleet-sim's MQTT sender: every simulated gateway's paho client driven from one thread (``edge-gateway fleet-sim``).

A thread per gateway, each blocked in ``MqttUplink.send`` while paho's own network thread per client waits for the
PUBACK, cost the simulator more CPU than the broker under a thousand batches a second: a hundred threads waking each
other, not work. Here one ``selectors`` loop owns every client through paho's external-loop API (``socket``,
``loop_read``, ``loop_write``, ``want_write``, ``loop_misc``) and also releases (or seals) the batches on schedule.

What goes on the wire is the agent's: each gateway is an ``MqttUplink`` (``Fleet.make_uplink``: its own MQTT v5
client, its callbacks, the messages paho holds dropped at every connect) whose PUBLISH is ``MqttUplink.message_for``
(the topic, the deflate and its user property) at QoS 1, and whose PUBACK reason code is judged by
``MqttUplink.check_puback`` (no matching subscribers: retried; refused: rejected, not acknowledged). Only the
waiting differs. As with ``send``, a gateway has one batch in flight, the batch is acknowledged only by its PUBACK,
and a lost connection or no PUBACK within ``--timeout`` is a retryable failure, retried after the gateway's backoff.
A gateway connects when it has something to send (a refused or unanswered connect is a failed attempt, backed
off); a cut-off gateway finishes its send in flight, closes its connection for the outage, and reconnects with its
backlog after it.

Not thread-safe: ``MqttFleetLoop.run`` is the only thread that touches the gateways and their clients.
"""

import dataclasses
import heapq
import selectors
import time

from paho.mqtt.enums import MQTTErrorCode

from gateway.core.backoff import Backoff
from gateway.core.errors import UplinkError

#: seconds between the sweeps that run paho's keepalive (``loop_misc``) and check the send and connect deadlines
SWEEP_S = 0.25
#: seconds between the checks whether every backlog is delivered, once the run stopped cutting batches
IDLE_CHECK_S = 0.05


class _InFlight:
    __slots__ = ("item", "info", "topic", "sent", "deadline", "generation")

    def __init__(self, item, info, topic, sent, deadline, generation):
        self.item, self.info, self.topic, self.sent = item, info, topic, sent
        self.deadline, self.generation = deadline, generation


class _Link:
    """One gateway's connection state in the loop: its uplink (client), the batch in flight, its backoff."""

    __slots__ = ("gw", "uplink", "client", "backoff", "inflight", "retry_at", "connect_deadline", "sock", "events",
                 "was_offline")

    def __init__(self, gw, uplink):
        self.gw, self.uplink, self.client = gw, uplink, uplink._conn.client
        self.backoff = Backoff(0.2, 5.0, rng=gw.rng)
        self.inflight = None
        self.retry_at = 0.0
        self.connect_deadline = None  # monotonic, while a connect waits for its CONNACK
        self.sock = None  # the socket registered with the selector
        self.events = 0
        self.was_offline = False

    @property
    def idle(self):
        return self.inflight is None and not self.gw.backlog


class MqttFleetLoop:
    """The gateways of a ``Fleet`` over MQTT, in the calling thread (``run``)."""

    def __init__(self, fleet):
        self.fleet = fleet
        self.timeout = fleet.plan.timeout
        self.sel = selectors.DefaultSelector()
        self.links = [_Link(g, fleet.make_uplink(g.gw)) for g in fleet.gateways]
        for link in self.links:
            link.client.on_socket_close = lambda client, userdata, sock, link=link: self._forget(link)
        self.timers = []  # (monotonic, n, link): look at the link again then
        self._n = 0
        self.stopping = False  # the drain is over: no new sends

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self, start, due):
        """Release ``due`` (``(seconds into the run, gateway index, make)``, in time order; ``make(wall)`` gives
        the sealed batch) until ``duration``, deliver, and stop after ``drain`` seconds more (a send in flight then
        gets up to ``timeout`` to finish). Returns when every backlog is delivered or the time is up."""
        fleet, plan, mono = self.fleet, self.fleet.plan, self.fleet.mono
        end = start + plan.duration
        drain_end = end + plan.drain
        for link in self.links:
            if link.gw.offline is not None:
                self._at(link.gw.offline[0], link)
                self._at(link.gw.offline[1], link)
        nxt = next(due, None)
        sweep_at = idle_at = start
        try:
            while True:
                now = mono()
                while nxt is not None and start + nxt[0] <= now < end:
                    t, i, make = nxt
                    fleet.producer_lag = max(fleet.producer_lag, now - start - t)
                    link = self.links[i]
                    link.gw.release(make(fleet.wall()))
                    self._step(link, now)
                    nxt = next(due, None)
                if now >= end and fleet.producing.is_set():
                    fleet.producing.clear()
                while self.timers and self.timers[0][0] <= now:
                    self._step(heapq.heappop(self.timers)[2], now)
                if now >= sweep_at:
                    sweep_at = now + SWEEP_S
                    self._sweep(now)
                if now >= end and now >= idle_at:
                    idle_at = now + IDLE_CHECK_S
                    if now >= drain_end:
                        self.stopping = True
                        if all(link.inflight is None for link in self.links) or now >= drain_end + self.timeout:
                            return
                    elif all(link.idle for link in self.links):
                        return
                wake = min(sweep_at, idle_at if now >= end else end)
                if nxt is not None and start + nxt[0] < end:
                    wake = min(wake, start + nxt[0])
                if self.timers:
                    wake = min(wake, self.timers[0][0])
                for key, mask in self.sel.select(max(0.0, wake - mono())):
                    link = key.data
                    if mask & selectors.EVENT_READ:
                        link.client.loop_read()
                        pending = getattr(link.sock, "pending", None)  # TLS: bytes already decrypted
                        while pending is not None and link.sock is not None and pending():
                            link.client.loop_read()
                    if mask & selectors.EVENT_WRITE and link.sock is not None:
                        link.client.loop_write()
                    self._sync(link)
                    self._step(link, mono())
        finally:
            self.close()

    def prepared(self, i, sealed):
        """``sealed`` (a batch of gateway ``i``) with its PUBLISH made now (``--preseal``: before the run)."""
        return dataclasses.replace(sealed, message=self.links[i].uplink.message_for(sealed.data))

    def close(self):
        """Disconnect every client (a clean DISCONNECT where the socket takes it) and close the selector."""
        for link in self.links:
            if link.sock is not None:
                link.client.disconnect()
            self._forget(link)
        self.sel.close()

    def _at(self, when, link):
        self._n += 1
        heapq.heappush(self.timers, (when, self._n, link))

    def _sweep(self, now):
        for link in self.links:
            if link.sock is not None:
                link.client.loop_misc()  # keepalive: PINGREQ when due, a lost broker noticed
                self._sync(link)
            if link.inflight is not None or link.connect_deadline is not None:
                self._step(link, now)

    # -- the selector's view of a client --------------------------------------------------------------------------
    def _sync(self, link):
        """Register the client's socket for reading, and for writing while paho has bytes it could not send."""
        sock = link.client.socket()
        if sock is not link.sock:
            self._forget(link)
            link.sock = sock
        if sock is None:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if link.client.want_write() else 0)
        if events != link.events:
            if link.events:
                self.sel.modify(sock, events, link)
            else:
                self.sel.register(sock, events, link)
            link.events = events

    def _forget(self, link):
        if link.sock is not None and link.events:
            self.sel.unregister(link.sock)
        link.sock, link.events = None, 0

    # -- one gateway's state machine ------------------------------------------------------------------------------
    def _step(self, link, now):
        """Move one gateway on: settle its send in flight, follow its outage, connect, publish its oldest batch."""
        gw, conn = link.gw, link.uplink._conn
        if link.inflight is not None and not self._settle(link, now):
            return
        if self.stopping:
            return
        if gw.is_offline(now):
            if not link.was_offline:
                link.was_offline = True
                link.connect_deadline = None
                if link.sock is not None:
                    link.client.disconnect()  # the outage: the connection goes
                    self._sync(link)
            return
        if link.was_offline:
            link.was_offline = False
            gw.backlog_at_reconnect = len(gw.backlog)
        if not gw.backlog:
            if gw.backlog_at_reconnect is not None and gw.caught_up_at is None:
                gw.caught_up_at = now
            return
        if now < link.retry_at:
            self._at(link.retry_at, link)
            return
        if not conn.connected:
            if link.connect_deadline is None:
                self._connect(link, now)
            elif link.sock is None or now >= link.connect_deadline:  # refused, closed, or no CONNACK in time
                link.connect_deadline = None
                gw.counts["attempts"] += 1
                self._failed(link, gw.backlog[0], UplinkError("MQTT broker %s not connected: %s" % (
                    link.uplink.describe(), conn.last_error), retryable=True), now)
            return
        link.connect_deadline = None
        self._publish(link, gw.backlog[0], now)

    def _connect(self, link, now):
        conn = link.uplink._conn
        try:
            link.client.connect(conn.host, conn.port, conn.keepalive)  # TCP connect; the CONNECT is queued
        except OSError as exc:
            link.gw.counts["attempts"] += 1
            conn.last_error = "cannot connect to %s:%d: %s" % (conn.host, conn.port, exc.strerror or exc)
            self._failed(link, link.gw.backlog[0], UplinkError("MQTT broker %s not connected: %s" % (
                link.uplink.describe(), conn.last_error), retryable=True), now)
            return
        link.connect_deadline = now + link.uplink.connect_timeout
        link.client.loop_write()
        self._sync(link)

    def _publish(self, link, item, now):
        gw, uplink = link.gw, link.uplink
        gw.counts["attempts"] += 1
        sent = self.fleet.wall()
        topic, payload, props = item.message or uplink.message_for(item.data)
        info = link.client.publish(topic, payload, qos=1, properties=props)  # written now unless the socket is full
        self._sync(link)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._failed(link, item, UplinkError("MQTT publish to %s failed: %s" % (uplink.describe(), info.rc),
                                                 retryable=True), now)
            return
        link.inflight = _InFlight(item, info, topic, sent, now + self.timeout, uplink._conn.generation)

    def _settle(self, link, now):
        """The send in flight: acknowledged, refused, lost with the connection, or past its deadline (True: it is
        settled, the gateway can go on), else still waiting (False)."""
        f, uplink = link.inflight, link.uplink
        if f.info.is_published():
            link.inflight = None
            code = uplink._acks.pop(f.info.mid, 0)
            try:
                uplink.check_puback(code, f.topic)
            except UplinkError as exc:
                self._failed(link, f.item, exc, now)
                return True
            link.gw.delivered(f.item, f.sent, self.fleet.wall())
            link.backoff.reset()
            return True
        lost = uplink._conn.generation != f.generation
        if not lost and now < f.deadline:
            return False
        link.inflight = None
        uplink._acks.pop(f.info.mid, None)
        why = "connection lost" if lost else "no PUBACK within %.1f s" % self.timeout
        self._failed(link, f.item, UplinkError("MQTT publish to %s: %s" % (uplink.describe(), why), retryable=True),
                     now)
        return True

    def _failed(self, link, item, exc, now):
        """A failed attempt to send ``item``: counted; a retryable one backs off, a rejected one is dropped."""
        if not link.gw.failed(item, exc):
            link.retry_at = now + link.backoff.next()
            self._at(link.retry_at, link)
