"""Clocks, injected everywhere (house style, habit 8).

A Raspberry Pi has no RTC: until NTP synchronises, the wall clock is whatever fake-hwclock restored, or 1970.
Readings are therefore stamped on the monotonic clock, and only converted to wall time when a batch is cut
(see ``gateway.core.batcher.TimeBase``). ``synced()`` asks the kernel (adjtimex) whether the clock is synchronised.
"""

import ctypes
import ctypes.util
import time

_TIME_ERROR = 5  # adjtimex() return value when the clock is not synchronised


def kernel_clock_synced():
    """True if the kernel says an NTP client has synchronised the clock, None if it cannot tell."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex, zeroed: modes = 0 reads only
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


class SystemClock:
    """The real clocks. ``mode`` is ``auto`` (ask the kernel), ``synced`` or ``unsynced`` (force, for tests)."""

    def __init__(self, mode="auto"):
        if mode not in ("auto", "synced", "unsynced"):
            raise ValueError("clock mode must be auto, synced or unsynced")
        self.mode = mode

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    async def sleep(self, seconds):
        """Sleep on the event loop (the agent's tick sleeps through its clock, so a fake clock can drive it)."""
        import asyncio  # here, not at the top: importing the clocks pulls in no IO stack
        await asyncio.sleep(seconds)

    def synced(self):
        if self.mode != "auto":
            return self.mode == "synced"
        return bool(kernel_clock_synced())


class FakeClock:
    """A clock for tests and simulations: time moves only when told.

    ``await clock.sleep(s)`` returns once the clock was moved ``s`` seconds on (``advance`` or ``mono = ...``), never
    on real time; ``await clock.parked()`` waits until a sleeper is waiting again, i.e. until every task the last move
    woke (the agent's tick) has done its work. Sleepers may sit on any event loop; moves may come from any thread.
    """

    def __init__(self, mono=1000.0, wall=1_750_000_000.0, synced=True):
        self._mono = mono
        self.offset = wall - mono
        self.is_synced = synced
        self._sleepers = []  # (deadline, loop, future, task)
        self._woken = set()  # tasks a move woke that have not slept again (nor ended) yet
        self._park_waiters = []  # (loop, future): resolved when a woken task sleeps again

    @property
    def mono(self):
        return self._mono

    @mono.setter
    def mono(self, value):
        self._mono = value
        self._wake()

    def monotonic(self):
        return self._mono

    def wall(self):
        return self._mono + self.offset

    def synced(self):
        return self.is_synced

    def advance(self, seconds):
        self.mono = self._mono + seconds

    def _wake(self):
        due = [s for s in self._sleepers if s[0] <= self._mono]
        if due:
            self._sleepers = [s for s in self._sleepers if s[0] > self._mono]
            for _, loop, fut, task in due:
                self._woken.add(task)
                loop.call_soon_threadsafe(_resolve, fut)

    async def sleep(self, seconds):
        import asyncio  # here, not at the top: importing the clocks pulls in no IO stack
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        task = asyncio.current_task()
        self._sleepers.append((self._mono + max(0.0, seconds), loop, fut, task))
        self._woken.discard(task)
        self._notify_parked()
        self._wake()
        try:
            await fut
        finally:
            self._sleepers = [s for s in self._sleepers if s[2] is not fut]

    def sleeping(self):
        """How many sleepers wait for the clock to move."""
        return len(self._sleepers)

    def _settled(self):
        self._woken = {t for t in self._woken if not t.done()}
        return bool(self._sleepers) and not self._woken

    def _notify_parked(self):
        if self._settled():
            waiters, self._park_waiters = self._park_waiters, []
            for wloop, wfut in waiters:
                wloop.call_soon_threadsafe(_resolve, wfut)

    async def parked(self, timeout=5.0):
        """Wait (up to ``timeout`` real seconds) until some task sleeps on this clock and every task the last moves
        woke sleeps again (or ended): the work those moves made due is done. Returns whether that happened."""
        import asyncio
        deadline = asyncio.get_running_loop().time() + timeout
        await asyncio.sleep(0)  # callbacks already due (a woken sleeper's) run first
        while not self._settled():
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            self._park_waiters.append((loop, fut))
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(fut, min(left, 0.5))  # re-check: a woken task may end without sleeping
            except asyncio.TimeoutError:
                pass
        return True


def _resolve(fut):
    if not fut.done():
        fut.set_result(None)
