"""``edge-gateway fleet-sim``: many simulated gateways in one process, sending real signed batches to a backend.

Each simulated gateway has its own Ed25519 key (derived from ``--seed`` and its id, so a second run with the same
seed has the same keys: enrol once, run many times), enrolled in the JWK Set the simulator writes (``--trust``).
Each cuts a batch of ``--records`` readings every ``1 / --rate`` seconds, sealed as the agent seals them
(``gateway.core.senml.encode_records``, ``gateway.core.wire.encode_payload`` and ``Signer``), into an in-memory
backlog, and sends its backlog oldest first through the agent's own uplinks (``gateway.adapters.uplink``: MQTT at
QoS 1, the PUBACK is the acknowledgement; HTTP, a 2xx is). A batch leaves the backlog only once acknowledged.
Over MQTT one thread drives every gateway's client and releases the batches (``tools/fleet_mqtt.py``); over HTTP
each gateway has its sender thread and a producer thread cuts the batches.

``--cut-share F --cut-at S --cut-for S`` cuts a share of the gateways off (their connection closed) from ``S``
seconds into the run for ``S`` seconds; they keep cutting batches meanwhile and reconnect with that backlog: the
reconnect storm after a regional outage. The report says how long the storm took to drain.

Bounded: at most ``LIMITS`` gateways, seconds, batches per second and records; a backlog holds at most
``--max-backlog`` batches (the oldest are dropped beyond, counted). After ``--duration`` the gateways stop
cutting and have ``--drain`` seconds to deliver what they hold; what is left is reported as ``pending``.

The report (``--json``: one JSON object) counts what was made, sent, acknowledged, rejected, dropped and left, so
loss and duplicates can be counted against the backend's database; ``--acked FILE`` lists every acknowledged batch
(``gw,boot,seq,records,cut,sent,acked``, wall-clock seconds) for an exact comparison. Exit status 0 when every
batch made was acknowledged, 1 otherwise, 2 for a usage error.

The keys are simulation keys: anyone who knows the seed can sign as these gateways. Never put the simulator's
trust store in front of a backend that takes real gateways' data.
"""

import csv
import hashlib
import heapq
import json
import logging
import random
import sys
import threading
import time
from collections import deque
import dataclasses
from dataclasses import dataclass

from gateway.adapters import keys
from gateway.adapters.uplink import uplink_class_for_url
from gateway.core import senml, wire
from gateway.core.backoff import Backoff
from gateway.core.errors import KeyFileError, UplinkError
from gateway.core.model import Reading
from gateway.core.redact import redact_url

#: the bounds of one simulator process (over MQTT one socket per gateway, over HTTP one sender thread per gateway)
LIMITS = {"gateways": 2000, "duration": 3600.0, "rate": 100.0, "records": 1000, "max_backlog": 1_000_000,
          "presealed": 200_000}
#: marks a JWK Set this simulator wrote: it overwrites only such a file
MARKER = "edge-gateway fleet-sim"
SENSORS = 10  # sensors per gateway; a batch's readings go round them


@dataclass(frozen=True)
class Plan:
    gateways: int
    rate: float          # batches per second per gateway
    records: int         # readings per batch
    duration: float      # seconds of cutting batches
    seed: int = 1
    boot: int = 1
    prefix: str = "sim"
    cut_share: float = 0.0
    cut_at: float = 0.0
    cut_for: float = 0.0
    drain: float = 30.0  # seconds after ``duration`` to deliver the backlogs
    max_backlog: int = 10_000
    timeout: float = 10.0
    preseal: bool = False  # seal every batch of the run before it starts (see ``Fleet.run``)

    def check(self):
        """``ValueError`` naming the flag, for a plan outside ``LIMITS``."""
        for name, low in (("gateways", 1), ("rate", 0), ("records", 1), ("duration", 0), ("max_backlog", 1)):
            value = getattr(self, name)
            inside = (0 < value if low == 0 else low <= value) and value <= LIMITS[name]
            if not inside:
                raise ValueError("--%s must be %s %s and at most %s, not %s" % (
                    name.replace("_", "-"), "above" if low == 0 else "at least", low, LIMITS[name], value))
        if not 0.0 <= self.cut_share <= 1.0:
            raise ValueError("--cut-share is a fraction between 0 and 1, not %s" % self.cut_share)
        if self.cut_share and (self.cut_for <= 0 or self.cut_at < 0 or self.cut_at + self.cut_for > self.duration):
            raise ValueError("--cut-at and --cut-for must put the outage inside --duration (%s s)" % self.duration)
        if not 0 <= self.drain <= LIMITS["duration"] or not 0 < self.timeout <= 300:
            raise ValueError("--drain must be 0..%d s and --timeout 0..300 s" % LIMITS["duration"])
        if not self.prefix or any(c in self.prefix for c in "/+#\0 "):
            raise ValueError("--prefix must be one topic level, not %r" % (self.prefix,))
        if self.preseal and self.gateways * self.rate * self.duration > LIMITS["presealed"]:
            raise ValueError("--preseal holds the whole run in memory: at most %d batches, not %d" % (
                LIMITS["presealed"], self.gateways * self.rate * self.duration))

    def schedule(self):
        """``(seconds into the run, gateway index)`` of every cut, in time order: each gateway cuts every
        ``1 / rate`` seconds from a seeded phase."""
        period = 1.0 / self.rate
        rng = random.Random(self.seed)
        due = [(rng.uniform(0, period), i) for i in range(self.gateways)]
        heapq.heapify(due)
        while due[0][0] < self.duration:
            yield due[0]
            heapq.heapreplace(due, (due[0][0] + period, due[0][1]))

    def gateway_ids(self):
        return ["%s-%04d" % (self.prefix, i) for i in range(self.gateways)]

    def cut_off(self):
        """The indexes of the gateways the outage cuts off (seeded)."""
        n = round(self.gateways * self.cut_share)
        return set(random.Random(self.seed).sample(range(self.gateways), n)) if n else set()


def gateway_key(seed, gw):
    """A gateway's simulation key: the same for the same seed and id."""
    return keys.SigningKey.from_seed(hashlib.sha256(b"fleet-sim\0%d\0%s" % (seed, gw.encode())).digest())


def enroll(path, plan):
    """Write the JWK Set of the plan's gateways to ``path`` (refusing a file this simulator did not write)."""
    try:
        existing = keys.read_jwks(path)
    except KeyFileError as exc:
        raise KeyFileError("%s; give --trust a new file" % exc) from None
    if existing["keys"] and existing.get("written_by") != MARKER:
        raise KeyFileError("trust store %s exists and was not written by fleet-sim; refusing to overwrite it (give "
                           "--trust a new file)" % path)
    jwks = [gateway_key(plan.seed, gw).jwk(gw) for gw in plan.gateway_ids()]
    keys.write_jwks(path, {"keys": jwks, "written_by": MARKER})
    return len(jwks)


@dataclass(frozen=True, slots=True)
class Sealed:
    seq: int
    data: bytes
    records: int
    cut: float  # wall clock
    message: tuple | None = None  # with --preseal over MQTT: its PUBLISH made before the run (tools/fleet_mqtt.py)


class SimGateway:
    """One simulated gateway: cuts and seals batches (``cut``) and delivers its backlog (over HTTP ``run``, its
    thread; over MQTT ``tools.fleet_mqtt`` drives it)."""

    def __init__(self, gw, plan, fleet, offline=None):
        self.gw, self.plan, self.fleet = gw, plan, fleet
        self.signer = wire.Signer(gateway_key(plan.seed, gw))
        self.rng = random.Random("%d/%s" % (plan.seed, gw))
        self.values = [20.0 + self.rng.uniform(-5, 5) for _ in range(SENSORS)]
        self.seq = 0
        self.backlog = deque()
        self.cond = threading.Condition()
        self.offline = offline  # (from, until) on the monotonic clock, or None
        self.uplink = None
        self.acked = []  # (seq, records, cut, sent, acked)
        self.counts = {"made": 0, "attempts": 0, "rejected": 0, "dropped": 0}
        self.failures = {}
        self.backlog_at_reconnect = None
        self.caught_up_at = None  # monotonic: when the backlog first ran empty after the outage

    # -- cutting (the fleet's producer thread) ------------------------------------------------------------------
    def cut(self, wall):
        """Seal one batch (``seal``) and put it in the backlog."""
        self.release(self.seal(wall))

    def seal(self, wall):
        """One sealed batch of ``records`` readings spread over the last batch interval ending at ``wall``."""
        plan = self.plan
        interval = 1.0 / plan.rate
        readings = []
        for j in range(plan.records):
            s = j % SENSORS
            self.values[s] += self.rng.uniform(-0.05, 0.05)
            readings.append(Reading("s%02d" % s, "temp", round(self.values[s], 2), "Cel",
                                    wall - interval + interval * (j + 1) / plan.records, 0.01))
        self.seq += 1
        records = senml.encode_records(readings, (), self.gw + "/", time_quantum=0.001)
        data = self.signer(wire.encode_payload(self.gw, plan.boot, self.seq, True, records))
        return Sealed(self.seq, data, len(records), wall)

    def release(self, sealed):
        """Put a sealed batch in the backlog (the oldest goes beyond ``max_backlog``, counted)."""
        plan = self.plan
        with self.cond:
            self.backlog.append(sealed)
            self.counts["made"] += 1
            if len(self.backlog) > plan.max_backlog:
                self.backlog.popleft()
                self.counts["dropped"] += 1
            self.cond.notify()

    # -- delivering (one thread per gateway) --------------------------------------------------------------------
    def is_offline(self, now):
        return self.offline is not None and self.offline[0] <= now < self.offline[1]

    def _close(self):
        if self.uplink is not None:
            self.uplink.close()
            self.uplink = None

    def run(self):
        fleet = self.fleet
        backoff = Backoff(0.2, 5.0, rng=self.rng)
        was_offline = False
        try:
            while not fleet.stopped.is_set():
                now = fleet.mono()
                if self.is_offline(now):
                    if not was_offline:
                        was_offline = True
                        self._close()  # the outage: the connection goes
                    fleet.stopped.wait(min(0.1, self.offline[1] - now))
                    continue
                with self.cond:
                    if was_offline:
                        was_offline = False
                        self.backlog_at_reconnect = len(self.backlog)
                    if not self.backlog:
                        if self.backlog_at_reconnect is not None and self.caught_up_at is None:
                            self.caught_up_at = now
                        if fleet.producing.is_set():
                            self.cond.wait(0.2)
                            continue
                        return  # drained after the last cut
                    item = self.backlog[0]
                if not self._send(item, backoff):
                    fleet.stopped.wait(backoff.next())
        finally:
            self._close()

    def _send(self, item, backoff):
        fleet = self.fleet
        if self.uplink is None:
            self.uplink = fleet.make_uplink(self.gw)
        self.counts["attempts"] += 1
        sent = fleet.wall()
        try:
            self.uplink.send(item.data)
        except UplinkError as exc:
            return self.failed(item, exc)
        self.delivered(item, sent, fleet.wall())
        backoff.reset()
        return True

    def failed(self, item, exc):
        """Count a send of ``item`` that failed with ``exc`` (an ``UplinkError``); a rejection takes the batch out
        of the backlog unacknowledged (the agent would quarantine it). False when the batch is to be retried."""
        reason = "status_%s" % exc.status if exc.status else ("retryable" if exc.retryable else "rejected")
        self.failures[reason] = self.failures.get(reason, 0) + 1
        if exc.retryable:
            return False
        self.counts["rejected"] += 1
        self._pop(item)
        return True

    def delivered(self, item, sent, acked):
        """``item`` was acknowledged (wall clock: ``sent``, ``acked``): recorded, and out of the backlog."""
        self.acked.append((item.seq, item.records, item.cut, sent, acked))
        self._pop(item)

    def _pop(self, item):
        with self.cond:
            if self.backlog and self.backlog[0] is item:  # unless the bound dropped it meanwhile
                self.backlog.popleft()


class Fleet:
    """The gateways of one plan, and what delivers them: over MQTT one loop (``tools.fleet_mqtt``), over HTTP a
    thread per gateway and a producer that cuts batches on schedule."""

    def __init__(self, plan, uplink_url, wall=time.time, mono=time.monotonic):
        plan.check()
        self.plan, self.url, self.wall, self.mono = plan, uplink_url, wall, mono
        self.uplink_class = uplink_class_for_url(uplink_url)  # ValueError for an unknown scheme
        self.uplink_class.from_url(uplink_url).close()  # ValueError for a bad URL, before any thread starts
        self.stopped = threading.Event()
        self.producing = threading.Event()
        self.start = None
        cut = plan.cut_off()
        self.gateways = [SimGateway(gw, plan, self) for gw in plan.gateway_ids()]
        self.cut_ids = [g.gw for i, g in enumerate(self.gateways) if i in cut]
        self._cut_index = cut
        self.producer_lag = 0.0

    def make_uplink(self, gw):
        extra = {"gw": gw} if self.uplink_class.kind == "mqtt" else {}  # the topic names the gateway
        return self.uplink_class.from_url(self.url, timeout=self.plan.timeout, retry_max_s=2.0, **extra)

    def run(self):
        """Cut (or with ``preseal``, release) every gateway's batches on schedule while they are delivered (over
        MQTT by one loop, over HTTP by the gateways' threads); returns the report.

        ``preseal``: every batch of the run is sealed before the clock starts (readings timed as planned from the
        moment sealing began), and the run only releases them on schedule. The sealing (SenML encoding and the
        signature, about as much CPU a batch as a worker spends storing it) then does not share the cores with
        the backend under test, as a real fleet's sealing runs on the gateways. Over MQTT each batch's PUBLISH
        (``MqttUplink.message_for``: its deflate) is made then too, for the same reason."""
        plan = self.plan
        presealed = loop = None
        if self.uplink_class.kind == "mqtt":  # one thread drives every gateway's client (tools/fleet_mqtt.py)
            from tools.fleet_mqtt import MqttFleetLoop
            loop = MqttFleetLoop(self)
        cpu = time.process_time()
        if plan.preseal:
            base = self.wall()
            presealed = [(t, i, self.gateways[i].seal(base + t)) for t, i in plan.schedule()]
            if loop is not None:
                presealed = [(t, i, loop.prepared(i, sealed)) for t, i, sealed in presealed]
        self.seal_cpu_s = time.process_time() - cpu
        cpu = time.process_time()
        self.start = start = self.mono()
        for i in self._cut_index:
            self.gateways[i].offline = (start + plan.cut_at, start + plan.cut_at + plan.cut_for)
        self.producing.set()
        if loop is not None:
            try:
                loop.run(start, self._due(presealed))
            finally:
                self.producing.clear()
                self.stopped.set()
            self.wall_s = self.mono() - start
            self.cpu_s = time.process_time() - cpu
            return self.report()
        threads = [threading.Thread(target=g.run, name="sim-" + g.gw, daemon=True) for g in self.gateways]
        for t in threads:
            t.start()
        try:
            if presealed is None:
                self._produce(start)
            else:
                self._release(start, presealed)
        finally:
            self.producing.clear()
            drain_end = self.mono() + plan.drain
            for t in threads:
                t.join(max(0.0, drain_end - self.mono()))
            self.stopped.set()
            for t in threads:
                t.join(plan.timeout + 5)
        self.wall_s = self.mono() - start
        self.cpu_s = time.process_time() - cpu
        return self.report()

    def _due(self, presealed):
        """``(seconds into the run, gateway index, make)`` of every batch in time order; ``make(wall)`` seals it
        then, or with ``preseal`` gives the batch sealed before the run, its cut time ``wall``."""
        if presealed is None:
            return ((t, i, self.gateways[i].seal) for t, i in self.plan.schedule())
        return ((t, i, lambda wall, s=sealed: dataclasses.replace(s, cut=wall)) for t, i, sealed in presealed)

    def _produce(self, start):
        end = start + self.plan.duration
        for t, i in self.plan.schedule():
            if not self._wait_until(start + t, end):
                return
            self.gateways[i].cut(self.wall())

    def _release(self, start, presealed):
        end = start + self.plan.duration
        for t, i, sealed in presealed:
            if not self._wait_until(start + t, end):
                return
            self.gateways[i].release(dataclasses.replace(sealed, cut=self.wall()))

    def _wait_until(self, due, end):
        """Wait for ``due`` (monotonic); False once stopped or at ``end``. Records how late the producer is."""
        while not self.stopped.is_set():
            now = self.mono()
            if now >= end:
                return False
            if due <= now:
                self.producer_lag = max(self.producer_lag, now - due)
                return True
            self.stopped.wait(min(due, end) - now)
        return False

    def report(self):
        plan, gws = self.plan, self.gateways
        total = {k: sum(g.counts[k] for g in gws) for k in ("made", "attempts", "rejected", "dropped")}
        failures = {}
        for g in gws:
            for k, v in g.failures.items():
                failures[k] = failures.get(k, 0) + v
        acked = [a for g in gws for a in g.acked]
        pending = sum(len(g.backlog) for g in gws)
        cut = [g for g in gws if g.gw in set(self.cut_ids)]
        end_of_outage = self.start + plan.cut_at + plan.cut_for
        caught = [g.caught_up_at for g in cut if g.caught_up_at is not None]
        return {
            "uplink": redact_url(self.url), "gateways": plan.gateways, "rate_per_gateway": plan.rate,
            "records_per_batch": plan.records, "duration_s": plan.duration, "boot": plan.boot, "seed": plan.seed,
            "made": total["made"], "acked": len(acked), "acked_records": sum(a[1] for a in acked),
            "attempts": total["attempts"], "retries": total["attempts"] - len(acked) - total["rejected"],
            "failures": failures, "rejected": total["rejected"], "dropped": total["dropped"], "pending": pending,
            "send_to_ack_ms": _percentiles([(a[4] - a[3]) * 1000 for a in acked]),
            "cut_to_ack_s": _percentiles([a[4] - a[2] for a in acked]),
            "acked_per_s": round(len(acked) / self.wall_s, 1) if self.wall_s else None,
            "producer_lag_s": round(self.producer_lag, 3), "wall_s": round(self.wall_s, 2),
            "preseal": plan.preseal, "seal_cpu_s": round(self.seal_cpu_s, 2), "cpu_s": round(self.cpu_s, 2),
            "outage": {"gateways": len(cut), "at_s": plan.cut_at, "for_s": plan.cut_for,
                       "backlog_at_reconnect": sum(g.backlog_at_reconnect or 0 for g in cut),
                       "caught_up": len(caught),
                       "drain_s": round(max(caught) - end_of_outage, 2) if cut and len(caught) == len(cut) else None},
        }

    def write_acked(self, path):
        with open(path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(("gw", "boot", "seq", "records", "cut", "sent", "acked"))
            for g in self.gateways:
                for seq, records, cut, sent, acked in g.acked:
                    out.writerow((g.gw, self.plan.boot, seq, records, "%.6f" % cut, "%.6f" % sent, "%.6f" % acked))


def read_acked(path):
    """The rows ``--acked`` wrote, as ``{(gw, boot, seq): (records, cut, sent, acked)}``."""
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        return {(r["gw"], int(r["boot"]), int(r["seq"])): (int(r["records"]), float(r["cut"]), float(r["sent"]),
                                                           float(r["acked"])) for r in rows}


def _percentiles(samples):
    if not samples:
        return None
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return {"p50": round(pick(0.5), 3), "p99": round(pick(0.99), 3), "max": round(s[-1], 3)}


# -- the command ----------------------------------------------------------------------------------------------------
def register(sub):
    f = sub.add_parser("fleet-sim", help="simulate a fleet of gateways sending signed batches to a backend "
                       "(docs/backend.md)")
    f.add_argument("--trust", required=True, metavar="JWKS", help="write the gateways' public keys here (a JWK Set "
                   "for 'receive --trust'; a file fleet-sim did not write is never overwritten)")
    f.add_argument("--uplink", metavar="URL", help="mqtt://HOST:PORT/PREFIX (QoS 1) or http://HOST:PORT/v1/batches")
    f.add_argument("--enroll-only", action="store_true", help="write --trust and exit (start the backend, then "
                   "run again with the same --seed)")
    f.add_argument("--gateways", type=int, default=10, help="simulated gateways (default 10, at most %d)"
                   % LIMITS["gateways"])
    f.add_argument("--rate", type=float, default=1.0, help="batches per second per gateway (default 1)")
    f.add_argument("--records", type=int, default=10, help="readings per batch (default 10)")
    f.add_argument("--duration", type=float, default=10.0, help="seconds of cutting batches (default 10)")
    f.add_argument("--drain", type=float, default=30.0, help="seconds after --duration to deliver the backlogs "
                   "(default 30)")
    f.add_argument("--cut-share", type=float, default=0.0, metavar="F", help="share of the gateways cut off "
                   "(0..1, default 0)")
    f.add_argument("--cut-at", type=float, default=0.0, metavar="S", help="seconds into the run the outage starts")
    f.add_argument("--cut-for", type=float, default=0.0, metavar="S", help="seconds the outage lasts")
    f.add_argument("--seed", type=int, default=1, help="keys, values and the cut-off gateways (default 1)")
    f.add_argument("--boot", type=int, help="the boot epoch of every gateway (default: the Unix time, so runs do "
                   "not collide)")
    f.add_argument("--prefix", default="sim", help="gateway ids are PREFIX-0000, PREFIX-0001, ... (default sim)")
    f.add_argument("--max-backlog", type=int, default=10_000, help="batches a gateway holds unacknowledged "
                   "(default 10000; the oldest are dropped beyond, counted)")
    f.add_argument("--timeout", type=float, default=10.0, help="seconds one send may take (default 10)")
    f.add_argument("--preseal", action="store_true", help="seal every batch before the run starts and only "
                   "release them on schedule, so the simulator's sealing does not share the CPU with the backend "
                   "it measures (at most %d batches, held in memory)" % LIMITS["presealed"])
    f.add_argument("--acked", metavar="FILE", help="write every acknowledged batch here (CSV)")
    f.add_argument("--json", action="store_true", help="print the report as one JSON object")
    f.add_argument("--log-level", default="error", choices=("debug", "info", "warning", "error"),
                   help="of the uplinks' logs (default error: a cut-off gateway's disconnect is the plan, not news)")
    f.set_defaults(func=cmd_fleet_sim, parser=f)


def cmd_fleet_sim(args):
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    boot = args.boot if args.boot is not None else int(time.time())
    plan = Plan(args.gateways, args.rate, args.records, args.duration, args.seed, boot, args.prefix, args.cut_share,
                args.cut_at, args.cut_for, args.drain, args.max_backlog, args.timeout, args.preseal)
    try:
        plan.check()
    except ValueError as exc:
        args.parser.error(str(exc))
    if not args.enroll_only and not args.uplink:
        args.parser.error("--uplink URL is required (or --enroll-only)")
    try:
        n = enroll(args.trust, plan)
    except (KeyFileError, OSError) as exc:
        print("edge-gateway: %s" % exc, file=sys.stderr)
        return 2
    if args.enroll_only:
        print("enrolled %d gateways in %s" % (n, args.trust))
        return 0
    try:
        fleet = Fleet(plan, args.uplink)
    except ValueError as exc:
        print("edge-gateway: %s" % exc, file=sys.stderr)
        return 2
    report = fleet.run()
    if args.acked:
        fleet.write_acked(args.acked)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        for key in ("gateways", "made", "acked", "retries", "rejected", "dropped", "pending", "acked_per_s",
                    "send_to_ack_ms", "outage", "failures", "wall_s"):
            print("%-16s %s" % (key, report[key]))
    return 0 if report["acked"] == report["made"] else 1
