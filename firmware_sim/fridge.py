"""Deterministic fridge temperature generator (MicroPython-compatible).

One sample per ``dt`` seconds (default 1 Hz) of a thermostat-controlled fridge:
- a bang-bang compressor between a cut-out (~2 degC) and a cut-in (~6 degC) temperature, jittered per cycle, so the
  air temperature is a sawtooth with a ~20-40 min period: slow exponential warming towards the room, faster cooling
  while the compressor runs;
- the room temperature drifts slowly over the day (+-1.5 degC around 21 degC);
- door openings (a few per day, 10-60 s): the air warms quickly towards the room while the door is open;
- sensor noise, uniform +-0.05 degC; every value is quantised to 0.01 degC.

Randomness is a seeded xorshift32, so a seed gives the same series on CPython and MicroPython (no ``random``).
Usage: ``for t, value in samples(seed=1, seconds=86400): ...``.
"""

import math

ROOM = 21.0  # degC, mean room temperature
TAU_WALLS = 5000.0  # s, warming time constant through the walls (door shut)
TAU_DOOR = 120.0  # s, warming time constant with the door open
COOLING = 0.0125  # degC/s, compressor cooling rate
CUT_OUT = 2.0  # degC, compressor stops
CUT_IN = 6.0  # degC, compressor starts
NOISE = 0.05  # degC, half-width of the uniform sensor noise


class XorShift32:
    """Marsaglia's xorshift32; ``seed`` 0 is replaced by a fixed non-zero value."""

    def __init__(self, seed):
        self.state = (seed & 0xFFFFFFFF) or 0x9E3779B9

    def next(self):
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x

    def uniform(self, lo, hi):
        return lo + (hi - lo) * (self.next() / 4294967296.0)


def samples(seed=1, seconds=86400, dt=1.0, start=0.0):
    """Yield ``(t, value)`` for ``seconds`` of fridge air temperature, one sample every ``dt`` seconds."""
    rng = XorShift32(seed)
    temp = 4.0
    cooling = False
    cut_in = CUT_IN + rng.uniform(-0.5, 0.5)
    cut_out = CUT_OUT + rng.uniform(-0.5, 0.5)
    door_left = 0.0
    next_door = rng.uniform(1800.0, 10800.0)
    n = int(seconds / dt)
    for i in range(n):
        t = start + i * dt
        room = ROOM + 1.5 * math.sin(2.0 * math.pi * (t / 86400.0))
        if door_left <= 0 and t >= next_door:
            door_left = rng.uniform(10.0, 60.0)
            next_door = t + rng.uniform(1800.0, 10800.0)
        tau = TAU_DOOR if door_left > 0 else TAU_WALLS
        rate = (room - temp) / tau
        if cooling:
            rate -= COOLING
        temp += rate * dt
        if door_left > 0:
            door_left -= dt
        if cooling and temp <= cut_out:
            cooling = False
            cut_out = CUT_OUT + rng.uniform(-0.5, 0.5)
        elif not cooling and temp >= cut_in:
            cooling = True
            cut_in = CUT_IN + rng.uniform(-0.5, 0.5)
        noisy = temp + rng.uniform(-NOISE, NOISE)
        yield t, round(noisy * 100) / 100.0
