"""When each Modbus slave is due: the per-slave backoff scheduler. Pure: every method takes ``now``.

A failure (timeout, CRC, exception) delays only that slave by the exponential of the one backoff
(``gateway.core.backoff.delay``), without jitter: the gateway is the only master on its bus, so there is no herd
to spread, and the schedule stays exact. A success resets it.
"""

from dataclasses import dataclass

from gateway.core import backoff


@dataclass(frozen=True, slots=True)
class SlaveState:
    failures: int = 0
    next_due: float = 0.0
    last_reason: str = None

    @property
    def backing_off(self):
        return self.failures > 0


class PollScheduler:
    """When each slave is due. A failure (timeout, CRC, exception) delays only that slave, exponentially:
    ``min(cap, base * 2 ** (failures - 1))`` but never sooner than ``interval``. A success resets it.

    Pure: every method takes ``now`` (seconds on any monotonic scale).
    """

    def __init__(self, slaves, interval, base=1.0, cap=60.0, now=0.0):
        self.interval = interval
        self.base = base
        self.cap = cap
        self.states = {slave: SlaveState(0, now, None) for slave in slaves}

    def due(self, now):
        """Slaves to poll now, in order."""
        return [s for s, st in sorted(self.states.items()) if st.next_due <= now]

    def success(self, slave, now):
        self.states[slave] = SlaveState(0, now + self.interval, None)

    def failure(self, slave, now, reason):
        """Record a failure; returns the time the slave is next due."""
        failures = self.states[slave].failures + 1
        delay = max(self.interval, backoff.delay(failures - 1, self.base, self.cap))
        self.states[slave] = SlaveState(failures, now + delay, reason)
        return now + delay

    def next_wakeup(self):
        return min((st.next_due for st in self.states.values()), default=None)
