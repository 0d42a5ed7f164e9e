"""Rate limiting of one output (a relay, a buzzer, a program): pure, the time comes in as ``now``.

A flapping sensor must not machine-gun a relay. ``Gate`` stands between what the events want and what the output
is told:

* ``min_interval``: two changes of the output are at least this many seconds apart; a change wanted sooner waits
  (the latest wish wins, so raised-then-cleared inside the interval never reaches the output);
* ``hold``: once switched on, the output stays on at least this long;
* flap protection: when the wanted state flipped more than ``flap_max`` times within ``flap_window`` seconds, the
  output is latched on (an alarm that flaps is still an alarm) until the wish has stayed the same for
  ``flap_window``; then it follows the wish again.

The first change is never delayed: a buzzer sounds at the first alarm at once.

A switch gate (``switch=True``) carries on/off and ignores a wish equal to the current one. A run gate
(``switch=False``, for programs) carries any value, each wish is one run; ``hold`` and flap protection do not
apply. ``request(value, now)`` and ``due(now)`` return ``(value,)`` when the output must change now, else ``()``;
``deadline()`` says when ``due`` next has something (or None).
"""

import collections

NOTHING = ()


class Gate:
    def __init__(self, min_interval=1.0, hold=0.0, flap_max=6, flap_window=300.0, switch=True):
        self.min_interval = min_interval
        self.hold = hold if switch else 0.0
        self.flap_max = flap_max
        self.flap_window = flap_window
        self.switch = switch
        self.state = False  # what the output was last told (a switch starts off: a board boots off)
        self.wanted = False
        self.pending = NOTHING  # (value,) waiting for its time
        self.last_change = None
        self.on_since = None
        self.flips = collections.deque()
        self.latched = False
        self.counters = collections.Counter()

    def request(self, value, now):
        if self.switch:
            value = bool(value)
            if value == self.wanted:
                return self.due(now)
            self.wanted = value
            self._flip(now)
            target = True if self.latched else value
        else:
            target = value
        return self._settle(target, now)

    def due(self, now):
        """A change whose time has come (a deferred wish, or the end of a flap latch)."""
        if self.latched and self.flips and now - self.flips[-1] >= self.flap_window:
            self.latched = False
            self.flips.clear()
            return self._settle(self.wanted, now)
        if self.pending:
            return self._settle(self.pending[0], now)
        return NOTHING

    def deadline(self):
        times = []
        if self.pending:
            times.append(self._earliest(self.pending[0]))
        if self.latched and self.flips:
            times.append(self.flips[-1] + self.flap_window)
        return min(times) if times else None

    def _flip(self, now):
        flips = self.flips
        flips.append(now)
        while flips and now - flips[0] > self.flap_window:
            flips.popleft()
        if len(flips) > self.flap_max and not self.latched:
            self.latched = True
            self.counters["flap_latched"] += 1

    def _earliest(self, target):
        t = 0.0 if self.last_change is None else self.last_change + self.min_interval
        if self.switch and self.state and not target and self.on_since is not None:
            t = max(t, self.on_since + self.hold)
        return t

    def _settle(self, target, now):
        if self.switch and target == self.state:
            if self.pending:
                self.counters["coalesced"] += 1  # the wish went back before its time: nothing to do
            self.pending = NOTHING
            return NOTHING
        if now < self._earliest(target):
            if not self.pending:
                self.counters["deferred"] += 1
            elif self.pending[0] is not target:
                self.counters["coalesced"] += 1  # a newer wish replaces the one waiting
            self.pending = (target,)
            return NOTHING
        self.pending = NOTHING
        self.last_change = now
        if self.switch:
            self.state = target
            self.on_since = now if target else None
        self.counters["changes"] += 1
        return (target,)
