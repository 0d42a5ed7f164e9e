"""The typed config of the BLE sources: ``[[sources]]`` tables of ``type = "ble"`` (scanner) and ``"gatt"``
(poller), as frozen dataclasses with their ranges. Pure and free of bleak, so loading the config never imports
the radio stack; ``drivers/sources.py`` lists these classes and ``gateway/app/config.py`` asks it.

Parsed once by ``gateway.core.fields.parse``; ``drivers/ble/adapter.py`` builds its sources from the result. The
keys and their meaning are documented in ``drivers/ble/README.md``.
"""

from dataclasses import dataclass

from drivers.ble import ess
from drivers.ble.adverts import DEFAULT_SKIP
from drivers.ble.bthome import RESET_ADVERTS, RESET_GAP_S
from drivers.ble.formats import ADVERTISED, FORMATS
from drivers.ble.selection import normalise_format, normalise_mac
from drivers.ble.units import parse_key
from gateway.core.errors import ConfigError, DecodeError
from gateway.core.fields import DAY, Table, parse, setting

DEFAULT_CHARACTERISTICS = ("temperature", "humidity", "pressure")


def _mac(value, error):
    try:
        return normalise_mac(value)
    except ValueError as exc:
        error(str(exc))


def _format(value, error):
    try:
        return normalise_format(value, "format")
    except ValueError:
        error("unknown BLE format %r (one of %s)" % (value, ", ".join(sorted(set(
            a for n in ADVERTISED for a in (n,) + FORMATS[n].aliases)))))


def _bindkey(value, error):
    try:
        parse_key(value if isinstance(value, str) else None)
    except DecodeError:
        pass
    else:
        if isinstance(value, str):
            return value
    error("must be 32 hex digits (a 16-byte BTHome bindkey)")  # never echoes the value


def _characteristics(value, error):
    if not isinstance(value, list) or not value:
        error("must be a non-empty list")
    out = []
    for i, item in enumerate(value):
        try:
            uuid16 = ess.parse_uuid(item) if isinstance(item, str) else item
        except DecodeError:
            uuid16 = None
        if isinstance(uuid16, bool) or uuid16 not in ess.CHARACTERISTICS:
            error("%r is not a supported ESS characteristic (%s)" % (item, ", ".join(sorted(set(ess.ALIASES)))),
                  "[%d]" % i)
        out.append(uuid16)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ScanSensor(Table):
    mac: str = setting(parse=_mac)
    format: str = setting(None, parse=_format)
    key: str = setting(None, parse=_bindkey)
    alias: str = None

    @property
    def sensor(self):
        return self.alias or self.mac.lower()

    def __repr__(self):  # never shows the key
        return "ScanSensor(%s, format=%s, alias=%s, key=%s)" % (self.mac, self.format, self.alias,
                                                                 "set" if self.key else None)


@dataclass(frozen=True, slots=True)
class GattSensor(Table):
    mac: str = setting(parse=_mac)
    alias: str = None
    characteristics: tuple = setting(tuple(ess.ALIASES[c] for c in DEFAULT_CHARACTERISTICS),
                                     parse=_characteristics)

    @property
    def sensor(self):
        return self.alias or self.mac.lower()


def _sensors(cls, required):
    """A parser for ``sensors = [{mac = ...}, ...]``: each table a ``cls``, no MAC twice."""
    def parse_sensors(value, error):
        if not isinstance(value, list) or not all(isinstance(s, dict) for s in value):
            error("must be a list of tables like {mac = \"A4:C1:38:00:00:01\"}")
        if required and not value:
            error("at least one device is needed")
        out, seen = [], set()
        for i, table in enumerate(value):
            try:
                sensor = parse(cls, table, None, "[%d]" % i, "sensor")
            except ConfigError as exc:
                error(exc.detail, exc.key)
            if sensor.mac in seen:
                error("%s is listed twice" % sensor.mac, "[%d].mac" % i)
            seen.add(sensor.mac)
            out.append(sensor)
        return tuple(out)
    return parse_sensors


def _formats(value, error):
    if not isinstance(value, list) or not value:
        error("must be a non-empty list such as [\"bthome\", \"ruuvi\", \"atc\"]")
    return tuple(sorted({_format(f, error) for f in value}))


def _skip(value, error):
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        error("must be a list of quantity names")
    return tuple(value)


def _rssi(value, error):
    if value is False:
        return None  # no rssi readings
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= DAY:
        error("must be a number of seconds between 0 and %d, or false, got %r" % (DAY, value))
    return float(value)


@dataclass(frozen=True, slots=True)
class BleScanConfig(Table):
    """``type = "ble"``: the advertisement scanner."""
    type: str = setting("ble", choices=("ble",))
    name: str = None
    adapter: str = "hci0"
    sensors: tuple = setting((), parse=_sensors(ScanSensor, required=False))
    formats: tuple = setting(ADVERTISED, parse=_formats)
    passive: bool = True
    watchdog_s: float = setting(120.0, above=0, hi=7 * DAY)
    rssi_interval_s: float = setting(60.0, parse=_rssi)
    dedup_window_s: float = setting(30.0, lo=0, hi=DAY)
    skip: tuple = setting(DEFAULT_SKIP, parse=_skip)
    backoff_min_s: float = setting(1.0, above=0, hi=DAY)
    backoff_max_s: float = setting(60.0, above=0, hi=7 * DAY)
    timeout_s: float = setting(10.0, above=0, hi=3600.0)
    replay_flush_s: float = setting(60.0, lo=1, hi=DAY)
    reset_adverts: int = setting(RESET_ADVERTS, lo=2, hi=1000)
    reset_gap_s: float = setting(RESET_GAP_S, lo=0, hi=DAY)
    power_cycle: bool = True  # adapter recovery: turn the adapter off and on through BlueZ (drivers/ble/recovery.py)
    max_power_cycles: int = setting(3, lo=1, hi=100)

    def check(self, error):
        for i, s in enumerate(self.sensors):
            if s.format is not None and s.format not in self.formats:
                error("%s is not in formats" % s.format, "sensors[%d].format" % i)
            if s.key is not None and s.format is not None and not FORMATS[s.format].keyed:
                error("only %s adverts are decrypted with a bindkey" % ", ".join(
                    n for n in ADVERTISED if FORMATS[n].keyed), "sensors[%d].key" % i)


@dataclass(frozen=True, slots=True)
class GattConfig(Table):
    """``type = "gatt"``: the GATT poller."""
    type: str = setting("gatt", choices=("gatt",))
    name: str = None
    adapter: str = "hci0"
    sensors: tuple = setting((), parse=_sensors(GattSensor, required=True))
    poll_s: float = setting(60.0, above=0, hi=7 * DAY)
    notify: bool = False
    connect_timeout_s: float = setting(20.0, above=0, hi=3600.0)
    timeout_s: float = setting(10.0, above=0, hi=3600.0)
    backoff_min_s: float = setting(1.0, above=0, hi=DAY)
    backoff_max_s: float = setting(300.0, above=0, hi=7 * DAY)

    def check(self, error):
        if not self.sensors:
            error("at least one device is needed", "sensors")
