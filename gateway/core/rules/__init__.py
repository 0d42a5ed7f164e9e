"""Local filtering and alarms: a pure rules engine that also runs, unchanged, under MicroPython.

Readings go in, the readings to forward and the events to report come out. The engine never reads a clock: times
come from ``reading.t`` and from the ``now`` given to :meth:`RuleEngine.tick`. It does no IO and keeps no module
state. It is written to MicroPython's subset (no dataclasses, typing, fnmatch, f-strings, ``math.isclose``), and
``tests/integration/test_rules_micropython.py`` runs its cases on the real ``micropython`` binary.

Input readings are duck-typed: ``sensor`` (str), ``name`` (str, the quantity), ``value``, ``t`` (float seconds).
The engine forwards the very same objects; it never copies or re-stamps a reading.

API::

    engine = RuleEngine(rules, event_factory=None)   # rules: a list of dicts (from TOML); ValueError if invalid
    res = engine.process(reading)    # -> Result
    res = engine.tick(now)           # -> Result: heartbeats, "silent" events
    res = engine.flush()             # -> Result: every pending swinging-door point, in .send
    engine.active_alarms()           # -> list of the "raised" events still in force, in raise order
    engine.counters                  # -> dict, a fresh copy: reason -> count

``Result`` has three tuples: ``send`` (readings to forward), ``heartbeat`` (readings forwarded because the heartbeat
was due at ``tick``; they carry their ORIGINAL time, which can be older than ``now``) and ``events``. A result that
holds nothing is one shared object, ``EMPTY`` (falsy; do not mutate it).

Configuration. Each rule is a dict with ``match = {"sensor": glob, "name": glob}`` (``*`` and ``?``; a missing key
matches everything) and option keys, in groups. **Rules merge per group**: for each group, the first rule in the
list that matches the (sensor, name) stream and sets any key of that group supplies the whole group; other groups can
come from later rules. So a specific rule placed first overrides a catch-all rule below it, group by group. The
resolution is cached per stream. Groups and keys:

- thresholds: ``low``, ``high``, ``low_low``, ``high_high``, ``hysteresis`` (absolute, default 0), ``delay_on``
  (seconds, default 0). Required order: low_low < low < high < high_high (for those set).
- deadband: ``deadband`` (absolute) or ``deadband_pct`` (percent of the last sent value); not both.
- heartbeat: ``heartbeat`` (seconds).
- stale: ``stale_after`` (seconds).
- battery: ``battery_low`` and ``battery_hysteresis`` (default 2.0); only streams named ``batt`` or ``battery``.
- rssi: ``rssi_weak`` (dBm) and ``rssi_hysteresis`` (default 3.0); only streams named ``rssi``.
- compression: ``swinging_door`` (maximum deviation, same unit as the value).
- rate: ``rate_limit`` (readings per second) and ``burst`` (default max(1, rate_limit)).

Pipeline order for one reading: stale clear -> rate limit -> thresholds and health (they see every reading that was
not rate-limited) -> deadband -> swinging door. Values that are not finite int/float (str, bool, None, NaN, inf)
pass through untouched: they are only rate-limited, and they count as "seen" for ``stale_after``.

Thresholds. Per stream at most one threshold alarm is active: one of low_low, low, high, high_high. A level is
entered when the value is strictly beyond it (``v > high``, ``v < low``) and has been beyond it, on every reading,
for ``delay_on`` seconds (judged at readings; ``tick`` never raises thresholds). It is kept while the value stays
beyond the level minus the hysteresis (``v > high - hysteresis``). Escalation (high -> high_high) honours delay_on
for the higher level; de-escalation (high_high -> high) and clearing are immediate once the hysteresis is passed.
A change of level emits ``cleared`` for the old level, then ``raised`` for the new one, in one result. Events are
named ``alarm.low_low``, ``alarm.low``, ``alarm.high``, ``alarm.high_high`` with ``level`` the level, ``alarm``
True, ``value`` and ``t`` from the reading.

Deadband. A reading is forwarded only when ``|v - ref| > deadband`` (or ``> ref * pct / 100``), where ``ref`` is
the value of the last reading that passed the deadband (with no swinging door that is the last one sent). The first
reading of a stream always passes. Suppressed readings are counted as ``suppressed_deadband``.

Swinging door (bounded-error compression). Only readings that passed the deadband are compressed; every kept point
is a real reading. Rebuilding by linear interpolation between kept points, every compressed input is within
``swinging_door`` of the line (relative to the raw input, the bound is deadband + swinging_door). The newest point
is held back until a later point shows whether it is needed; ``flush()`` or a due heartbeat release it. The
algorithm keeps, from the last kept point A, the window of slopes whose line stays within the deviation of every
point since A, and holds the newest point P only while the slope A->P itself lies in that window; otherwise P's
predecessor is kept and becomes A. Points held back and later superseded count as ``compressed_swinging_door``.

Heartbeat. A stream is "emitted" whenever one of its readings is forwarded. If ``heartbeat`` seconds have passed
since the last emission (reading time in ``process``, ``now`` in ``tick``):
- in ``process``: the reading is forwarded in ``send`` even if the deadband or the door would hold it (a held door
  point goes first);
- in ``tick(now)``: a held door point is released and the most recent real reading, if it was never forwarded, is
  forwarded, both in ``heartbeat`` with their original times. If the latest reading was already forwarded nothing
  is sent (a silent sensor is reported by ``stale_after``, not by repeated copies). Each is counted ``heartbeat``.

Stale. ``stale_after`` is tracked per sensor (the smallest value among its streams). ``tick(now)`` raises an event
``silent`` (state ``raised``, ``alarm`` False, ``t`` = now) once ``now - last_seen >= stale_after``; the next
reading of that sensor clears it (``t`` = the reading's time).

Health. ``battery_low`` raises ``battery_low`` when the value is below the threshold, cleared when it is back at
threshold + battery_hysteresis or above; ``rssi_weak`` likewise raises ``weak_signal``. ``alarm`` is False.

Rate limit. A token bucket per (sensor, quantity) stream, refilled by reading time (a BLE advert carrying three
quantities counts once per quantity). Readings with no token are dropped and counted as ``dropped_rate_limit``.
"""

from .config import GROUPS, LEVELS, RuleConfigError, glob_match, validate_rules
from .state import EMPTY, Event, Result
from .engine import RuleEngine

__all__ = ("EMPTY", "GROUPS", "LEVELS", "Event", "Result", "RuleConfigError", "RuleEngine", "glob_match",
           "validate_rules")
