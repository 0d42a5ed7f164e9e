"""A counter's rate per day over a sliding window, from samples ``(monotonic seconds, total)``. Pure.

Used for the bytes the agent writes to the SD card per day (health record ``disk_written_bytes_per_day``): start-up
writes (the store opening, a salvage) would dominate an average since start, so the rate is taken over the last
``window_s`` (a day) and reported only once ``min_span_s`` (an hour) of samples exists.
"""

import collections

DAY = 86400.0


class DailyRate:
    def __init__(self, window_s=DAY, min_span_s=3600.0, every_s=300.0):
        self.window_s = window_s
        self.min_span_s = min_span_s
        self.every_s = every_s  # keep at most one sample this often (a day is then 288 samples)
        self._samples = collections.deque()

    def add(self, now, total):
        """Record the counter's ``total`` at ``now``; returns the rate per day, or None while too early."""
        if not self._samples or now - self._samples[-1][0] >= self.every_s:
            self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        t0, v0 = self._samples[0]
        span = now - t0
        if span < self.min_span_s:
            return None
        return round((total - v0) * DAY / span)
