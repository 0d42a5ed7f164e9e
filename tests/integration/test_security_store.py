"""Issue 13 ("Nothing lost, nobody in"), the store and agent layer: a batch identity never repeats, a corrupt queue
is salvaged, a poison batch cannot wedge delivery, bad numbers never reach the batcher, nothing is left out of a
queue dump. Every test here failed on the code before the fix it names."""

import asyncio
import io
import json
import math
import os
import random
import shutil
import sqlite3
import threading
import time
import types
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cbor2

from drivers.base import Source
from gateway.adapters import keys
from gateway.core import senml, wire
from gateway.app.agent import Agent
from gateway.core.clock import FakeClock, SystemClock
from gateway.app.config import BatchSection
from gateway.app.console.commands import Console
from gateway.app.console.view import AgentView
from gateway.core.errors import StoreError
from gateway.core.model import EncodedBatch, Reading
from backend.receiver import Receiver, ReceiverServer
from gateway.adapters.store import Store
from gateway.adapters.uplink import Uplink
from gateway.adapters.uplink.http import HttpUplink

GW = "gw-sec"


class NullUplink(Uplink):
    def send(self, batch):
        pass


def signed_batches(key, n, boot=1, readings=50, first_seq=0):
    out = []
    for b in range(first_seq, first_seq + n):
        rs = [Reading("s%d" % (i % 5), "temp", round(4 + (i % 37) / 100, 2), "Cel", 1.7e9 + b * 10 + i / 50, 0.01)
              for i in range(readings)]
        payload = wire.encode_payload(GW, boot, b, True, senml.encode_records(rs, (), GW + "/"))
        out.append(EncodedBatch(boot, b, wire.sign(payload, key), 0, readings, 0, 0.0))
    return out


def make_agent(tmp_path, clock=None, **extra):
    clock = clock or FakeClock()
    store = Store(tmp_path / "q.sqlite", clock=clock)
    batch = types.SimpleNamespace(max_readings=10 ** 6, max_age_s=1e9, time_quantum_s=1.0)
    return Agent(gw=GW, key=keys.SigningKey.generate(), store=store, uplink=NullUplink(), clock=clock,
                 batch=batch, **extra)


# -- finding 4: bad numbers never reach the batcher ------------------------------------------------------------
def test_bad_values_are_dropped_and_counted_at_emit(tmp_path):
    agent = make_agent(tmp_path)
    agent.pipeline.first_cut = True  # keep everything in the batcher, where we can look at it
    good = [Reading("s", "temp", 4.25, "Cel", 1.0), Reading("s", "n", (1 << 63) - 1, None, 1.0),
            Reading("s", "n", -(1 << 63), None, 1.0), Reading("s", "state", "open", None, 1.0),
            Reading("s", "door", True, None, 1.0), Reading("s", "temp", 0, "Cel", 1.0),
            Reading("s", "temp", -0.0, "Cel", 1.0)]
    bad = [Reading("s", "temp", math.nan, "Cel", 1.0), Reading("s", "temp", math.inf, "Cel", 1.0),
           Reading("s", "temp", -math.inf, "Cel", 1.0), Reading("s", "n", 1 << 63, None, 1.0),
           Reading("s", "n", -(1 << 63) - 1, None, 1.0), Reading("s", "n", 10 ** 30, "Cel", 1.0),
           Reading("s", "temp", True, "Cel", 1.0), Reading("s", "temp", "4.2", "Cel", 1.0),
           Reading("s", "temp", None, "Cel", 1.0), Reading("s", "temp", [1.0], "Cel", 1.0)]
    for r in good + bad:
        agent.emit(r)
    readings, _ = agent.pipeline.batcher.cut()
    assert readings == good
    assert agent.counters["readings_bad_value"] == len(bad)
    assert agent.counters["readings_in"] == len(good) + len(bad)
    health = {r.name: r.value for r in agent.pipeline.health_readings(2.0)}
    assert health["readings_bad_value"] == len(bad)  # reported upstream
    agent.store.close()


# -- finding 5: flush-to-file includes quarantined batches -----------------------------------------------------
def test_flush_to_file_writes_queued_and_quarantined_batches(tmp_path):
    key = keys.SigningKey.generate()
    store = Store(tmp_path / "q.sqlite")
    batches = signed_batches(key, 14)
    ids = store.put_many(batches)
    for sid in ids[:11]:
        store.quarantine(sid, "409 conflict")
    view = AgentView(types.SimpleNamespace(store=store), board=None)
    target = str(tmp_path / "queue.cbor")
    reply = view.store_dump(target)
    assert reply.startswith("wrote 14 batches (") and reply.endswith(": 3 queued, 11 quarantined; the queue is "
                                                                      "unchanged")
    with open(target, "rb") as f:
        data = f.read()
    items, stream = [], io.BytesIO(data)
    while stream.tell() < len(data):
        items.append(cbor2.dumps(cbor2.load(stream)))
    assert sorted(items) == sorted(b.data for b in batches)  # every batch, bit for bit
    trust = keys.TrustStore({"keys": [key.jwk(GW)]})
    assert sorted(wire.verify(item, trust).seq for item in items) == list(range(14))
    assert store.depth()[0] == 3 and len(store.quarantined()) == 11  # the queue is unchanged
    store.close()


# -- finding 1: a batch identity never repeats, whatever happens to local state ------------------------------------
def _start(state):
    """One agent start on ``state``: the boot it takes."""
    store = Store(state / "queue.sqlite")
    try:
        return store.next_boot()
    finally:
        store.close()


def test_boot_never_repeats_after_wipe_move_aside_or_restore(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    boots = [_start(state), _start(state)]
    assert boots[1] > boots[0]  # while state persists, boot increases (so (boot, seq) orders batches)
    backup = tmp_path / "backup"
    shutil.copytree(state, backup)  # an operator's backup of the SD card
    for name in os.listdir(state):  # the queue is wiped (its file beside it survives)
        if name.startswith("queue.sqlite") and not name.endswith(".boot"):
            os.remove(state / name)
    boots.append(_start(state))
    assert boots[-1] > boots[-2]
    with open(state / "queue.sqlite", "wb") as f:  # the queue is corrupt: moved aside at the next start
        f.write(b"not a database\n" * 100)
    boots.append(_start(state))
    assert boots[-1] > boots[-2] and os.path.exists(state / "queue.sqlite.corrupt-0")
    shutil.rmtree(state)  # the backup is restored: the counter goes back ...
    shutil.copytree(backup, state)
    boots.append(_start(state))
    assert boots[-1] >> 32 == boots[2] >> 32  # ... and repeats, but the random half does not
    shutil.rmtree(state)  # a new SD card: nothing is left at all
    state.mkdir()
    boots.append(_start(state))
    assert boots[-1] >> 32 == boots[0] >> 32 == 1
    assert len(set(boots)) == len(boots), boots
    assert all(0 < b < 1 << 63 for b in boots)  # an int64 on every backend


def test_boot_file_and_queue_meta_back_each_other_up(tmp_path):
    store = Store(tmp_path / "queue.sqlite", random_bytes=lambda n: b"\x00" * n)
    first = store.next_boot()
    store.close()
    assert first == 1 << 32 and open(tmp_path / "queue.sqlite.boot").read().strip() == str(first)
    os.remove(tmp_path / "queue.sqlite.boot")  # the file is lost: the queue's copy carries the counter
    store = Store(tmp_path / "queue.sqlite", random_bytes=lambda n: b"\x00" * n)
    assert store.next_boot() == 2 << 32
    store.close()
    with open(tmp_path / "queue.sqlite.boot", "w") as f:  # a damaged file counts as nothing, the queue still holds
        f.write("garbage")
    store = Store(tmp_path / "queue.sqlite", random_bytes=lambda n: b"\x00" * n)
    assert store.next_boot() == 3 << 32
    store.close()
    # The bound is the random half: with no randomness at all, a restored backup would repeat a boot.
    shutil.copy(tmp_path / "queue.sqlite.boot", tmp_path / "old.boot")
    for name in os.listdir(tmp_path):
        if name.startswith("queue.sqlite") and not name.endswith(".boot"):
            os.remove(tmp_path / name)
    shutil.copy(tmp_path / "old.boot", tmp_path / "queue.sqlite.boot")
    store = Store(tmp_path / "queue.sqlite", random_bytes=lambda n: b"\x00" * n)
    assert store.next_boot() == 4 << 32  # the file alone carries the counter across a lost queue
    store.close()


class NumberedSource(Source):
    """Emits readings ``x`` = first .. first + total - 1, ``per_tick`` every ``period`` seconds, then idles."""

    name = "gen"

    def __init__(self, first, total, per_tick=20, period=0.01, sensor="s1"):
        super().__init__()
        self.first, self.total, self.per_tick, self.period, self.sensor = first, total, per_tick, period, sensor
        self.sent = 0

    async def run(self, emit):
        while self.sent < self.total:
            for _ in range(min(self.per_tick, self.total - self.sent)):
                emit(Reading(self.sensor, "x", self.first + self.sent, None, time.monotonic()))
                self.sent += 1
            await asyncio.sleep(self.period)  # the source's production rate (behaviour, not a wait)
        await asyncio.Event().wait()


def run_agent(agent, done, timeout=30):
    """Run ``agent`` until ``done(agent)`` holds (polled), then stop it and wait for it."""
    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop, drain_timeout=5.0))
        try:
            deadline = time.monotonic() + timeout
            while not done(agent) and time.monotonic() < deadline and not task.done():
                await asyncio.sleep(0.02)
            assert done(agent), agent.status()
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    asyncio.run(main())


def http_agent(store, key, url, source=None, **extra):
    options = dict(rng=random.Random(1), backoff=(0.05, 0.5), health_interval=3600.0)
    options.update(extra)
    return Agent(gw=GW, key=key, store=store, uplink=HttpUplink(url), sources=[source] if source else [],
                 clock=SystemClock("synced"), batch=BatchSection(max_readings=20, max_age_s=0.1), **options)


def received_x(receiver):
    return sorted(int(v) for (v,) in receiver.query("SELECT v FROM records WHERE n LIKE '%/x'"))


def test_restart_after_a_lost_queue_delivers_everything_no_false_duplicate(tmp_path):
    """The receiver answers ``200 duplicate`` to a (gw, boot, seq) it has: before the fix a gateway whose queue was
    lost started at boot 1 again, and every new batch was 'a duplicate', deleted unsent."""
    key = keys.SigningKey.generate()
    receiver = Receiver(str(tmp_path / "rx.sqlite"), keys.TrustStore({"keys": [key.jwk(GW)]}))
    server = ReceiverServer(receiver).start()
    state = tmp_path / "state"
    try:
        for run in range(3):
            state.mkdir(exist_ok=True)
            store = Store(state / "queue.sqlite")
            source = NumberedSource(first=run * 1000, total=200)
            agent = http_agent(store, key, server.url, source)
            run_agent(agent, lambda a: source.sent == 200 and not a._pending and a.depth()[0] == 0)
            store.close()
            if run == 0:
                for name in os.listdir(state):  # the queue is lost
                    if not name.endswith(".boot"):
                        os.remove(state / name)
            else:
                shutil.rmtree(state)  # everything is lost
    finally:
        server.stop()
    assert receiver.stats()["duplicates"] == 0
    assert received_x(receiver) == [run * 1000 + i for run in range(3) for i in range(200)]
    assert len({b for (b,) in receiver.query("SELECT DISTINCT boot FROM batches")}) == 3
    receiver.close()


class FixedAnswer:
    """A loopback HTTP server that answers every POST with ``status``; records what it was sent."""

    def __init__(self, status, body=b'{"error": "conflict"}'):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.server.posts.append(read_body(self))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.posts = []
        self.url = "http://127.0.0.1:%d/v1/batches" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def read_body(handler):
    """The signed bytes of a POST, inflated when the uplink deflated them on the hop (``Content-Encoding``)."""
    data = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    return zlib.decompress(data) if handler.headers.get("Content-Encoding") == "deflate" else data


def test_409_conflict_keeps_the_batch_quarantined_counted_and_reported(tmp_path):
    server = FixedAnswer(409)
    store = Store(tmp_path / "queue.sqlite")
    source = NumberedSource(first=0, total=30)
    agent = http_agent(store, keys.SigningKey.generate(), server.url, source)
    try:
        run_agent(agent, lambda a: source.sent == 30 and not a._pending and a.depth()[0] == 0
                  and len(store.quarantined()) >= 2)
    finally:
        server.stop()
    rows = store.quarantined()
    assert rows and all("409" in r[3] for r in rows)  # kept, never deleted
    assert sorted(cbor_seq(store)) == sorted(set(server.httpd.posts))  # every batch sent is still held
    counters = store.counters()
    assert counters["conflict_batches"] == len(rows) == counters["quarantined"]
    assert agent.counters["conflict_batches"] == len(rows)
    health = {r.name: r.value for r in agent.pipeline.health_readings(1e9)}
    assert health["conflict_batches"] == len(rows)  # reported upstream
    store.close()


def cbor_seq(store):
    out = io.BytesIO()
    store.dump(out)
    data, stream, items = out.getvalue(), io.BytesIO(out.getvalue()), []
    while stream.tell() < len(data):
        items.append(cbor2.dumps(cbor2.load(stream)))
    return items


# -- finding 3: one poison batch cannot wedge delivery, and an outage quarantines nothing ----------------------------
POISON_X = 101


class PickyReceiver:
    """A real ``Receiver`` on loopback, except that the batch holding reading x == POISON_X makes it drop the
    connection without an answer, every time (a backend bug that one payload triggers)."""

    def __init__(self, receiver, trust, port=0):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                data = read_body(self)
                if any(r["n"].endswith("/x") and r.get("v") == POISON_X for r in wire.verify(data, trust).records):
                    self.server.poison_hits += 1
                    self.close_connection = True
                    return  # no answer: the client sees the connection closed
                status, body = receiver.process(data)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *a):
                pass
        ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.poison_hits = 0
        self.port = self.httpd.server_address[1]
        self.url = "http://127.0.0.1:%d/v1/batches" % self.port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _rx(tmp_path, key):
    trust = keys.TrustStore({"keys": [key.jwk(GW)]})
    return Receiver(str(tmp_path / "rx.sqlite"), trust), trust


def test_a_poison_batch_is_overtaken_then_quarantined_while_the_rest_is_delivered(tmp_path):
    key = keys.SigningKey.generate()
    receiver, trust = _rx(tmp_path, key)
    server = PickyReceiver(receiver, trust)
    store = Store(tmp_path / "queue.sqlite")
    source = NumberedSource(first=0, total=1500, per_tick=10, period=0.02)
    agent = http_agent(store, key, server.url, source, poison=(3, 5, 1.0))
    try:
        run_agent(agent, lambda a: source.sent == 1500 and not a._pending and a.depth()[0] == 0, timeout=60)
    finally:
        server.stop()
    (row,) = store.quarantined()
    assert row[3].startswith("poison: ") and "cannot reach" in row[3]
    assert store.counters()["poison_batches"] == 1 == agent.counters["poison_batches"]
    assert server.httpd.poison_hits >= 3 + 5  # K failures in a row, then N with other batches delivered between
    (poisoned,) = [wire.verify(b, trust) for b in cbor_seq(store)]
    held = sorted(int(r["v"]) for r in poisoned.records if r["n"].endswith("/x"))
    assert POISON_X in held
    got = received_x(receiver)
    assert sorted(got + held) == list(range(1500))  # everything behind it was delivered, exactly once
    assert max(got) == 1499
    health = {r.name: r.value for r in agent.pipeline.health_readings(1e9)}
    assert health["poison_batches"] == 1  # reported upstream
    receiver.close()
    store.close()


def test_a_full_outage_quarantines_nothing_and_everything_arrives_after(tmp_path):
    key = keys.SigningKey.generate()
    receiver, trust = _rx(tmp_path, key)
    server = PickyReceiver(receiver, trust)  # bound once to learn a free port, then really down
    port = server.port
    server.stop()
    store = Store(tmp_path / "queue.sqlite")
    source = NumberedSource(first=1000, total=600, per_tick=10, period=0.02)  # no poison value in this run
    agent = http_agent(store, key, server.url, source, poison=(1, 2, 0.2))  # the rule at its most eager
    started = time.monotonic()
    state = {}

    def done(a):
        if "server" not in state:
            # Down long enough for many batches to fail many times, well past T.
            if a.counters["uplink_failures"] >= 20 and time.monotonic() - started >= 2.0:
                state["quarantined"] = list(store.quarantined())
                state["failures"], state["down_s"] = a.counters["uplink_failures"], time.monotonic() - started
                state["server"] = PickyReceiver(receiver, trust, port)
            return False
        return source.sent == 600 and not a._pending and a.depth()[0] == 0

    try:
        run_agent(agent, done, timeout=60)
    finally:
        if "server" in state:
            state["server"].stop()
    assert state["quarantined"] == [] and store.quarantined() == []
    assert state["failures"] <= 2 * (state["down_s"] / 0.125 + 4)  # backed off: no hot loop over the queue
    assert store.counters()["poison_batches"] == 0 and agent.counters["poison_suspect_skips"] > 0
    assert received_x(receiver) == list(range(1000, 1600))
    receiver.close()
    store.close()


# -- finding 2: a corrupt queue is salvaged, not thrown away ----------------------------------------------------------
def _leaf_pages(path, table):
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT pageno, ncell FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
                           (table,)).fetchall()
    finally:
        con.close()


def test_corrupt_queue_is_salvaged_counted_delivered_and_the_old_file_kept(tmp_path):
    key = keys.SigningKey.from_seed(b"\x07" * 32)
    path = str(tmp_path / "queue.sqlite")
    store = Store(path, page_size=1024)
    old_boot = store.next_boot()
    batches = signed_batches(key, 300, boot=1, readings=40)
    ids = store.put_many(batches)
    for sid in ids[:5]:
        store.quarantine(sid, "403 unknown_kid")  # quarantined batches are salvaged too
    store.close()
    leaves = _leaf_pages(path, "batches")
    assert len(leaves) > 20
    hit = [leaves[len(leaves) // 3], leaves[len(leaves) // 2], leaves[2 * len(leaves) // 3]]
    with open(path, "r+b") as f:  # three pages in the middle of the queue: garbage over them
        for pageno, _ in hit:
            f.seek((pageno - 1) * 1024)
            f.write(random.Random(pageno).randbytes(1024))
    with open(path, "rb") as f:
        damaged = f.read()
    expected_lost = sum(n for _, n in hit)

    store = Store(path)
    assert store.recovered_from == path + ".corrupt-0"
    with open(store.recovered_from, "rb") as f:
        assert f.read() == damaged  # kept as it was, for the operator
    report = store.salvage
    assert report.lost == expected_lost and not report.unknown and len(report.damaged) == 3
    assert (report.batches, report.quarantined) == (295 - expected_lost, 5)
    counters = store.counters()
    assert counters["salvaged_batches"] == 300 - expected_lost and counters["lost_batches"] == expected_lost
    assert counters["quarantined"] == 5  # the old queue's counters came along
    assert len(store.quarantined()) == 5
    assert store.next_boot() >> 32 == (old_boot >> 32) + 1  # the boot counter came along too

    # Delivered: every salvaged batch reaches a real receiver, bit for bit, and the loss is reported upstream.
    receiver = Receiver(str(tmp_path / "rx.sqlite"), keys.TrustStore({"keys": [key.jwk(GW)]}))
    server = ReceiverServer(receiver).start()
    agent = http_agent(store, key, server.url, health_interval=0.0)
    try:
        run_agent(agent, lambda a: a.depth()[0] == 0 and not a._pending)
    finally:
        server.stop()
    got = {s for (s,) in receiver.query("SELECT seq FROM batches WHERE boot = 1")}
    assert len(got) == 295 - expected_lost and got <= set(range(5, 300))
    health = dict(receiver.query("SELECT n, v FROM records WHERE n LIKE '%/health/%'"))
    assert health[GW + "/health/lost_batches"] == expected_lost
    assert health[GW + "/health/salvaged_batches"] == 300 - expected_lost
    status = "\n".join(Console(AgentView(agent, board=None), None, None).do_status([], "status").lines)
    assert "integrity salvaged %d, lost %d (corrupt queue)" % (300 - expected_lost, expected_lost) in status
    assert os.path.exists(path + ".corrupt-0")
    receiver.close()
    store.close()


def test_poison_rule_needs_the_link_proven_and_time_pure():
    from gateway.core.poison import POISON, RETRY, SKIP, PoisonPolicy
    clock = FakeClock()
    policy = PoisonPolicy(suspect_after=3, poison_after=5, poison_min_s=600.0, delay=(1.0, 60.0))
    p = (1, 7)
    verdicts = []
    for _ in range(50):  # an outage: it fails and fails, nothing else is acknowledged
        verdicts.append(policy.failed(p, clock.monotonic(), 7))
        clock.advance(60)
    assert verdicts[:3] == [RETRY, RETRY, SKIP] and set(verdicts[2:]) == {SKIP} and POISON not in verdicts
    assert policy.held(clock.monotonic() - 1) == [(p, 7)]  # waiting out its own delay: left out of a round
    policy.acked(p)  # it got through after all: forgotten
    first = clock.monotonic()
    verdicts = []
    for i in range(12):  # the link works: another batch is acknowledged between each of its failures
        verdicts.append(policy.failed(p, clock.monotonic(), 7))
        policy.acked((2, i))
        clock.advance(20)
    assert POISON not in verdicts  # 12 proven failures, but within 240 s: T = 600 s is not reached
    while POISON not in verdicts and len(verdicts) < 100:
        verdicts.append(policy.failed(p, clock.monotonic(), 7))
        policy.acked((3, len(verdicts)))
        clock.advance(20)
    assert verdicts.count(POISON) == 1 and 600 <= clock.monotonic() - 20 - first < 620
    assert policy.order([EncodedBatch(1, 7, b""), EncodedBatch(1, 8, b"")])[0].seq == 7  # forgotten once poison


def test_salvage_drops_a_batch_whose_overflow_page_is_damaged_never_sends_it(tmp_path):
    key = keys.SigningKey.from_seed(b"\x08" * 32)
    path = str(tmp_path / "queue.sqlite")
    store = Store(path, page_size=1024)
    batches = signed_batches(key, 60, readings=3000)  # a few KB deflated: each spills into overflow pages
    store.put_many(batches)
    store.close()
    con = sqlite3.connect(path)
    overflow = [p for (p,) in con.execute("SELECT pageno FROM dbstat WHERE name = 'batches' AND pagetype = "
                                          "'overflow' ORDER BY pageno")]
    con.close()
    # the premise: 3 damaged overflow pages in 3 different batches (format 2 packs readings tighter than format 1
    # did, so the batches had to grow to spill over)
    assert len(overflow) >= 60, len(overflow)
    with open(path, "r+b") as f:
        for pageno in overflow[30:33]:
            f.seek((pageno - 1) * 1024)
            f.write(b"\xab" * 1024)
    store = Store(path)
    assert store.recovered_from and (store.salvage.batches, store.salvage.lost) == (57, 3)
    got = store.pending(limit=100)
    assert len(got) == 57 and {b.data for b in got} <= {b.data for b in batches}  # intact, bit for bit
    assert store.quarantined() == []  # the damaged ones were not carried over to be sent or requeued
    store.close()


class FlakyStore(Store):
    """A real store whose commits fail (a full disk) until ``broken`` is cleared."""

    broken = True

    def put_many(self, batches):
        if self.broken:
            raise StoreError("cannot commit a batch to %s: the disk is full" % self.path, kind="full")
        return super().put_many(batches)


def test_a_batch_rejected_while_only_in_memory_is_kept_then_quarantined_on_disk(tmp_path):
    server = FixedAnswer(409)
    store = FlakyStore(tmp_path / "queue.sqlite")
    source = NumberedSource(first=0, total=10, per_tick=10)
    agent = http_agent(store, keys.SigningKey.generate(), server.url, source)
    seen = {}

    def done(a):
        if "memory" not in seen:
            if a.counters["quarantined"] >= 1 and not a.store_ok:
                seen["memory"] = [b.data for b in a._pending]
                seen["posts"] = list(server.httpd.posts)
                store.broken = False  # the disk has room again
            return False
        return not a._pending and len(store.quarantined()) >= len(set(seen["posts"]))

    try:
        run_agent(agent, done)
    finally:
        server.stop()
    assert set(seen["posts"]) <= set(seen["memory"])  # rejected from memory, and still held there
    assert set(seen["posts"]) <= set(cbor_seq(store))  # then committed and quarantined on disk: never lost
    assert store.counters()["conflict_batches"] >= 1
    store.close()
