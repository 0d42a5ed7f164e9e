"""What every field scenario shares: a real backend on loopback, a real agent, a relay that cuts the link, and a
ledger of what the agent committed.

* ``Env`` makes a fresh key and trust store, a real ``Receiver`` behind a ``ReceiverServer`` on 127.0.0.1, and
  builds a real ``Agent`` (SQLite store, signing, ``HttpUplink``) pointed at a ``Relay`` in front of the receiver.
* ``Relay`` is a real HTTP proxy on 127.0.0.1. ``set_up(False)`` cuts the link: requests are read and the
  connection is closed without an answer, so the agent sees a dead link, keeps everything and backs off (real
  sleeps). A ``hook(body)`` can drop a request or its answer, and the attacker in ``reserve`` injects through it.
* Simulated time: the agent's tick sleeps through its clock (``clock.sleep``). The driver moves the ``FakeClock``
  and then waits until the tick that move woke has run (``await clock.parked()``), so the rules' tick (stale
  sensors, heartbeats) and the batcher's ``max_age`` see every simulated step the driver chose, with no real
  waiting and whatever the machine's speed.
* ``Ledger`` is the agent's ``on_commit``/``on_sent``: each committed batch with its record count, its priority and
  the real time of the commit, to compare with what the receiver stored.
"""

import asyncio
import http.client
import json
import logging
import os
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gateway.adapters import keys
from gateway.core import wire
from gateway.app.agent import Agent
from gateway.app.config import BatchSection
from backend.receiver import Receiver, ReceiverServer
from gateway.core.rules import RuleEngine
from gateway.adapters.store import Store
from gateway.adapters.uplink.http import HttpUplink
from gateway.core.clock import FakeClock
from gateway.core.model import Event

log = logging.getLogger(__name__)


def rule_engine(rules):
    """The agent's rules for a scenario: the real ``RuleEngine``, with the agent's event type."""
    return RuleEngine(rules, event_factory=Event)


class Ledger:
    """What the agent committed and sent: ``batches[(boot, seq)] = dict(prio, records, readings, t_commit)``."""

    def __init__(self, trust):
        self.trust = trust
        self.batches = {}
        self.sent = []

    def on_commit(self, batch, store_id=None):
        records = wire.verify(batch.data, self.trust).records
        self.batches[batch.key] = {"prio": batch.priority, "records": len(records), "readings": batch.readings,
                                   "events": batch.events, "t_commit": time.time(),
                                   "names": [r["n"] for r in records]}

    def on_sent(self, batch):
        self.sent.append(batch.key)

    def records(self):
        return sum(b["records"] for b in self.batches.values())


class _RelayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        log.debug("relay: " + fmt, *args)

    def do_POST(self):
        relay = self.server.relay
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if (self.headers.get("Content-Encoding") or "").strip().lower() == "deflate":
            # The relay decodes hop-by-hop compression (as a proxy may), so a hook and the receiver see the signed
            # COSE bytes; the gateway's batches are well-formed deflate streams, bounded by the batch limit.
            body = zlib.decompress(body)
        if not relay.up:
            relay.count("cut")
            self.close_connection = True
            return
        action = relay.hook(body) if relay.hook else "forward"
        if action == "drop_request":
            relay.count("dropped_requests")
            self.close_connection = True
            return
        status, headers, answer = relay.forward(body, self.headers.get("Content-Type"))
        if action == "drop_response":
            relay.count("dropped_responses")
            self.close_connection = True
            return
        relay.count("forwarded")
        self.send_response(status)
        for k, v in headers:
            if k.lower() in ("content-type", "retry-after"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


class Relay:
    """A real HTTP proxy on 127.0.0.1 in front of ``upstream`` (a receiver URL); its link can be cut."""

    def __init__(self, upstream, hook=None):
        self.upstream = upstream
        self.hook = hook
        self.up = True
        self.counters = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        host_port = upstream.split("//", 1)[1].split("/", 1)[0]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _RelayHandler)
        self.httpd.daemon_threads = True
        self.httpd.relay = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="relay", daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "http://127.0.0.1:%d/v1/batches" % self.httpd.server_address[1]

    def count(self, key, n=1):
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def set_up(self, up):
        self.up = bool(up)

    def forward(self, body, content_type=None):
        """POST ``body`` upstream on this thread's own connection; returns (status, headers, answer bytes)."""
        conn = getattr(self._local, "conn", None)
        for attempt in (0, 1):
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                conn.request("POST", "/v1/batches", body=body,
                             headers={"Content-Type": content_type or wire.HTTP_CONTENT_TYPE})
                resp = conn.getresponse()
                return resp.status, resp.getheaders(), resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class Env:
    """A workdir with a key, a trust store, a real receiver and its relay; ``agent(...)`` builds the gateway."""

    def __init__(self, name, workdir, hook=None):
        self.gw = "gw-" + name
        self.workdir = workdir
        self.key = keys.SigningKey.generate()
        self.jwks = {"keys": [self.key.jwk(self.gw)]}
        keys.write_jwks(os.path.join(workdir, "jwks.json"), self.jwks)
        self.trust = keys.TrustStore(self.jwks)
        self.receiver = Receiver(os.path.join(workdir, "receiver.sqlite"), self.trust)
        self.server = ReceiverServer(self.receiver).start()
        self.relay = Relay(self.server.url, hook)
        self.ledger = Ledger(self.trust)
        self.store = None
        self.clock = None

    def agent(self, clock, sources, rules, batch=None, backoff=(0.05, 0.5), seed=1, health_interval=3600.0,
              actions=None):
        import random
        self.clock = clock
        self.store = Store(os.path.join(self.workdir, "queue.sqlite"), clock=clock)
        return Agent(gw=self.gw, key=self.key, store=self.store, uplink=HttpUplink(self.relay.url, timeout=5.0),
                     sources=sources, clock=clock, rules=rules,
                     batch=batch or BatchSection(max_readings=500, max_age_s=60.0, time_quantum_s=1.0),
                     rng=random.Random(seed), backoff=backoff, health_interval=health_interval,
                     on_commit=self.ledger.on_commit, on_sent=self.ledger.on_sent, actions=actions)

    async def run(self, agent, driver, ready=(), drain_timeout=20.0):
        """Run the agent until ``driver()`` returns, then drain the queue; returns the driver's result."""
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop, drain_timeout=drain_timeout))
        try:
            for event in ready:
                await asyncio.wait_for(event.wait(), 10.0)
            result = await driver()
        finally:
            flow = asyncio.create_task(self._time_flows())
            stop.set()
            try:
                await task
            finally:
                flow.cancel()
        return result

    async def _time_flows(self, step=0.25, most=5.0):
        """While the agent drains, simulated time goes on a little (``most`` seconds at ``step`` per 50 real ms): a
        suspect batch waits out its own retry delay on the agent's clock (``gateway.core.poison``), which would
        never run out on a clock stopped at the driver's last step. A few seconds: no sensor goes stale meanwhile."""
        if not isinstance(self.clock, FakeClock):  # race-tracking runs on real time
            return
        moved = 0.0
        while moved < most:
            await asyncio.sleep(0.05)
            self.clock.advance(step)
            moved += step

    # -- what the backend has --------------------------------------------------------------------------------
    def stored_batches(self):
        """``[(seq, received)]`` in the order the receiver stored them."""
        return self.receiver.query("SELECT seq, received FROM batches WHERE gw = ? ORDER BY received, seq",
                                   (self.gw,))

    def records(self, like="%"):
        """``[(seq, n, t, v, vs)]`` of records whose name (without the gateway prefix) matches ``like``."""
        rows = self.receiver.query("SELECT seq, n, t, COALESCE(v, vb), vs FROM records WHERE gw = ? AND n LIKE ? "
                                   "ORDER BY seq, rowid", (self.gw, self.gw + "/" + like))
        cut = len(self.gw) + 1
        return [(s, n[cut:], t, v, vs) for s, n, t, v, vs in rows]

    def delivery(self):
        """Compare the ledger with the receiver: every committed batch stored exactly once, nothing else."""
        stored = {s: r for s, r in self.receiver.query(
            "SELECT seq, records FROM batches WHERE gw = ?", (self.gw,))}
        committed = {seq: b["records"] for (boot, seq), b in self.ledger.batches.items()}
        missing = sorted(set(committed) - set(stored))
        unexpected = sorted(set(stored) - set(committed))
        wrong = sorted(s for s in set(committed) & set(stored) if committed[s] != stored[s])
        return {"batches_committed": len(committed), "batches_stored": len(stored),
                "records_committed": sum(committed.values()), "records_stored": sum(stored.values()),
                "batches_missing": len(missing), "batches_unexpected": len(unexpected),
                "batches_wrong_count": len(wrong)}

    def close(self):
        self.relay.stop()
        self.server.stop()
        self.receiver.close()
        if self.store is not None:
            self.store.close()


def report(args, out, summary, lines):
    """Print the human summary, or with ``--json`` one JSON object."""
    if getattr(args, "json", False):
        print(json.dumps(summary, sort_keys=True), file=out, flush=True)
    else:
        for line in lines:
            print(line, file=out, flush=True)
        print("outcome: %s" % ("OK" if summary["ok"] else "FAILED: " + ", ".join(summary.get("failed", []))),
              file=out, flush=True)


def checks(summary, conditions):
    """``conditions``: list of (name, bool). Sets ``ok`` and ``failed`` in ``summary``."""
    failed = [name for name, good in conditions if not good]
    summary["ok"] = not failed
    summary["failed"] = failed
    summary["checks"] = [name for name, _ in conditions]
    return summary
