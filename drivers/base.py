"""The source interface: the seam between IO adapters and the pipeline.

A source gathers readings and hands each one to ``emit``. It owns its IO (a serial port, a BLE scanner), survives
its own faults (reopen, rescan, back off) and counts them in ``counters``. Everything behind it is pure.
"""

import abc


class Source(abc.ABC):
    """One input (a serial port, a BLE scanner, a GATT poller)."""

    #: stable name used in logs, counters and the console
    name = "source"

    def __init__(self):
        self.counters = {}

    def count(self, key, n=1):
        self.counters[key] = self.counters.get(key, 0) + n

    @abc.abstractmethod
    async def run(self, emit):
        """Gather until cancelled, calling ``emit(reading)`` for every ``gateway.core.model.Reading``.

        ``emit`` may also receive a ``gateway.core.model.Event`` (a source-level health event). It must never raise
        for a peer's misbehaviour: bad bytes are counted ``DecodeError`` s, lost devices are reopened with backoff.
        Cancellation (``asyncio.CancelledError``) is the only way out.
        """

    def status(self):
        """A small dict for the console and health records."""
        return {"name": self.name, "counters": dict(self.counters)}
