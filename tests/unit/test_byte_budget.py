"""The byte budget of the batcher (issue 21): batches grow past linger/hold only while that brings the bytes per
reading on the wire under the target within the latency budget, and the pipeline learns the cost model from the
batches it seals. Driven by a fake clock; sizes come from real signed, deflated batches."""

import random
import zlib

from gateway.adapters import keys
from gateway.core import wire
from gateway.core.batcher import PROBE_EVERY, Batcher
from gateway.core.clock import FakeClock
from gateway.core.model import Reading
from gateway.core.pipeline import Pipeline


def budget_batcher(**kw):
    args = dict(max_readings=1000, max_age=10.0, linger=0.1, hold=0.2, target=6.0, stretch=0.8, journaled=True)
    args.update(kw)
    return Batcher(**args)


def known(b, per_reading, fixed, rate):
    b.per_reading, b.fixed, b.rate = per_reading, fixed, rate
    return b


def r(t):
    return Reading("s1", "temp", 4.0, "Cel", t)


def test_budget_is_the_size_that_brings_fixed_plus_per_reading_under_the_target():
    b = known(budget_batcher(), per_reading=4.0, fixed=300.0, rate=400.0)
    need = b.budget()
    # aims 10 % under: 300 / (5.4 - 4.0) = 214.3 readings
    assert need == 215
    assert (300.0 + 4.0 * need) / need <= 0.9 * 6.0


def test_no_growth_when_the_target_is_out_of_reach_or_the_ordinary_cut_meets_it():
    assert known(budget_batcher(), 6.5, 300.0, 400.0).budget() == 0  # per reading alone is over the target
    assert known(budget_batcher(), 4.0, 300.0, 20.0).budget() == 0  # 20/s gathers 16 in 0.8 s, needs 215
    assert known(budget_batcher(), 0.4, 300.0, 1000.0).budget() == 0  # linger (0.1 s) already gathers 100 > 57
    assert known(budget_batcher(max_readings=100), 4.0, 300.0, 400.0).budget() == 0  # over the size cap
    assert known(budget_batcher(target=0.0), 4.0, 300.0, 400.0).budget() == 0  # no budget
    assert budget_batcher().budget() == 0  # nothing learned yet


def test_without_a_journal_growth_stops_at_hold():
    b = known(budget_batcher(journaled=False), 4.0, 300.0, 400.0)
    assert b.growth_limit() == 0.2
    assert b.budget() == 0  # 215 readings take 0.54 s at 400/s: past the kill window
    b = known(budget_batcher(journaled=False), 4.0, 300.0, 1100.0)
    assert b.budget() == 215  # 0.195 s at 1,100/s: within hold, and more than linger's 110
    b.add(r(0.0), 0.0)
    assert b.deadline(idle=True) == 0.2


def test_a_growing_batch_ignores_linger_and_hold_and_is_cut_at_its_size():
    b = known(budget_batcher(), 4.0, 300.0, 400.0)
    full = [b.add(r(100.0 + i / 400.0), 100.0 + i / 400.0) for i in range(215)]
    assert b.wanted == 215
    assert full[-1] and not any(full[:-1])
    assert not b.due(100.3, idle=True)  # past linger and hold, yet growing
    assert b.deadline(idle=True) == 100.8  # at most budget_linger_s


def test_the_rate_is_learned_from_the_cuts():
    b = budget_batcher()
    for k in range(1, 6):
        for i in range(40):
            b.add(r(k * 0.1), k * 0.1)
        b.cut(k * 0.1)
    assert abs(b.rate - 400.0) < 1e-6


def test_a_probe_grows_one_batch_to_the_latency_budget_and_probes_back_off_while_out_of_reach():
    b = known(budget_batcher(), 7.0, 300.0, 400.0)  # learned from small batches: looks out of reach
    b.add(r(0.0), 0.0)
    assert b.probing and b.wanted == 320  # 400/s x 0.8 s
    b.cut(0.8)
    assert b.probed
    b.learn(320, 320 * 7.0 + 300, 160, 160 * 7.0 + 300)  # the probe says: still 7 per reading
    assert not b.probed and b.per_reading == 7.0
    waits = []
    for _ in range(3):
        n = 0
        while True:
            n += 1
            b.add(r(1.0), 1.0)
            probing = b.probing
            b.cut(None)
            if probing:
                b.learn(320, 320 * 7.0 + 300, 160, 160 * 7.0 + 300)
                break
        waits.append(n)
    assert waits == [PROBE_EVERY, 2 * PROBE_EVERY, 4 * PROBE_EVERY]


def test_a_probe_that_finds_the_target_in_reach_replaces_the_pessimistic_model():
    b = known(budget_batcher(), 7.0, 250.0, 400.0)
    b.model_n = 40
    b.add(r(0.0), 0.0)
    b.cut(0.8)
    b.learn(320, 300 + 4.0 * 320, 160, 300 + 4.0 * 160)
    assert b.per_reading == 4.0 and b.fixed == 300.0
    assert b.budget() == 215
    # a small batch afterwards moves the model only a little
    b.learn(40, 300 + 6.0 * 40, 20, 300 + 6.0 * 20)
    assert 4.0 < b.per_reading < 4.1


def make_pipeline(frame_bytes=60):
    clock = FakeClock(mono=100.0, wall=1_750_000_000.0)
    batch = type("B", (), dict(max_readings=1000, max_age_s=10.0, linger_s=0.1, hold_s=0.2,
                               target_bytes_per_reading=6.0, budget_linger_s=0.8, time_quantum_s=1.0))
    p = Pipeline(gw="gw-1", boot=7, signer=wire.Signer(keys.SigningKey.generate()), clock=clock, batch=batch,
                 journaled=True, frame_bytes=frame_bytes)
    return p, clock


def feed_200x2(p, clock, seconds, rng):
    """200 sensors x 2 quantities at 1 Hz, as the agent sees them with the link idle between batches."""
    values = [[4 + rng.random(), 50 + 10 * rng.random()] for _ in range(200)]
    sealed = []
    for k in range(int(200 * seconds)):
        now = 100.0 + k / 200.0
        clock.mono = now
        i = k % 200
        for q, name, unit, step in ((0, "temp", "Cel", 0.01), (1, "hum", "%RH", 0.1)):
            values[i][q] += step * rng.choice((-2, -1, 0, 1, 2))
            value = round(values[i][q], 2 if q == 0 else 1)
            sealed += p.accept(Reading("s%d" % i, name, value, unit, now, step), now)
        sealed += p.tick(now)
        sealed += p.set_idle(True, now)
    return sealed


def test_pipeline_learns_the_model_and_meets_the_budget_for_200x2_at_1_hz():
    p, clock = make_pipeline()
    sealed = feed_200x2(p, clock, 12.0, random.Random(21))
    late = sealed[-8:-1]  # steady state (the last one is whatever was left)
    sizes = [len(zlib.compress(b.data, 6)) + 60 for b in late]
    per_reading = sum(sizes) / sum(b.readings for b in late)
    assert per_reading <= 6.0
    assert all(b.readings <= 0.8 * 400 + 2 for b in late)  # within the latency budget
    assert min(b.readings for b in sealed[1:10]) < 60  # before it learned: the ordinary linger cut (~40)
    log = p.take_log()
    seals = [e for e in log if e.__class__ is tuple]
    assert [b.seq for b, _ in seals] == [b.seq for b in sealed] and all(consumed for _, consumed in seals)
    logged = sum(1 for e in log if e.__class__ is Reading)
    assert logged == 200 * 2 * 12
    # sealed or still open (the first batch also carries the health record readings_bad_value)
    assert sum(b.readings for b in sealed) + len(p.batcher.readings) == logged + 1


def test_no_probe_while_the_ordinary_cut_meets_the_target():
    b = known(budget_batcher(), 0.4, 430.0, 1000.0)  # a single stream: 81 readings needed, linger gathers 100
    for i in range(3 * PROBE_EVERY):
        b.add(r(i), float(i))
        assert not b.probing and b.wanted == 0
        b.cut(None)
