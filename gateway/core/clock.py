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

    def synced(self):
        if self.mode != "auto":
            return self.mode == "synced"
        return bool(kernel_clock_synced())


class FakeClock:
    """A clock for tests and simulations: time moves only when told."""

    def __init__(self, mono=1000.0, wall=1_750_000_000.0, synced=True):
        self.mono = mono
        self.offset = wall - mono
        self.is_synced = synced

    def monotonic(self):
        return self.mono

    def wall(self):
        return self.mono + self.offset

    def synced(self):
        return self.is_synced

    def advance(self, seconds):
        self.mono += seconds
