"""gateway.core.backoff: the one retry delay (pure; the random source is injected and seeded here)."""

import random

import pytest

from gateway.core.backoff import MAX_RETRY_AFTER_S, Backoff, delay


class Fixed:
    """A random source that always returns ``x``."""

    def __init__(self, x):
        self.x = x

    def random(self):
        return self.x


def test_delay_doubles_and_caps():
    assert [delay(n, 1.0, 10.0) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert delay(10_000, 0.5, 300.0) == 300.0  # no overflow for a long outage


def test_without_jitter_the_exact_exponential():
    b = Backoff(0.5, 4.0, jitter=0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.failures == 6


def test_jitter_scales_into_half_to_one():
    assert Backoff(1.0, 60.0, Fixed(0.0)).next() == 0.5
    assert Backoff(1.0, 60.0, Fixed(0.999)).next() == pytest.approx(0.9995)
    b = Backoff(1.0, 8.0, random.Random(7))
    for n in range(12):
        d = b.next()
        ceiling = min(8.0, 2 ** n)
        assert ceiling / 2 <= d < ceiling


def test_seeded_rng_is_reproducible():
    a, b = Backoff(0.2, 30.0, random.Random(42)), Backoff(0.2, 30.0, random.Random(42))
    assert [a.next() for _ in range(10)] == [b.next() for _ in range(10)]


def test_reset_starts_again_at_low():
    b = Backoff(1.0, 60.0, Fixed(0.999), jitter=0)
    for _ in range(5):
        b.next()
    b.reset()
    assert b.failures == 0 and b.next() == 1.0


def test_retry_after_is_a_lower_bound_capped():
    b = Backoff(1.0, 60.0, Fixed(0.0))
    assert b.next(retry_after=30.0) == 30.0
    assert b.next(retry_after=0.1) == 1.0  # 2 s * 0.5: the hint does not shorten the wait
    assert b.next(retry_after=10 ** 9) == MAX_RETRY_AFTER_S


def _agent_reference(low, high, rng, hints):
    """The delays of the agent's own ``Backoff`` as it was before the switch (gateway/app/agent.py), kept here so
    the loops that move to the core one keep their behaviour: same order of arguments, same draws from ``rng``."""
    out, failures = [], 0
    for retry_after in hints:
        delay = min(high, low * (2 ** failures))
        failures = min(failures + 1, 32)
        delay *= 0.5 + 0.5 * rng.random()
        if retry_after is not None:
            delay = max(delay, min(retry_after, 3600.0))
        out.append(delay)
    return out


def test_same_behaviour_as_the_agent_backoff():
    """The agent's and the uplinks' loops can switch: same constructor order, next(retry_after), reset, failures."""
    hints = [None, None, 5.0, None, None, 4000.0, None] + [None] * 40
    ours = Backoff(0.5, 300.0, random.Random(3))
    assert [ours.next(h) for h in hints] == _agent_reference(0.5, 300.0, random.Random(3), hints)
    ours.reset()
    assert ours.failures == 0


@pytest.mark.parametrize("low, high, jitter", [(0, 1, 0.5), (2, 1, 0.5), (1, 2, 1.5), (-1, 2, 0)])
def test_bad_parameters_are_refused(low, high, jitter):
    with pytest.raises(ValueError):
        Backoff(low, high, jitter=jitter)
