"""The whole agent on a FakeClock: its tick sleeps through the clock, so moving the clock runs the tick (max_age
cuts, heartbeats, stale sensors, quarantine retries) with no real waiting, and a stopped clock runs nothing."""

import asyncio
import time

from gateway.adapters import keys
from gateway.adapters.store import Store
from gateway.adapters.uplink import Uplink
from gateway.app.agent import Agent
from gateway.app.config import BatchSection
from gateway.core.clock import FakeClock
from gateway.core.errors import UplinkError
from gateway.core.model import Event, Reading
from gateway.core.rules import RuleEngine
from tests.support import run_agent as run

GW = "gw-fake"


class Recorder(Uplink):
    def __init__(self, reject=0):
        self.sent = []
        self.reject = reject  # reject the first N sends with a 4xx

    def send(self, batch):
        if self.reject:
            self.reject -= 1
            raise UplinkError("rejected", retryable=False, status=422)
        self.sent.append(batch)


async def until(predicate, timeout=10.0):
    """Wait on a condition (the store and uplink threads are real); never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.005)


def agent_on(tmp_path, clock, uplink, **options):
    store = Store(str(tmp_path / "q.sqlite"), clock=clock)
    options.setdefault("batch", BatchSection(max_readings=1000, max_age_s=60.0, time_quantum_s=1.0))
    return Agent(gw=GW, key=keys.SigningKey.generate(), store=store, uplink=uplink, clock=clock,
                 health_interval=1e9, **options), store


def test_max_age_cut_happens_when_the_clock_moves_and_only_then(tmp_path):
    clock = FakeClock()
    uplink = Recorder()
    # linger and hold as long as max_age: this test is about max_age (tests/integration/test_latency.py has the short ones)
    agent, store = agent_on(tmp_path, clock, uplink, batch=BatchSection(
        max_readings=1000, max_age_s=60.0, linger_s=60.0, hold_s=60.0, time_quantum_s=1.0))

    async def driver():
        assert await clock.parked()  # the tick sleeps on the clock
        agent.emit(Reading("s1", "temp", 4.0, "Cel", clock.monotonic()))  # the first reading goes at once
        agent.emit(Reading("s1", "temp", 4.5, "Cel", clock.monotonic()))
        await until(lambda: len(uplink.sent) == 1)
        for _ in range(3):  # the clock stands still: the tick does not run, the reading stays in the batcher
            assert await clock.parked()
        assert len(agent.pipeline.batcher) == 1
        clock.advance(59.9)
        assert await clock.parked()  # the tick woken by that move has run
        assert len(agent.pipeline.batcher) == 1
        clock.advance(0.2)  # the tick's next period (0.2 s of the clock), now past max_age
        assert await clock.parked()
        assert len(agent.pipeline.batcher) == 0  # cut by the tick at max_age, on the fake clock
        await until(lambda: len(uplink.sent) == 2)
        assert uplink.sent[1].created == clock.wall()  # sealed at the moved time

    run(agent, driver)
    assert store.depth()[0] == 0
    store.close()


def test_an_hour_of_heartbeats_and_a_stale_sensor_in_fake_time(tmp_path):
    clock = FakeClock()
    uplink = Recorder()
    rules = RuleEngine([{"match": {"name": "temp"}, "deadband": 5.0, "heartbeat": 600.0, "stale_after": 1800.0}],
                       event_factory=Event)
    agent, store = agent_on(tmp_path, clock, uplink, rules=rules)

    async def driver():
        assert await clock.parked()
        t0 = clock.monotonic()
        for k in range(6):  # one reading a minute, inside the deadband: only heartbeats forward them
            clock.mono = t0 + 60.0 * k
            agent.emit(Reading("s1", "temp", 4.0 + 0.01 * k, "Cel", clock.monotonic()))
            assert await clock.parked()
        for minute in range(6, 61):  # then silence for the rest of the hour, a tick a minute
            clock.mono = t0 + 60.0 * minute
            assert await clock.parked()

    run(agent, driver)
    assert rules.counters["heartbeat"] >= 1
    assert agent.counters["events"] == 1  # "silent", raised by the tick once stale_after passed
    sent_events = sum(b.events for b in uplink.sent)
    assert sent_events == 1
    store.close()


def test_quarantine_retry_runs_on_the_fake_clock(tmp_path):
    clock = FakeClock(wall=1_750_000_000.0)
    uplink = Recorder(reject=1)
    agent, store = agent_on(tmp_path, clock, uplink, retry_every=60.0)
    store.RETRY_DELAYS = (300.0,)

    async def driver():
        assert await clock.parked()
        agent.emit(Reading("s1", "temp", 4.0, "Cel", clock.monotonic()))
        await until(lambda: agent.counters["quarantined"] == 1)
        clock.advance(120.0)  # a retry check runs, but the batch's retry is not due yet
        assert await clock.parked()
        assert agent.counters["quarantine_retries"] == 0 and len(store.quarantined()) == 1
        clock.advance(300.0)
        assert await clock.parked()
        assert agent.counters["quarantine_retries"] == 1
        await until(lambda: len(uplink.sent) == 1)

    run(agent, driver)
    assert store.quarantined() == [] and store.depth()[0] == 0
    store.close()
