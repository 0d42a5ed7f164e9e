"""Local actions: which events switch which output. Pure: the typed ``[[actuators]]`` and ``[[actions]]`` tables,
the matching of events to actions, and the orders to give, with the time passed in as ``now``. The IO (the
serial boards, the programs) is ``gateway/app/actions.py``'s; docs/configuration.md documents the keys.

An action watches kinds of events (``on``: ``alarm`` for every ``alarm.<level>``, ``silent``, ``battery_low``,
``weak_signal``), filtered by ``match = {sensor, quantity, level}`` globs (``*`` and ``?``, as the rules). Its
output is one channel of an actuator board or one program:

* a channel is **on while any event the action matched is raised** and not cleared yet (per sensor and event
  name), and off when the last of them cleared;
* a program runs once per matching event (raised or cleared), with the event in its environment.

Between the wish and the output stands one ``Gate`` per output (``gateway/core/output_gate.py``): minimum interval,
hold time, flap latch. ``Planner.on_event(event, now)`` and ``Planner.tick(now)`` return ``Order`` values.
"""

import re
from dataclasses import dataclass

from gateway.core.errors import ConfigError
from gateway.core.fields import DAY, Table, join, setting
from gateway.core.output_gate import Gate
from gateway.core.rules.config import LEVELS, glob_match

#: ``on`` kind -> the event names it covers (``alarm``: every threshold level)
KINDS = {"alarm": tuple("alarm." + level for level in LEVELS), "silent": ("silent",),
         "battery_low": ("battery_low",), "weak_signal": ("weak_signal",)}
MATCH_KEYS = ("sensor", "quantity", "level")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
CHANNEL_RE = re.compile(r"^[a-z0-9_-]{1,16}$")


def _name(value, error):
    if not isinstance(value, str) or not NAME_RE.match(value):
        error("must be 1-32 letters, digits, '.', '_' or '-', starting with a letter or digit, got %r" % (value,))
    return value


def _channels(value, error):
    if not isinstance(value, list) or not value:
        error("must be a non-empty list of channel names, e.g. [\"buzzer\", \"relay\"]")
    for i, c in enumerate(value):
        if not isinstance(c, str) or not CHANNEL_RE.match(c):
            error("must be 1-16 lower-case letters, digits, '_' or '-', got %r" % (c,), "[%d]" % i)
    if len(set(value)) != len(value):
        error("names a channel twice")
    return tuple(value)


def _on(value, error):
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        error("must be one of %s, or a list of them" % ", ".join(KINDS))
    for i, kind in enumerate(items):
        if kind not in KINDS:
            error("must be one of %s, got %r" % (", ".join(KINDS), kind), "" if isinstance(value, str) else
                  "[%d]" % i)
    return tuple(items)


def _match(value, error):
    if not isinstance(value, dict):
        error("must be a table such as {sensor = \"fridge-*\", quantity = \"temp\", level = \"high*\"}")
    for key, glob in value.items():
        if key not in MATCH_KEYS:
            error("unknown key (known: %s)" % ", ".join(MATCH_KEYS), "." + key)
        if not isinstance(glob, str) or not glob:
            error("must be a non-empty glob (* and ?)", "." + key)
    return tuple(value.get(k, "*") for k in MATCH_KEYS)


def _argv(value, error):
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
        error("must be a non-empty list of arguments, the program first, e.g. [\"/usr/local/bin/buzz\", "
              "\"--on\"] (no shell: no pipes, no $VARS)")
    if not value[0].startswith("/"):
        error("must be an absolute path (the agent's PATH is not searched), got %r" % (value[0],), "[0]")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class ActuatorConfig(Table):
    """``[[actuators]]``: one actuator board on a serial line (docs/operations.md, "Actuator boards")."""
    name: str = setting(parse=_name)
    port: str = setting()
    baud: int = setting(115200, lo=1200, hi=4_000_000)
    channels: tuple = setting(("buzzer", "relay"), parse=_channels)
    keepalive_s: float = setting(1.0, lo=0.1, hi=60.0)
    ack_timeout_s: float = setting(0.3, lo=0.01, hi=10.0)
    retries: int = setting(3, lo=0, hi=10)


@dataclass(frozen=True, slots=True)
class ActionConfig(Table):
    """``[[actions]]``: which events drive which output, and how often it may change."""
    name: str = setting(parse=_name)
    on: tuple = setting(parse=_on)
    match: tuple = setting(("*", "*", "*"), parse=_match)
    actuator: str = None
    channel: str = None
    program: tuple = setting(None, parse=_argv)
    timeout_s: float = setting(10.0, lo=0.1, hi=3600.0)
    min_interval_s: float = setting(1.0, lo=0.0, hi=DAY)
    hold_s: float = setting(0.0, lo=0.0, hi=DAY)
    flap_max: int = setting(6, lo=1, hi=1000)
    flap_window_s: float = setting(300.0, lo=1.0, hi=DAY)

    def check(self, error):
        if (self.actuator is None) == (self.program is None):
            error("set either actuator (with channel) or program, not %s" % (
                "both" if self.actuator else "neither"), "program" if self.program else "actuator")
        if self.actuator is not None and self.channel is None:
            error("is required with actuator (one of the board's channels, e.g. \"buzzer\")", "channel")
        if self.program is not None and self.channel is not None:
            error("is for an actuator; a program gets the event in its environment", "channel")

    @property
    def output(self):
        """The output's key: ``"<board>/<channel>"`` or ``"program:<action>"``."""
        return "%s/%s" % (self.actuator, self.channel) if self.actuator else "program:" + self.name

    def matches(self, event):
        """Does ``event`` concern this action (its kind, sensor, quantity and level)?"""
        if not any(event.name in KINDS[k] for k in self.on):
            return False
        sensor, quantity, level = self.match
        return (glob_match(sensor, event.sensor) and glob_match(quantity, quantity_of(event) or "")
                and glob_match(level, event.level or ""))


def quantity_of(event):
    """The quantity an event of the rules engine concerns (``temp``, ``batt``), or None (``silent``): the engine
    starts the reason of every threshold and battery/signal event with the stream's name ("temp 9.00 above high
    8.00"); ``tests/unit/test_actions.py`` pins it."""
    if event.name == "silent" or not event.reason:
        return None
    return event.reason.split(" ", 1)[0]


def parse_actions(actuators, actions, file=None):
    """The ``[[actuators]]`` and ``[[actions]]`` arrays (lists of dicts from TOML) -> two tuples of typed configs,
    or ``ConfigError`` naming the file and the key (``actions[1].channel``) and the fix."""
    boards = []
    for i, table in enumerate(actuators):
        board = ActuatorConfig.from_table(table, file, "actuators[%d]" % i, "an actuator board")
        if board.name in [b.name for b in boards]:
            raise ConfigError("%r names two boards; give each its own name" % board.name, file,
                              "actuators[%d].name" % i)
        if board.port in [b.port for b in boards]:
            raise ConfigError("%r is the port of actuators[%d] too" % (board.port, [b.port for b in boards].index(
                board.port)), file, "actuators[%d].port" % i)
        boards.append(board)
    by_name = {b.name: b for b in boards}
    out = []
    for i, table in enumerate(actions):
        where = "actions[%d]" % i
        action = ActionConfig.from_table(table, file, where, "an action")
        if action.name in [a.name for a in out]:
            raise ConfigError("%r names two actions; give each its own name" % action.name, file,
                              join(where, "name"))
        if action.actuator is not None:
            board = by_name.get(action.actuator)
            if board is None:
                raise ConfigError("no [[actuators]] table is named %r (known: %s)" % (
                    action.actuator, ", ".join(by_name) or "none; add one"), file, join(where, "actuator"))
            if action.channel not in board.channels:
                raise ConfigError("board %r has no channel %r (its channels: %s)" % (
                    board.name, action.channel, ", ".join(board.channels)), file, join(where, "channel"))
            other = next((j for j, a in enumerate(out) if a.output == action.output), None)
            if other is not None:
                raise ConfigError("%s is driven by actions[%d] (%s) already; list both kinds of event in that "
                                  "action's on" % (action.output, other, out[other].name), file,
                                  join(where, "channel"))
        out.append(action)
    return tuple(boards), tuple(out)


@dataclass(frozen=True, slots=True)
class Order:
    """What to do now: switch ``channel`` of ``board`` to ``on`` or run ``program``, because of ``event``
    (the latest event that moved the wish; None for a flap latch running out)."""
    action: str
    event: object
    board: str = None
    channel: str = None
    on: bool = None
    program: tuple = None
    timeout_s: float = None
    t: float = 0.0


class Planner:
    """Events and the time in, ``Order``s out; one ``Gate`` per action (each output has one action)."""

    def __init__(self, actions):
        self.actions = tuple(actions)
        self.gates = {a.name: Gate(a.min_interval_s, a.hold_s, a.flap_max, a.flap_window_s,
                                   switch=a.actuator is not None) for a in self.actions}
        self.active = {a.name: set() for a in self.actions}
        self.last_event = {}
        self.matched = {a.name: 0 for a in self.actions}

    def on_event(self, event, now):
        out = []
        for a in self.actions:
            if not a.matches(event):
                continue
            self.matched[a.name] += 1
            self.last_event[a.name] = event
            gate = self.gates[a.name]
            if a.actuator is None:
                out.extend(self._orders(a, gate.request(event, now), now))
                continue
            active = self.active[a.name]
            key = (event.sensor, event.name)
            if event.state == "raised":
                active.add(key)
            elif event.state == "cleared":
                active.discard(key)
            out.extend(self._orders(a, gate.request(bool(active), now), now))
        return out

    def tick(self, now):
        out = []
        for a in self.actions:
            out.extend(self._orders(a, self.gates[a.name].due(now), now))
        return out

    def deadline(self):
        times = [t for t in (g.deadline() for g in self.gates.values()) if t is not None]
        return min(times) if times else None

    def wanted(self):
        """``{(board, channel): on}``: what each actuator output is told now (to restore it on a board that
        rebooted or went to its safe state)."""
        return {(a.actuator, a.channel): self.gates[a.name].state for a in self.actions if a.actuator}

    def _orders(self, a, change, now):
        if not change:
            return ()
        value = change[0]
        if a.actuator is not None:
            return (Order(a.name, self.last_event.get(a.name), board=a.actuator, channel=a.channel, on=value, t=now),)
        return (Order(a.name, value, program=a.program, timeout_s=a.timeout_s, t=now),)

    def counters(self):
        """Per action: events matched, and what its gate did (changes, deferred, coalesced, flap_latched)."""
        out = {}
        for a in self.actions:
            out["action.%s.matched" % a.name] = self.matched[a.name]
            for key, n in self.gates[a.name].counters.items():
                out["action.%s.%s" % (a.name, key)] = n
        return out
