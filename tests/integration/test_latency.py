"""Latency (issue 21): the linger rule in the pure batcher and pipeline, the agent's ticker on a fake clock, and the
store's sync interval. Structure only: the measured figures are the bench's (``bench_latency``), not asserts here.

The rule: with nothing in flight a batch is cut once its oldest reading waited ``linger_s`` (0: at once); while
something is in flight it grows, up to ``hold_s`` (the kill window), ``max_readings`` or ``max_age_s``.
"""

import asyncio
import os
import threading
import time

from gateway.adapters import keys
from gateway.adapters.store import Store
from gateway.adapters.uplink import Uplink
from gateway.app.agent import Agent
from gateway.app.config import BatchSection, StoreSection, from_dict
from gateway.core import wire
from gateway.core.batcher import Batcher
from gateway.core.clock import FakeClock
from gateway.core.model import EncodedBatch, Event, Reading
from gateway.core.pipeline import Pipeline
from tests.support import run_agent as run

GW = "gw-lat"


def reading(t, v=1.0):
    return Reading("s1", "temp", v, "Cel", t)


def pipeline(clock, **batch):
    batch.setdefault("max_readings", 1000)
    batch.setdefault("target_bytes_per_reading", 0.0)  # the ordinary rule; the byte budget: tests/unit/test_byte_budget.py
    return Pipeline(gw=GW, boot=1, signer=wire.Signer(keys.SigningKey.generate()), clock=clock,
                    batch=BatchSection(**batch), health_interval=1e9)


# -- the pure rule ---------------------------------------------------------------------------------------------
def test_batcher_deadline_is_linger_when_idle_and_hold_when_busy():
    b = Batcher(1000, max_age=10.0, linger=0.1, hold=0.2)
    assert b.deadline(True) is None and not b.due(5.0, True)
    b.add(reading(5.0), 5.0)
    assert b.deadline(True) == 5.1 and b.deadline(False) == 5.2
    assert not b.due(5.09, True) and b.due(5.1, True)
    assert not b.due(5.19, False) and b.due(5.2, False)


def test_batcher_without_linger_or_hold_keeps_the_old_rule():
    b = Batcher(1000, max_age=10.0)
    b.add(reading(0.0), 0.0)
    assert b.deadline(True) == b.deadline(False) == 10.0


def test_idle_pipeline_cuts_at_once_with_zero_linger_and_grows_while_busy():
    clock = FakeClock(mono=0.0)
    p = pipeline(clock, linger_s=0.0, hold_s=0.2)
    assert len(p.accept(reading(0.0), 0.0)) == 1  # the first reading after start
    assert p.idle is False  # that batch is in flight
    for i in range(50):  # busy: the batch grows
        assert p.accept(reading(0.001 * i, i), 0.001 * i) == ()
    assert p.set_idle(True, 0.06)[0].readings == 50  # the link is free: cut at once (linger 0)
    assert len(p.batcher) == 0 and p.idle is False
    p.set_idle(True, 0.07)
    out = p.accept(reading(0.07), 0.07)
    assert len(out) == 1 and out[0].readings == 1  # nothing in flight: this reading goes at once


def test_busy_pipeline_cuts_at_hold_and_idle_pipeline_after_linger():
    clock = FakeClock(mono=0.0)
    p = pipeline(clock, linger_s=0.1, hold_s=0.2)
    p.accept(reading(0.0), 0.0)  # first cut
    p.accept(reading(1.0), 1.0)
    assert p.deadline() == 1.2  # busy: hold
    assert p.tick(1.19) == ()
    assert p.tick(1.2)[0].readings == 1
    p.set_idle(True, 2.0)
    p.accept(reading(2.0), 2.0)
    assert p.deadline() == 2.1  # idle: linger
    assert p.tick(2.09) == ()
    assert p.set_idle(True, 2.05) == ()  # linger not over yet: nothing to cut
    assert p.tick(2.1)[0].readings == 1


def test_max_readings_still_caps_a_batch_while_busy():
    clock = FakeClock(mono=0.0)
    p = pipeline(clock, max_readings=100, linger_s=0.1, hold_s=0.2)
    p.accept(reading(0.0), 0.0)
    sizes = [b.readings for i in range(250) for b in p.accept(reading(0.0001 * i, i), 0.0001 * i)]
    assert sizes == [100, 100]


def test_an_alarm_keeps_its_lane_while_busy():
    clock = FakeClock(mono=0.0)
    p = pipeline(clock, linger_s=0.1, hold_s=0.2)
    p.accept(reading(0.0), 0.0)
    p.accept(reading(0.01), 0.01)
    out = p.accept(Event("s1", "alarm.high", "raised", "hot", 0.02, alarm=True), 0.02)
    assert [(b.priority, b.events, b.readings) for b in out] == [(1, 1, 0)]
    assert len(p.batcher) == 1  # the reading still waits for its own cut


def test_config_defaults_and_ranges():
    assert BatchSection().linger_s <= 0.25 and BatchSection().hold_s <= 0.25
    assert BatchSection().max_age_s == 10.0 and StoreSection().sync_interval_s > 0
    cfg = from_dict({"batch": {"linger_s": 0, "hold_s": 0.5}, "store": {"sync_interval_s": 2}})
    assert (cfg.batch.linger_s, cfg.batch.hold_s, cfg.store.sync_interval_s) == (0.0, 0.5, 2.0)


# -- the agent on a fake clock ---------------------------------------------------------------------------------
class Gate(Uplink):
    """An uplink that holds each send until the test opens the gate: "something in flight" on demand."""

    def __init__(self):
        self.sent = []
        self.open = threading.Event()
        self.open.set()
        self.sending = threading.Event()

    def send(self, batch):
        self.sending.set()
        assert self.open.wait(10)
        self.sent.append(batch)
        self.sending.clear()


async def until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.005)


def test_agent_cuts_after_linger_when_idle_and_lets_the_batch_grow_while_a_send_is_in_flight(tmp_path):
    clock = FakeClock()
    uplink = Gate()
    store = Store(str(tmp_path / "q.sqlite"), clock=clock, sync_interval=10.0)
    agent = Agent(gw=GW, key=keys.SigningKey.generate(), store=store, uplink=uplink, clock=clock,
                  batch=BatchSection(max_readings=1000, max_age_s=10.0, linger_s=0.1, hold_s=0.2),
                  health_interval=1e9)

    async def driver():
        assert await clock.parked()
        agent.emit(reading(clock.monotonic()))  # the first reading goes at once
        await until(lambda: len(uplink.sent) == 1 and agent.pipeline.idle)
        agent.emit(reading(clock.monotonic()))  # idle: waits out the linger only
        assert await clock.parked()
        assert len(agent.pipeline.batcher) == 1
        clock.advance(0.1)
        await until(lambda: len(uplink.sent) == 2)
        assert uplink.sent[1].readings == 1
        await until(lambda: agent.pipeline.idle)
        # Now hold the next send in flight: readings behind it grow one batch, cut at hold, not at linger.
        uplink.open.clear()
        agent.emit(reading(clock.monotonic()))
        clock.advance(0.1)
        await until(lambda: uplink.sending.is_set())  # batch 3 in flight
        for _ in range(5):
            agent.emit(reading(clock.monotonic()))
        clock.advance(0.1)  # linger over, but busy: the batch keeps growing
        assert await clock.parked()
        assert len(agent.pipeline.batcher) == 5
        clock.advance(0.1)  # hold over: cut (and committed) even though the link is busy
        assert await clock.parked()
        await until(lambda: len(agent.pipeline.batcher) == 0 and agent.counters["batches_committed"] >= 4)
        uplink.open.set()
        await until(lambda: len(uplink.sent) == 4)
        assert [b.readings for b in uplink.sent[1:]] == [1, 1, 5]  # the first one also holds the health records
    run(agent, driver)


def test_agent_fsyncs_only_batches_still_undelivered_after_the_sync_interval(tmp_path):
    clock = FakeClock()
    uplink = Gate()
    store = Store(str(tmp_path / "q.sqlite"), clock=clock, sync_interval=1.0)
    agent = Agent(gw=GW, key=keys.SigningKey.generate(), store=store, uplink=uplink, clock=clock,
                  batch=BatchSection(max_readings=1000, max_age_s=10.0, linger_s=0.0, hold_s=0.2),
                  health_interval=1e9)

    async def driver():
        assert await clock.parked()
        fsyncs = store.fsyncs
        for _ in range(5):  # delivered at once: no fsync at all
            agent.emit(reading(clock.monotonic()))
            await until(lambda: agent.pipeline.idle)
            clock.advance(0.5)
            assert await clock.parked()
        assert store.fsyncs == fsyncs and store.syncs == 0
        uplink.open.clear()  # now the link hangs: the batch stays queued, one fsync after the interval
        agent.emit(reading(clock.monotonic()))
        await until(lambda: store.snapshot.depth[0] >= 1)
        clock.advance(0.5)
        assert await clock.parked()
        assert store.syncs == 0
        clock.advance(0.6)
        await until(lambda: store.syncs == 1)
        assert store.fsyncs == fsyncs + 1
        uplink.open.set()
    run(agent, driver)


# -- the store -------------------------------------------------------------------------------------------------
def _batch(seq):
    return EncodedBatch(1, seq, b"\xd2" + bytes(200), 0, 10, 0, 0.0)


def test_store_with_a_sync_interval_commits_without_fsync_and_syncs_what_is_still_queued(tmp_path):
    clock = FakeClock()
    store = Store(str(tmp_path / "q.sqlite"), clock=clock, sync_interval=2.0)
    store.next_boot()
    base = store.fsyncs
    a, b = store.put_many([_batch(0), _batch(1)])
    assert store.fsyncs == base  # reached the OS, not the disk
    clock.advance(1.0)
    assert not store.sync_due(clock.monotonic())
    store.ack([a])
    clock.advance(1.0)
    assert store.sync_due(clock.monotonic())  # b waited 2 s undelivered
    store.sync()
    assert store.fsyncs == base + 1 and store.syncs == 1 and not store.sync_due(clock.monotonic() + 100)
    c = store.put(_batch(2))
    store.ack([b, c])
    assert not store.sync_due(clock.monotonic() + 100)  # delivered: nothing left to make durable


def test_store_without_a_sync_interval_fsyncs_every_commit_as_before(tmp_path):
    store = Store(str(tmp_path / "q.sqlite"), clock=FakeClock())
    base = store.fsyncs
    store.put(_batch(0))
    assert store.fsyncs == base + 1 and not store.sync_due(1e9)
    assert os.path.exists(str(tmp_path / "q.sqlite-wal"))


# -- deliver first ----------------------------------------------------------------------------------------------
def deliver_first_agent(tmp_path, clock, uplink):
    store = Store(str(tmp_path / "q.sqlite"), clock=clock, sync_interval=10.0)
    agent = Agent(gw=GW, key=keys.SigningKey.generate(), store=store, uplink=uplink, clock=clock,
                  batch=BatchSection(max_readings=1000, max_age_s=10.0, linger_s=0.0, hold_s=0.2),
                  health_interval=1e9, deliver_first=True)
    return agent, store


def test_deliver_first_sends_from_memory_and_never_writes_what_the_upstream_acknowledged_in_time(tmp_path):
    clock = FakeClock()
    uplink = Gate()
    agent, store = deliver_first_agent(tmp_path, clock, uplink)

    async def driver():
        assert await clock.parked()
        commits = store.commits
        for i in range(5):
            agent.emit(reading(clock.monotonic(), i))
            await until(lambda: len(uplink.sent) == i + 1 and agent.pipeline.idle)
            clock.advance(0.5)
            assert await clock.parked()
        assert store.commits == commits and store.snapshot.depth[0] == 0  # nothing reached the disk
        assert agent.counters["batches_delivered_unwritten"] == 5
    run(agent, driver)


def test_deliver_first_writes_a_batch_at_its_deadline_and_deletes_it_when_the_late_ack_comes(tmp_path):
    clock = FakeClock()
    uplink = Gate()
    agent, store = deliver_first_agent(tmp_path, clock, uplink)

    async def driver():
        assert await clock.parked()
        agent.emit(reading(clock.monotonic()))
        await until(lambda: len(uplink.sent) == 1 and agent.pipeline.idle)
        uplink.open.clear()  # the next send hangs
        agent.emit(reading(clock.monotonic()))
        await until(lambda: uplink.sending.is_set())
        clock.advance(0.1)
        assert await clock.parked()
        assert store.snapshot.depth[0] == 0  # before its deadline: in memory only
        clock.advance(0.1)  # its oldest reading is hold_s old: written although it is in flight
        await until(lambda: store.snapshot.depth[0] == 1)
        uplink.open.set()  # the late acknowledgement deletes the stored copy
        await until(lambda: len(uplink.sent) == 2 and store.snapshot.depth[0] == 0)
        assert [b.readings for b in uplink.sent][1] == 1
    run(agent, driver)
