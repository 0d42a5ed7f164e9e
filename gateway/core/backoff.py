"""The one backoff: capped exponential delay with jitter from an injected random source. Pure: no clock, no sleep.

Every retry loop of the gateway asks a ``Backoff`` how long to wait and sleeps itself::

    backoff = Backoff(low=1.0, high=60.0, rng=rng)
    while True:
        try:
            work()
        except Failure as exc:
            await asyncio.sleep(backoff.next(retry_after=exc.retry_after))
            continue
        backoff.reset()

The n-th failure in a row (``failures`` counts them, from 0) waits ``min(high, low * 2 ** n)`` scaled by a random
factor in ``[1 - jitter, 1)``, so gateways that lost the same backend do not come back in step. ``jitter = 0`` gives
the exact exponential (the Modbus scheduler, whose tests need exact due times). A peer's ``retry_after`` hint (an
HTTP ``Retry-After``) is honoured as a lower bound, capped at ``MAX_RETRY_AFTER_S``. ``reset()`` after a success.
"""

import random

#: a peer cannot make us wait longer than this, whatever its Retry-After says
MAX_RETRY_AFTER_S = 3600.0
#: the exponent stops growing here (2 ** 32 times ``low`` is past any sensible ``high``)
MAX_FAILURES = 32


def delay(failures, low, high):
    """The delay before retry number ``failures`` (0 for the first), without jitter."""
    return min(high, low * (2 ** min(failures, MAX_FAILURES)))


class Backoff:
    """Capped exponential backoff with jitter; ``next()`` after a failure, ``reset()`` after a success."""

    __slots__ = ("low", "high", "rng", "jitter", "failures")

    def __init__(self, low=0.5, high=300.0, rng=None, jitter=0.5):
        if not 0 < low <= high:
            raise ValueError("backoff needs 0 < low <= high, got low=%r high=%r" % (low, high))
        if not 0.0 <= jitter <= 1.0:
            raise ValueError("jitter is a fraction between 0 and 1, got %r" % (jitter,))
        self.low, self.high = low, high
        self.rng = rng if rng is not None else random.Random()
        self.jitter = jitter
        self.failures = 0

    def next(self, retry_after=None):
        """Count one failure and return the seconds to wait before the next attempt."""
        wait = delay(self.failures, self.low, self.high)
        self.failures = min(self.failures + 1, MAX_FAILURES)
        if self.jitter:
            wait *= (1.0 - self.jitter) + self.jitter * self.rng.random()
        if retry_after is not None:
            wait = max(wait, min(retry_after, MAX_RETRY_AFTER_S))
        return wait

    def reset(self):
        """A success: the next failure waits ``low`` again."""
        self.failures = 0

    def __repr__(self):
        return "Backoff(low=%g, high=%g, failures=%d)" % (self.low, self.high, self.failures)
