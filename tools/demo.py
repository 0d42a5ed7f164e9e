"""``edge-gateway demo``: the agent on an embedded default, with nothing to configure.

One simulated sensor board with ``--sensors`` sensors (``firmware_sim/line_node.py`` under MicroPython when
installed) talks to the agent over a real pseudo-terminal through pyserial; the agent batches, signs and commits to a SQLite store, and delivers to a
loopback reference receiver that verifies every batch (or to ``--uplink URL``). ``--store DIR`` keeps the key, the
trust store, the boot epoch and the queue in DIR, so a demo killed with SIGKILL resumes where it stopped; it also
makes and trusts an operator key there (``DIR/operator.pem``, ``DIR/operator.jwks.json``), so a script can sign
commands for the demo gateway and queue them at ``edge-gateway receive --operators DIR/operator.jwks.json`` (or the
built-in receiver) or publish them to a broker (README, "Driving the demo with commands").


The loopback receiver serves the fleet page (``backend/fleet``) on its ops listener; the demo prints its URL, and
with ``--serve`` keeps the receiver and the page up after the run until Ctrl-C.
"""

import asyncio
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile

from drivers.serial.adapter import SerialSource
from drivers.serial.protocols import LinesProtocol
from tools.sim.harness import PtyNode
from gateway.adapters import keys
from gateway.core import wire
from gateway.app.agent import Agent
from gateway.core.clock import SystemClock
from gateway.app.config import BatchSection
from gateway.core.errors import VerifyError
from gateway.core.pipeline import HEALTH_SENSOR
from backend.receiver import Receiver, ReceiverServer
from gateway.adapters.store import Store
from gateway.adapters.uplink import uplink_from_url

log = logging.getLogger(__name__)

GATEWAY_ID = "gw-demo"
UNITS = {"temp": "Cel", "hum": "%RH"}
DRAIN_S = 10  # after the stop, how long the demo keeps delivering what is queued


class BatchSaver:
    """Writes every committed batch as ``DIR/NNNNNN.cose``, numbering on from what DIR already holds."""

    def __init__(self, directory, jwks):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        existing = [int(f[:6]) for f in os.listdir(directory) if f.endswith(".cose") and f[:6].isdigit()]
        self.next = max(existing) + 1 if existing else 0
        keys.write_jwks(os.path.join(directory, "jwks.json"), jwks)

    def __call__(self, batch, store_id=None):
        path = os.path.join(self.directory, "%06d.cose" % self.next)
        self.next += 1
        with open(path, "wb") as f:
            f.write(batch.data)


def _prepare_dir(store_dir):
    """``(workdir, temporary)``: ``--store DIR``, or a new private temporary directory the demo removes at the end
    unless batches in it were not delivered."""
    if store_dir:
        os.makedirs(store_dir, mode=0o700, exist_ok=True)
        return store_dir, False
    return tempfile.mkdtemp(prefix="edge-gateway-demo-"), True


def _make_uplink(url):
    """``--uplink``: any URL the uplink registry takes (an http(s):// receiver, an mqtt(s)://HOST:PORT/PREFIX
    broker, a dir:///PATH spool). The built-in receiver is plain HTTP. A demo retries fast: 5 s per attempt,
    reconnects at most 2 s apart."""
    return uplink_from_url(url, timeout=5.0, retry_max_s=2.0)


def run_demo(args, out=sys.stdout):
    """Returns the summary dict; the CLI prints it and picks the exit code.

    The temporary directory goes at the end, unless it holds batches that were not delivered (an unreachable
    ``--uplink``): then it stays, and the summary says where and how to send them (``kept_in``)."""
    workdir, temporary = _prepare_dir(args.store)
    summary = None
    try:
        summary = asyncio.run(_demo(args, workdir, out))
        return summary
    finally:
        if temporary and not (summary and summary.get("kept_in")):
            shutil.rmtree(workdir, ignore_errors=True)


def _identity(workdir):
    """The demo gateway's key (kept in the store dir), its JWKS file and a trust store for the loopback receiver."""
    key, created = keys.load_or_create(os.path.join(workdir, "key.pem"))
    jwks = {"keys": [key.jwk(GATEWAY_ID)]}
    keys.write_jwks(os.path.join(workdir, "jwks.json"), jwks)
    return key, created, jwks, keys.TrustStore(jwks)


def _verifier(trust, say):
    """The agent's ``on_sent``: verify each delivered batch as a backend would, count and show it (one line of at
    most 80 columns: seq, the sensor readings and health records it carries, its size)."""
    verified = {"ok": 0, "rejected": 0, "readings": 0, "health": 0}

    def on_sent(batch):
        try:
            checked = wire.verify(batch.data, trust)
        except VerifyError as exc:
            verified["rejected"] += 1
            say("batch %4d  FAILED verification: %s" % (batch.seq, exc))
            return
        health = sum(1 for r in checked.records if r.get("n", "").split("/")[1:2] == [HEALTH_SENSOR])
        verified["ok"] += 1
        verified["readings"] += len(checked.records) - health
        verified["health"] += health
        say("batch %4d  %4d readings + %2d health  %6d bytes  delivered, verified%s" % (
            batch.seq, len(checked.records) - health, health, len(batch.data), "  ALARM" if batch.priority else ""))
    return on_sent, verified


def _stop_event(duration):
    """``(stop, interrupted)``: ``stop`` is set after ``duration`` or at SIGINT/SIGTERM; ``interrupted`` (a list)
    holds the signal when one came."""
    stop = asyncio.Event()
    interrupted = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda sig=sig: (interrupted.append(sig), stop.set()))
    loop.call_later(duration, stop.set)
    return stop, interrupted


async def _serve(server, say):
    """``--serve``: keep the receiver and its fleet page up until SIGINT or SIGTERM."""
    say("the run is over; the fleet page stays up until Ctrl-C:")
    say("  %s" % server.fleet_url)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await done.wait()


def _operators(store_dir):
    """``--store DIR``: the demo's operator key in DIR, trusted by the demo gateway (and its built-in receiver).
    ``(jwks path, operators, line to print)``, or ``(None, None, None)`` without ``--store``."""
    if not store_dir:
        return None, None, None
    from gateway.adapters.operators import load_operators
    from tools.operator_cmd import ensure_operator_key
    key, pem, jwks, created = ensure_operator_key(store_dir)
    return jwks, load_operators(jwks), "operator key %s (kid %s%s): commands signed with it are applied" % (
        pem, key.kid, ", new" if created else "")


def _downlink_config(workdir, url, operators_file):
    """A config for the demo's downlink (there is no file: ``config_set`` answers so), or None when the uplink
    carries no commands (a ``dir://`` spool)."""
    from gateway.adapters.uplink import uplink_class_for_url
    from gateway.app.config import from_dict
    cls = uplink_class_for_url(url)
    if not operators_file or not cls.downlink:
        return None
    return from_dict({"gateway": {"id": GATEWAY_ID, "state_dir": workdir}, "uplink": cls.config_from_url(url),
                      "downlink": {"operators": operators_file, "poll_s": 5.0}})


async def _demo(args, workdir, out):
    key, created, jwks, trust = _identity(workdir)
    say = (lambda *a: None) if args.json else (lambda text: print(text, file=out, flush=True))
    operators_file, operators, operators_line = _operators(args.store)
    server = None
    if args.uplink:
        url = args.uplink
    else:
        server = ReceiverServer(Receiver(os.path.join(workdir, "receiver.sqlite"), trust,
                                         operators=operators)).start()
        url = server.url
    clock = SystemClock(getattr(args, "clock", "auto"))
    store = Store(os.path.join(workdir, "queue.sqlite"), clock=clock)
    if store.recovered_from:
        say("store was corrupt; moved aside to %s" % store.recovered_from)
    saver = BatchSaver(args.save_batches, jwks) if args.save_batches else None
    node = PtyNode("line_node", ["--sensors", args.sensors, "--rate", args.rate, "--seed", args.seed,
                                 "--tick", int(bool(getattr(args, "tick_counter", False)))],
                   link=os.path.join(workdir, "tty-board"))
    node.start()
    source = SerialSource("board", node.path, LinesProtocol(units=UNITS), clock, baud=115200)
    on_sent, verified = _verifier(trust, say)
    agent = Agent(gw=GATEWAY_ID, key=key, store=store, uplink=_make_uplink(url), sources=[source], clock=clock,
                  batch=BatchSection(max_readings=500, max_age_s=1.0, time_quantum_s=0.1),
                  rng=random.Random(args.seed), backoff=(0.2, 5.0), on_commit=saver, on_sent=on_sent)
    quantities = ", ".join(sorted(UNITS)) + (", n (tick counter)" if getattr(args, "tick_counter", False) else "")
    say("edge-gateway demo: gateway %s, key %s%s; Ctrl-C stops" % (
        GATEWAY_ID, key.kid, " (new)" if created else ""))
    say("board: 1 simulated board, %d sensor%s (%s) at %g lines/s each," % (
        args.sensors, "" if args.sensors == 1 else "s", quantities, args.rate))
    say("       %s on %s" % (os.path.basename(node.python), node.slave_path))
    say("uplink: %s%s" % (url, "" if args.uplink else " (the built-in receiver)"))
    if server and server.fleet_url:
        say("fleet page: %s" % server.fleet_url)
    say("boot epoch %d: the batches below are numbered by seq in it" % agent.boot)
    stop, interrupted = _stop_event(args.duration)
    announcer = asyncio.create_task(_announce_stop(stop, say))
    downlink = None
    downlink_cfg = _downlink_config(workdir, url, operators_file)
    if downlink_cfg is not None:
        from gateway.app.downlink import start_downlink
        downlink = start_downlink(agent, downlink_cfg, stop.set)
        say(operators_line)
        if server:
            say("        queue them: edge-gateway command send --http %s FILE" % url)
    console = None
    if args.console:
        from gateway.app.console.serve import serve_console
        console = serve_console(agent, args.console, None, request_restart=stop.set)
        say("technician console on %s (115200 8N1; read-only: the demo has no config file)" % args.console)
    try:
        try:
            await agent.run(stop, drain_timeout=DRAIN_S)
        finally:
            announcer.cancel()
            if downlink is not None:
                from gateway.app.downlink import stop_downlink
                await stop_downlink(downlink)
            if console is not None:
                console.cancel()
                await asyncio.gather(console, return_exceptions=True)
            node.stop()
            store_depth = agent.depth()
            store.close()
        summary = _summary(args, out, say, agent, source, node, server, verified, store_depth, workdir, url)
        if server and args.serve and not interrupted:  # Ctrl-C during the run stops everything
            await _serve(server, say)
        return summary
    finally:
        if server:
            server.stop()
            server.receiver.close()


async def _announce_stop(stop, say):
    """Say why the demo has not exited yet: after the stop it still delivers what is queued, up to ``DRAIN_S``."""
    await stop.wait()
    say("stopping: delivering what is still queued, for at most %d s" % DRAIN_S)


def _summary(args, out, say, agent, source, node, server, verified, store_depth, workdir, url):
    """The counts, each with one meaning:

    * ``readings_generated``: readings the agent took in from the board (each line's values);
    * ``readings_bad_value``: of those, dropped because their value cannot travel;
    * ``readings_delivered``: sensor readings in delivered batches (no rules drop any in the demo, so when nothing
      is left in the queue, ``readings_generated - readings_bad_value``);
    * ``health_delivered``: health records (``health/<counter>``) the agent added to delivered batches;
    * ``readings_sent``: all records in delivered batches, ``readings_delivered + health_delivered``: the sum of
      the batch lines;
    * ``queue_left``: batches committed but not delivered when the demo stopped.
    """
    summary = {
        "gateway": GATEWAY_ID, "boot": agent.boot, "kid": agent.kid, "interpreter": os.path.basename(node.python),
        "readings_generated": agent.counters["readings_in"],
        "readings_bad_value": agent.counters["readings_bad_value"],
        "batches_sent": agent.counters["batches_sent"],
        "readings_sent": agent.counters["readings_sent"],
        "readings_delivered": verified["readings"],
        "health_delivered": verified["health"],
        "batches_verified": verified["ok"],
        "batches_rejected": verified["rejected"] + agent.counters["quarantined"],
        "queue_left": store_depth[0],
        "readings_left": store_depth[1],
        "serial_errors": {k: v for k, v in source.counters.items() if k.startswith("error.")},
    }
    if summary["queue_left"] or summary["batches_rejected"]:
        summary["kept_in"] = os.path.abspath(workdir)
    if server:
        stats = server.receiver.stats()
        summary["receiver"] = stats
        summary["batches_verified"] = stats["stored"] + stats["duplicates"]
        summary["batches_rejected"] = stats["rejected"]
    if args.save_batches:
        summary["saved_to"] = os.path.abspath(args.save_batches)
    if args.json:
        print(json.dumps(summary, sort_keys=True), file=out, flush=True)
        return summary
    say("done: %(readings_generated)d readings from the board, %(readings_bad_value)d dropped as bad values;"
        % summary)
    say("      %(batches_sent)d batches delivered: %(readings_delivered)d readings + %(health_delivered)d health "
        "records" % summary)
    say("      %(batches_verified)d verified, %(batches_rejected)d rejected, %(queue_left)d left in the queue"
        % summary)
    if summary["queue_left"]:
        say("NOT delivered: %(queue_left)d batches (%(readings_left)d records) stay in the queue in" % summary)
        say("  %s" % summary["kept_in"])
        say("to send them: edge-gateway demo --store %s \\" % summary["kept_in"])
        say("                  --uplink %s" % url)
    elif summary.get("kept_in"):
        say("rejected batches are kept in %s" % summary["kept_in"])
    return summary
