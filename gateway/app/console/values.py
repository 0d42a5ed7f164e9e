"""The values the console's commands trade in, and what they may ask of the gateway. Pure.

* ``GatewayView``: everything the console knows about the gateway comes through it (tests use a small fake).
* ``Reply``: lines of text to show. ``Work``: a blocking step (an uplink round trip, a file write, a scrypt check)
  that the adapter runs off the event loop, then hands to ``Work.finish`` for the ``Reply``.
* ``Probe``: the answer of ``GatewayView.uplink_test``.
"""

import abc
from dataclasses import dataclass

NEWLINE = "\r\n"


class GatewayView(abc.ABC):
    """What the console may see and do. Methods marked blocking are only called from ``Work.call``."""

    @abc.abstractmethod
    def version(self): """Software version text."""

    @abc.abstractmethod
    def gateway_id(self): """The gateway id (the prompt shows it)."""

    @abc.abstractmethod
    def status(self): """``Agent.status()`` plus ``version``, ``wall`` (now), ``store_counters``."""

    @abc.abstractmethod
    def now(self): """The monotonic time on the scale of ``Reading.t``."""

    @abc.abstractmethod
    def sensor_rows(self): """``[SensorRow]`` from the board."""

    @abc.abstractmethod
    def sensor_latest(self, sensor): """``{name: Reading}`` or None if the sensor is unknown."""

    @abc.abstractmethod
    def sensor_recent(self, sensor, n): """The last ``n`` readings, or None if unknown."""

    @abc.abstractmethod
    def alarms(self): """Active alarm events, or None when no rules are configured."""

    @abc.abstractmethod
    def log_lines(self, n): """The last ``n`` log lines."""

    @abc.abstractmethod
    def config_data(self): """The config file as a dict (ConfigError if there is none or it does not load)."""

    @abc.abstractmethod
    def keys(self): """``{"kid", "fingerprint", "alg", "x"}``: public identity only."""

    @abc.abstractmethod
    def commands(self):
        """The last signed commands (oldest first): dicts of ``t`` (monotonic), ``op_seq`` (or None), ``state``,
        ``text``, ``digest``; and the downlink counters. ``(list, counters)``, or None when the downlink is off."""

    @abc.abstractmethod
    def uplink_test(self): """Blocking. ``Probe``."""

    @abc.abstractmethod
    def update(self, path):
        """Blocking. Check a signed update bundle and stage it for the updater; returns what was done."""

    @abc.abstractmethod
    def config_set(self, key, text): """Blocking. Validate, persist; returns a sentence saying when it applies."""

    @abc.abstractmethod
    def sensor_add(self, name, kind, params): """Blocking. Edit [[sources]]; returns a sentence."""

    @abc.abstractmethod
    def sensor_remove(self, name): """Blocking. Edit [[sources]]; returns a sentence."""

    @abc.abstractmethod
    def store_dump(self, path): """Blocking. Write the queue to ``path``; returns a sentence."""

    @abc.abstractmethod
    def restart(self): """Ask the agent to exit (systemd starts it again); returns a sentence."""


@dataclass(frozen=True, slots=True)
class Probe:
    ok: bool
    latency_s: float
    detail: str


@dataclass(frozen=True, slots=True)
class Reply:
    lines: tuple = ()

    def render(self):
        return "".join(line + NEWLINE for line in self.lines).encode("ascii", "replace")


@dataclass(frozen=True, slots=True)
class Work:
    """A blocking step: the adapter runs ``call()`` in a thread, then ``finish(result)`` gives the ``Reply``."""

    call: object
    finish: object
    label: str = ""



def run_sync(result):
    """Resolve a ``Work`` in the calling thread (tests, scripts). Returns the ``Reply``."""
    while isinstance(result, Work):
        result = result.finish(result.call())
    return result
