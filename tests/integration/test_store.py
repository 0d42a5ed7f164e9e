"""The durable queue (gateway/adapters/store.py) and the agent's behaviour when the disk misbehaves.

Faults are real SQLite/kernel errors: SQLITE_FULL from ``PRAGMA max_page_count`` (a full disk without a tiny
filesystem), EPERM on write from ``chattr +i`` (a read-only store that even root cannot write; mode bits do not stop
root), garbage written over the database file.
"""

import asyncio
import os
import random
import shutil
import sqlite3
import subprocess
import time

import pytest

from drivers.base import Source
from gateway.app.agent import Agent
from gateway.core.clock import FakeClock, SystemClock
from gateway.app.config import BatchSection
from gateway.core.errors import StoreError
from gateway.core.model import EncodedBatch, Reading
from backend.receiver import Receiver, ReceiverServer
from gateway.adapters.store import Store
from gateway.adapters.uplink.http import HttpUplink

PAGE = 4096
# Documented in docs/store-and-forward.md: max_bytes bounds the database file (pages in use); the WAL adds at most
# checkpoint_pages pages plus one transaction until the next checkpoint truncates it.
SLACK_BYTES = 4 * PAGE


def make_batch(i, size=2000, prio=0, readings=10, created=None, boot=1):
    rng = random.Random(i)
    data = i.to_bytes(4, "big") + rng.randbytes(size - 4)
    return EncodedBatch(boot=boot, seq=i, data=data, priority=prio, readings=readings, events=0,
                        created=created or 0.0)


def disk_bytes(path):
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))


def ids_of(store):
    return [int.from_bytes(b.data[:4], "big") for b in store.pending(limit=100000)]


def test_transactional_take_ack_quarantine(tmp_path):
    store = Store(tmp_path / "q.sqlite")
    ids = store.put_many([make_batch(i) for i in range(5)])
    assert len(store.pending(limit=10)) == 5 and len(store.pending(limit=10)) == 5  # taking deletes nothing
    store.ack(ids[:2])
    assert ids_of(store) == [2, 3, 4]
    store.quarantine(ids[2], "403 unknown_kid")
    assert ids_of(store) == [3, 4]
    assert [row[3] for row in store.quarantined()] == ["403 unknown_kid"]
    c = store.counters()
    assert (c["acked_batches"], c["acked_readings"], c["quarantined"]) == (2, 20, 1)
    assert store.requeue_quarantined() == 1
    assert sorted(ids_of(store)) == [2, 3, 4] and store.quarantined() == []
    store.close()


def test_boot_epoch_persists_and_counters_survive_reopen(tmp_path):
    path = tmp_path / "q.sqlite"
    store = Store(path)
    first = store.next_boot()
    assert first >> 32 == 1  # the start counter; the low 32 bits are random (gateway/adapters/boot_epoch.py)
    store.put(make_batch(0))
    store.quarantine(store.put(make_batch(1)), "403 rejected")
    assert store.counters()["accepted_batches"] == 2
    store.close()
    store = Store(path)
    second = store.next_boot()
    assert second >> 32 == 2 and second > first  # (boot, seq) still orders batches while state persists
    assert ids_of(store) == [0]
    counters = store.counters()
    assert counters["quarantined"] == 1  # policy counters persist in the database
    assert counters["accepted_batches"] == 0  # per-process counters start afresh (no write per commit)
    store.close()


def test_byte_bound_during_outage_drops_oldest_counted_exactly(tmp_path):
    path = str(tmp_path / "q.sqlite")
    max_bytes = 256 * 1024
    store = Store(path, max_bytes=max_bytes, checkpoint_pages=64)
    put = []
    for i in range(600):  # ~1.2 MB offered to a 256 KiB store, sizes vary
        b = make_batch(i, size=1000 + (i * 37) % 2500, readings=1 + i % 7)
        store.put(b)
        put.append(b)
        assert os.path.getsize(path) <= max_bytes + SLACK_BYTES
        assert store.wal_bytes() <= (64 + 8) * (PAGE + 24)  # checkpoint_pages, plus one transaction's frames
    assert store.checkpoint() and store.wal_bytes() == 0
    assert disk_bytes(path) <= max_bytes + SLACK_BYTES
    kept = ids_of(store)
    missing = [b for b in put if int.from_bytes(b.data[:4], "big") not in set(kept)]
    assert kept == list(range(kept[0], 600))  # the oldest went, nothing else
    c = store.counters()
    assert c["dropped_batches"] == len(missing) > 0
    assert c["dropped_readings"] == sum(b.readings for b in missing)
    assert c["accepted_batches"] == 600
    n, readings, size, _ = store.depth()
    assert size <= max_bytes and n == len(kept) and readings == sum(b.readings for b in put if b not in missing)
    store.close()


def test_alarms_survive_the_byte_bound_and_drain_first(tmp_path):
    store = Store(tmp_path / "q.sqlite", max_bytes=80_000)
    for i in range(60):
        store.put(make_batch(i, size=2000, prio=1 if i % 10 == 3 else 0))
    kept = ids_of(store)
    alarms = [i for i in range(60) if i % 10 == 3]
    assert kept[:len(alarms)] == alarms  # every alarm kept, and first in line
    rest = kept[len(alarms):]
    assert rest == sorted(rest) and rest[-1] == 59  # then the rest, oldest first
    c = store.counters()
    assert c["dropped_alarm_batches"] == 0 and c["dropped_batches"] == 60 - len(kept)
    # Only alarms left to drop: the oldest alarm goes, and is counted as such.
    store.put_many([make_batch(100 + i, size=2000, prio=1) for i in range(40)])
    assert store.counters()["dropped_alarm_batches"] > 0
    store.close()


def test_oversized_group_commit_drops_its_own_oldest_instead_of_wedging(tmp_path):
    store = Store(tmp_path / "q.sqlite", max_bytes=20_000)
    group = [make_batch(i, size=3000, prio=1 if i == 0 else 0) for i in range(12)]  # 36 kB > 20 kB
    ids = store.put_many(group)
    kept = ids_of(store)
    assert 0 in kept and kept[1:] == list(range(12 - (len(kept) - 1), 12))
    assert sum(1 for x in ids if x is None) == 12 - len(kept) == store.counters()["dropped_batches"]
    store.close()


def test_age_bound_with_a_sane_clock_only(tmp_path):
    clock = FakeClock(wall=1_750_000_000.0)
    store = Store(tmp_path / "q.sqlite", max_age=3600.0, clock=clock, expire_every=0)
    store.put(make_batch(0, created=clock.wall(), readings=4))
    store.put(make_batch(1, created=100.0, readings=5))  # cut before NTP: 1970, age unknown
    clock.advance(1800)
    store.put(make_batch(2, created=clock.wall()))
    clock.advance(2000)
    store.put(make_batch(3, created=clock.wall()))
    assert ids_of(store) == [1, 2, 3]
    c = store.counters()
    assert (c["expired_batches"], c["dropped_batches"], c["dropped_readings"]) == (1, 1, 4)
    store.close()
    early = FakeClock(wall=200.0)  # a Pi that booted in 1970: nothing expires
    store = Store(tmp_path / "q.sqlite", max_age=1.0, clock=early, expire_every=0)
    store.put(make_batch(4, created=early.wall()))
    assert ids_of(store) == [1, 2, 3, 4]
    store.close()


@pytest.mark.parametrize("damage", ["garbage", "bad_pages"])
def test_corrupt_database_is_moved_aside_and_reported(tmp_path, damage):
    path = str(tmp_path / "queue.sqlite")
    store = Store(path, page_size=1024)
    store.put_many([make_batch(i) for i in range(50)])
    store.close()
    if damage == "garbage":
        with open(path, "wb") as f:
            f.write(b"this is not sqlite\n" * 300)
    else:
        with open(path, "r+b") as f:  # keep the header, smash the B-tree pages
            f.seek(2048)
            f.write(b"\xff" * 20000)
    store = Store(path)
    assert store.recovered_from == path + ".corrupt-0" and os.path.exists(store.recovered_from)
    assert store.next_boot() >> 32 == 1  # no boot was taken before the damage
    if damage == "garbage":
        assert store.depth()[0] == 0  # nothing readable to salvage
    store.put(make_batch(7))
    assert ids_of(store)[-1] == 7
    store.close()


def test_unusable_directory_is_a_clear_store_error(tmp_path):
    with pytest.raises(StoreError) as err:
        Store(tmp_path / "missing" / "q.sqlite")
    assert "does not exist" in str(err.value)


def fill_disk(store):
    """Fault injection: use up the free pages, then cap the file where it stands, as a full disk does."""
    with store._lock:
        store._db.execute("CREATE TABLE IF NOT EXISTS filler (x BLOB)")
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute("PRAGMA max_page_count=%d" % pages)
        for size in (3000, 300, 30, 1):  # then the room left in partly used pages
            for _ in range(10000):
                try:
                    store._db.execute("INSERT INTO filler VALUES (zeroblob(?))", (size,))
                except sqlite3.OperationalError:
                    break


def test_full_disk_is_a_clear_store_error_and_reads_still_work(tmp_path):
    store = Store(tmp_path / "q.sqlite")
    store.put(make_batch(0))
    with store._lock:  # fault injection: cap the file where it stands, as a full disk does
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute("PRAGMA max_page_count=%d" % pages)
    with pytest.raises(StoreError) as err:
        store.put_many([make_batch(i, size=5000) for i in range(1, 40)])
    assert err.value.kind == "full" and "disk is full" in str(err.value)
    assert ids_of(store) == [0] and store.depth()[2] == 2000  # rolled back, byte total re-read
    with store._lock:
        store._db.execute("PRAGMA max_page_count=1000000")
    store.put(make_batch(1))
    assert ids_of(store) == [0, 1]
    store.close()


# -- the agent on a failing disk ---------------------------------------------------------------------------------

class CountingSource(Source):
    """Emits ``total`` numbered readings (name ``x``, value = number), ``per_tick`` every ``period`` seconds."""

    name = "gen"

    def __init__(self, total, per_tick, period, sensor="s1"):
        super().__init__()
        self.total, self.per_tick, self.period, self.sensor = total, per_tick, period, sensor
        self.sent = 0

    async def run(self, emit):
        while self.sent < self.total:
            for _ in range(min(self.per_tick, self.total - self.sent)):
                emit(Reading(self.sensor, "x", self.sent, None, time.monotonic()))
                self.sent += 1
            await asyncio.sleep(self.period)  # the source's production rate (behaviour, not a wait)
        await asyncio.Event().wait()


def run_agent(agent, controller, timeout):
    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop, drain_timeout=5.0))
        try:
            await asyncio.wait_for(controller(agent), timeout)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    asyncio.run(main())


def received_values(receiver):
    return sorted(int(v) for (v,) in receiver.query("SELECT v FROM records WHERE n LIKE '%/x'"))


async def wait_for(predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


def _agent(tmp_path, signing_key, trust, source, store, max_pending=64):
    receiver = Receiver(str(tmp_path / "receiver.sqlite"), trust)
    server = ReceiverServer(receiver).start()
    agent = Agent(gw="gw-test", key=signing_key, store=store, uplink=HttpUplink(server.url), sources=[source],
                  clock=SystemClock("synced"), batch=BatchSection(max_readings=50, max_age_s=0.2),
                  rng=random.Random(1), backoff=(0.05, 0.5), max_pending=max_pending, health_interval=0.5)
    return agent, receiver, server


def chattr(flag, *paths):
    return subprocess.run(["chattr", flag] + list(paths), capture_output=True).returncode == 0


def test_agent_keeps_running_on_a_read_only_store_and_commits_again(tmp_path, signing_key, trust):
    """``chattr +i`` on the database and WAL: every write fails with EPERM (even for root). The agent keeps
    delivering straight from its memory buffer, and commits again once the files are writable."""
    path = str(tmp_path / "queue.sqlite")
    store = Store(path)
    source = CountingSource(total=3000, per_tick=25, period=0.02)
    agent, receiver, server = _agent(tmp_path, signing_key, trust, source, store)
    if not (shutil.which("chattr") and chattr("+i", path) and chattr("-i", path)):
        pytest.skip("chattr +i does not work on this filesystem")
    seen = {}
    from_memory = []
    agent.on_sent = lambda b: from_memory.append(b) if b.store_id is None else None

    async def controller(agent):
        await wait_for(lambda: source.sent >= 500 and agent.counters["batches_committed"] > 0, 10)
        assert chattr("+i", path, path + "-wal")
        try:
            assert await wait_for(lambda: not agent.store_ok, 10)
            committed = agent.counters["batches_committed"]
            # Degraded: batches keep flowing upstream straight from memory, and memory is bounded.
            assert await wait_for(lambda: len(from_memory) >= 10, 10)
            assert len(agent._pending) <= agent.max_pending
            seen["error"] = agent.last_error
        finally:
            chattr("-i", path, path + "-wal")
        assert await wait_for(lambda: agent.store_ok and agent.counters["batches_committed"] > committed, 15)
        assert await wait_for(lambda: source.sent == 3000 and not agent._pending and agent.depth()[0] == 0, 15)

    try:
        run_agent(agent, controller, 60)
    finally:
        server.stop()
    assert "cannot commit a batch to %s" % path in seen["error"] and "I/O error" in seen["error"]
    assert agent.counters["store_errors"] > 0 and agent.counters["memory_dropped_batches"] == 0
    got = received_values(receiver)
    assert got == list(range(3000))  # every reading exactly once: nothing lost
    health = receiver.query("SELECT v FROM records WHERE n LIKE '%health/store_errors'")
    assert health and max(v for (v,) in health) > 0  # the failure was reported upstream
    receiver.close()


def test_disk_full_during_an_outage_memory_bounded_drops_counted(tmp_path, signing_key, trust):
    """The backend is down (503) and the disk fills up (SQLITE_FULL): the agent keeps running on a bounded memory
    buffer, drops its oldest batches from memory and counts them, and once space is back it commits and
    delivers the rest: received + counted drops == produced, exactly."""
    path = str(tmp_path / "queue.sqlite")
    store = Store(path)
    source = CountingSource(total=3000, per_tick=25, period=0.02)
    agent, receiver, server = _agent(tmp_path, signing_key, trust, source, store, max_pending=8)
    agent.pipeline.health_interval = 1e9  # health readings only in the first batch, so reading counts stay exact
    seen = {}

    async def controller(agent):
        await wait_for(lambda: agent.counters["batches_committed"] > 0, 10)
        server.maintenance(5)  # 503 with Retry-After: the agent waits it out, then delivers again
        await wait_for(lambda: agent.uplink_state == "down", 10)
        fill_disk(store)
        try:
            assert await wait_for(lambda: not agent.store_ok, 10)
            assert await wait_for(lambda: agent.counters["memory_dropped_batches"] > 0, 10)
            assert len(agent._pending) <= agent.max_pending
            seen["error"] = agent.last_error
        finally:
            with store._lock:
                store._db.execute("PRAGMA max_page_count=1000000")
        assert await wait_for(lambda: agent.store_ok and not agent._pending, 15)
        agent.pipeline.health_interval = 0  # the next cut reports the drops upstream
        agent.emit(Reading("s2", "y", 1, None, time.monotonic()))
        assert await wait_for(lambda: agent.depth()[0] == 0 and not agent._pending, 20)

    try:
        run_agent(agent, controller, 60)
    finally:
        server.stop()
    assert "disk is full" in seen["error"] and "SQLITE_FULL" in seen["error"]
    c = agent.counters
    got = received_values(receiver)
    assert len(got) == len(set(got)) == 3000 - c["memory_dropped_readings"] < 3000
    assert c["batches_committed"] + c["memory_dropped_batches"] == c["batches_cut"]
    reported = receiver.query("SELECT v FROM records WHERE n LIKE '%health/memory_dropped_readings'")
    assert max(v for (v,) in reported) == c["memory_dropped_readings"]
    receiver.close()


class SlowStore(Store):
    """A disk that commits slower than the sensors produce (an SD card under wear-levelling)."""

    delay = 0.25

    def put_many(self, batches):
        time.sleep(self.delay)  # kept: the slow disk is the behaviour under test
        return super().put_many(batches)


def test_backpressure_memory_bounded_and_drops_counted(tmp_path, signing_key, trust):
    store = SlowStore(str(tmp_path / "queue.sqlite"))
    source = CountingSource(total=4000, per_tick=100, period=0.005)
    agent, receiver, server = _agent(tmp_path, signing_key, trust, source, store, max_pending=4)
    agent.pipeline.batcher.max_readings = 20
    agent.pipeline.health_interval = 1e9  # no health readings in the batches that may be dropped: counts stay exact
    agent.pipeline.last_health = time.monotonic()
    peak = []

    async def controller(agent):
        deadline = time.monotonic() + 20
        while (source.sent < 4000 or agent._pending) and time.monotonic() < deadline:
            peak.append(len(agent._pending))
            await asyncio.sleep(0.002)
        agent.pipeline.health_interval = 0  # the next cut reports the memory drops upstream
        agent.emit(Reading("s2", "y", 1, None, time.monotonic()))
        await wait_for(lambda: agent.depth()[0] == 0 and not agent._pending, 15)

    try:
        run_agent(agent, controller, 60)
    finally:
        server.stop()
    c = agent.counters
    assert max(peak) <= agent.max_pending + 1  # + the batch cut while the whole buffer is being committed
    assert c["memory_dropped_batches"] > 0  # the slow disk really fell behind
    # Every cut batch was either committed or dropped from memory, and the drops are exact.
    assert c["batches_committed"] + c["memory_dropped_batches"] == c["batches_cut"]
    got = received_values(receiver)
    assert len(got) == len(set(got)) == 4000 - c["memory_dropped_readings"]
    dropped = dict(receiver.query("SELECT n, MAX(v) FROM records WHERE n LIKE '%health/memory_dropped_readings'"))
    assert dropped and max(v for v in dropped.values() if v is not None) > 0  # reported upstream
    receiver.close()


def test_rejected_batches_are_retried_a_bounded_number_of_times(tmp_path):
    from gateway.core.clock import FakeClock
    clock = FakeClock(wall=1_767_225_600.0)
    store = Store(tmp_path / "q.sqlite", clock=clock)
    store.next_boot()
    store.put(make_batch(0))

    def reject():
        (batch,) = store.pending()
        store.quarantine(batch.store_id, "403 unknown_kid")
        assert store.pending() == []

    reject()
    for delay in Store.RETRY_DELAYS:
        clock.advance(delay - 1)
        assert store.requeue_due() == 0  # not yet due
        clock.advance(1)
        assert store.requeue_due() == 1 and ids_of(store) == [0]  # back in the queue, same bytes
        reject()
    clock.advance(10 * 86400)
    assert store.requeue_due() == 0  # attempts used up: it stays quarantined, kept and counted
    assert [row[1:3] for row in store.quarantined()] == [(1, 0)]
    assert store.counters()["quarantined"] == 1 + len(Store.RETRY_DELAYS)
    assert store.requeue_quarantined() == 1  # a technician can still send it by hand
    store.close()


def _signed_batches(n, readings=500):
    from gateway.adapters import keys
    from gateway.core import senml, wire
    from gateway.core.model import Reading
    key = keys.SigningKey.generate()
    out = []
    for b in range(n):
        rs = [Reading("s%d" % (i % 20), "temp", round(4 + (i % 37) / 100, 2), "Cel", 1.7e9 + b * 10 + i / 50, 0.01)
              for i in range(readings)]
        out.append(EncodedBatch(1, b, wire.sign(wire.encode_payload("gw", 1, b, True, senml.encode_records(
            rs, (), "gw/")), key), 0, readings, 0, 0.0))
    return out


def test_batches_are_deflated_at_rest_and_come_back_bit_for_bit(tmp_path):
    store = Store(tmp_path / "q.sqlite")
    batches = _signed_batches(5)
    store.put_many(batches)
    assert [b.data for b in store.pending(limit=10)] == [b.data for b in batches]  # the exact signed bytes
    stored = sum(r[0] for r in store._db.execute("SELECT LENGTH(data) FROM batches"))
    assert stored < 0.5 * sum(len(b.data) for b in batches)  # deflate: much less to write to the SD card
    import io
    out = io.BytesIO()
    assert store.dump(out) == (5, 0) and out.getvalue() == b"".join(b.data for b in batches)
    store.close()


def test_a_batch_damaged_on_disk_is_quarantined_not_sent_not_fatal(tmp_path):
    store = Store(tmp_path / "q.sqlite")
    batches = _signed_batches(3)
    ids = store.put_many(batches)
    blob = store._db.execute("SELECT data FROM batches WHERE id = ?", (ids[1],)).fetchone()[0]
    store._db.execute("UPDATE batches SET data = ? WHERE id = ?", (blob[:20] + b"\xff" * 40 + blob[60:], ids[1]))
    got = store.pending(limit=10)
    assert [b.seq for b in got] == [0, 2] and [b.data for b in got] == [batches[0].data, batches[2].data]
    (row,) = store.quarantined()
    assert row[1:3] == (1, 1) and row[3].startswith("damaged on disk")
    assert store.counters()["quarantined"] == 1
    store.close()
