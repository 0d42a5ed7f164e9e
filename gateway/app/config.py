"""Typed configuration loaded from TOML and validated once at start-up (house style, habit 10).

Every error names the file and the key (``ConfigError``), e.g.
``/etc/edge-gateway/config.toml: store.max_bytes: must be a positive integer, got "lots"``.
``docs/configuration.md`` documents every key; ``deploy/config.example.toml`` is a complete example.
"""

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field

from drivers.sources import parse_source
from gateway.adapters import files
from gateway.adapters.uplink import UPLINKS, SectionError, uplink_class
from gateway.core.errors import ConfigError
from gateway.core.fields import DAY, Table, check_number, join, parse, setting, unknown_key
from gateway.core.presence import MODES as PRESENCE_MODES

#: ``edge-gateway run`` exits with this (sysexits.h EX_CONFIG) when the config is wrong; the systemd unit's
#: ``RestartPreventExitStatus=`` names it, so a bad config is not restarted in a loop.
EX_CONFIG = 78

#: attributes of ``Config`` that are not keys of the file
_NOT_KEYS = ("file", "source_configs", "actuator_configs", "action_configs")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,63}$")


@dataclass
class GatewaySection:
    id: str = "gw-demo"
    state_dir: str = "/var/lib/edge-gateway"
    key: str = "key.pem"  # relative to state_dir unless absolute
    log_level: str = "info"


@dataclass
class StoreSection:
    path: str = "queue.sqlite"
    max_bytes: int = 256 << 20
    max_age_days: float = 30.0
    memory_batches: int = 256  # bounded RAM buffer used while the disk refuses writes
    sync_interval_s: float = 10.0  # the power-cut window for batches not yet delivered (0: fsync every commit)
    deliver_first: bool = True  # send a batch from memory first; write it only if unacknowledged after hold_s
    journal: bool = True  # append the open batch's readings to an unsynced journal: kill-safe beyond hold_s


@dataclass
class BatchSection:
    max_readings: int = 1000
    max_age_s: float = 10.0
    linger_s: float = 0.1  # nothing in flight: cut once the oldest reading waited this long (Nagle / linger)
    hold_s: float = 0.2  # in any case: cut and commit within this (the kill window, with the commit's few ms)
    target_bytes_per_reading: float = 6.0  # the byte budget: grow a batch while that brings it under this (0: off)
    budget_linger_s: float = 0.9  # ... for at most this long (the latency it may cost)
    time_quantum_s: float = 1.0


@dataclass
class MqttSection:
    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "edge"
    client_id: str = ""
    username: str = ""
    password: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive_s: int = 30


@dataclass
class UplinkSection:
    kind: str = "http"
    url: str = ""
    ca_file: str = ""
    timeout_s: float = 10.0
    compress: bool = True
    backoff_min_s: float = 0.5
    backoff_max_s: float = 300.0
    mqtt: MqttSection = field(default_factory=MqttSection)


@dataclass
class ClockSection:
    mode: str = "auto"


@dataclass
class ConsoleSection:
    port: str = ""
    baud: int = 115200
    pin_hash: str = ""
    idle_lock_s: float = 300.0


@dataclass
class DownlinkSection:
    operators: str = ""  # the operator JWK Set; empty: no downlink (docs/security.md, "Downlink")
    state: str = "downlink-seq.json"  # last applied op_seq per operator key; relative to state_dir unless absolute
    client_id: str = ""  # the commands subscriber's MQTT client id (default edge-gateway-cmd-<gw>)
    check_s: float = 60.0  # an uplink change from afar must deliver within this, or it is reverted
    poll_s: float = 30.0  # HTTP: after this long without a delivery, one small batch asks for commands


@dataclass
class UpdateSection:
    base: str = "/opt/edge-gateway"  # the installed versions (docs/operations.md, "Updating gateways")
    pin: str = ""  # a version: only a bundle of exactly this version is installed; empty: any newer one
    operators: str = ""  # the JWK Set whose keys sign bundles; empty: downlink.operators
    prove_s: float = 600.0  # a new version must deliver a batch within this, or it is rolled back
    max_starts: int = 3  # starts a new version gets to prove itself before it is rolled back


@dataclass
class MetricsSection:
    """``[metrics]``: the Prometheus/OpenMetrics endpoint (gateway/app/metrics.py). Off unless ``listen`` is set."""
    listen: str = ""  # HOST:PORT, e.g. "127.0.0.1:9108"; loopback only unless allow_remote
    allow_remote: bool = False  # true: any address (the figures are not secret, but they tell an attacker a lot)


@dataclass
class Config:
    gateway: GatewaySection = field(default_factory=GatewaySection)
    store: StoreSection = field(default_factory=StoreSection)
    batch: BatchSection = field(default_factory=BatchSection)
    uplink: UplinkSection = field(default_factory=UplinkSection)
    clock: ClockSection = field(default_factory=ClockSection)
    console: ConsoleSection = field(default_factory=ConsoleSection)
    downlink: DownlinkSection = field(default_factory=DownlinkSection)
    update: UpdateSection = field(default_factory=UpdateSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    sources: list = field(default_factory=list)  # the [[sources]] tables as written (the console edits them)
    rules: list = field(default_factory=list)
    presence: object = None  # PresenceSection, or None: no [presence] table (parse_presence)
    homeassistant: object = None  # HomeAssistantSection, or None: no [homeassistant] table
    file: str = None
    source_configs: list = field(default_factory=list)  # the same, parsed once: typed, from drivers/sources.py
    actuators: list = field(default_factory=list)  # [[actuators]]: actuator boards on serial lines
    actions: list = field(default_factory=list)  # [[actions]]: events -> outputs (see _check_actions)
    actuator_configs: tuple = ()  # the same two, parsed once (gateway/core/actions.py)
    action_configs: tuple = ()

    def state_path(self, value):
        return value if os.path.isabs(value) else os.path.join(self.gateway.state_dir, value)


_CHOICES = {
    "gateway.log_level": ("debug", "info", "warning", "error"),
    "uplink.kind": tuple(UPLINKS),  # the uplink registry (gateway/adapters/uplink/__init__.py)
    "clock.mode": ("auto", "synced", "unsynced"),
}
#: every numeric key of the typed sections: (min, max), both inclusive. ``check_number`` enforces them.
RANGES = {
    "store.max_bytes": (1 << 16, 1 << 40),
    "store.max_age_days": (0.001, 3650.0),
    "store.memory_batches": (1, 1_000_000),
    "store.sync_interval_s": (0.0, DAY),
    "batch.max_readings": (1, 1_000_000),
    "batch.max_age_s": (0.01, DAY),
    "batch.linger_s": (0.0, DAY),
    "batch.hold_s": (0.01, DAY),
    "batch.target_bytes_per_reading": (0.0, 1_000_000.0),
    "batch.budget_linger_s": (0.0, DAY),
    "batch.time_quantum_s": (0.001, 3600.0),
    "uplink.timeout_s": (0.1, 3600.0),
    "uplink.backoff_min_s": (0.01, 3600.0),
    "uplink.backoff_max_s": (0.1, DAY),
    "uplink.mqtt.port": (1, 65535),
    "uplink.mqtt.keepalive_s": (1, 65535),
    "console.baud": (50, 4_000_000),
    "console.idle_lock_s": (1.0, DAY),
    "update.prove_s": (1.0, DAY),
    "update.max_starts": (1, 100),
    "downlink.check_s": (5.0, 3600.0),
    "downlink.poll_s": (5.0, DAY),
}
# The [[sources]] tables are typed by the drivers (drivers/sources.py: one config class per source type, declared
# next to its driver with its ranges) and parsed there, once, by ``from_dict``.
_RULE_MATCH = ("sensor", "name")


def _check_finite(data, file, key=""):
    """No NaN or infinity anywhere in the file, whatever table holds it (TOML allows ``nan`` and ``inf``)."""
    if isinstance(data, float) and not math.isfinite(data):
        raise ConfigError("must be a finite number, got %r" % (data,), file, key or None)
    if isinstance(data, dict):
        for k, v in data.items():
            _check_finite(v, file, "%s.%s" % (key, k) if key else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _check_finite(v, file, "%s[%d]" % (key, i))


def _fill(obj, data, file, prefix):
    if not isinstance(data, dict):
        raise ConfigError("must be a table", file, prefix.rstrip("."))
    names = {f.name: f for f in dataclasses.fields(obj)}
    known = [n for n in names if n not in _NOT_KEYS]
    for key, value in data.items():
        dotted = prefix + key
        f = names.get(key)
        if f is None or key in _NOT_KEYS:
            raise unknown_key(key, known, file, dotted)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _fill(current, value, file, dotted + ".")
            continue
        kind = type(current)
        if kind in (int, float):
            lo, hi = RANGES.get(dotted, (None, None))
            value = check_number(value, file, dotted, lo, hi, integer=kind is int)
            value = float(value) if kind is float else value
        elif kind is list:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError("must be an array of tables ([[%s]])" % key, file, dotted)
        elif not isinstance(value, kind):
            raise ConfigError("must be %s, got %r" % ({str: "a string", bool: "true or false"}.get(
                kind, kind.__name__), value), file, dotted)
        if dotted in _CHOICES and value not in _CHOICES[dotted]:
            raise ConfigError("must be one of %s, got %r" % (", ".join(_CHOICES[dotted]), value), file, dotted)
        setattr(obj, key, value)


def _check_rules(rules, file):
    from gateway.core.rules import GROUPS, RuleConfigError, validate_rules
    known = ["match"] + [k for _, keys in GROUPS for k in keys]
    for i, rule in enumerate(rules):
        for key in rule:
            if key not in known:
                raise unknown_key(key, known, file, "rules[%d].%s" % (i, key))
        match = rule.get("match")
        if isinstance(match, dict):
            for key in match:
                if key not in _RULE_MATCH:
                    raise unknown_key(key, _RULE_MATCH, file, "rules[%d].match.%s" % (i, key))
    try:
        validate_rules(rules)
    except RuleConfigError as exc:
        detail = str(exc)
        prefix = "%s: " % exc.key
        raise ConfigError(detail[len(prefix):] if detail.startswith(prefix) else detail, file, exc.key) from None


def _ids(value, error):
    """A list of distinct sensor ids (aliases or MACs, as the readings name them)."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        error("must be a list of sensor ids (aliases or MACs), got %r" % (value,))
    if len(set(value)) != len(value):
        error("lists a sensor twice")
    return tuple(value)


def _zone_name(value, error):
    if not isinstance(value, str) or not ID_RE.match(value):
        error("must be a short identifier (letters, digits, '-', '_', '.', ':'), got %r" % (value,))
    return value


@dataclass(frozen=True, slots=True)
class ZoneSection(Table):
    """One ``[[presence.zones]]`` table."""
    name: str = setting(None, parse=_zone_name)
    gateway: str = ""  # only the gateway with this id tracks the zone ("": every gateway that loads the file)
    beacons: tuple = setting((), parse=_ids)
    sensors: tuple = setting((), parse=_ids)  # occupancy sensors (BTHome occupancy/motion)
    enter_dbm: float = setting(-70.0, lo=-127.0, hi=20.0)
    leave_dbm: float = setting(-80.0, lo=-127.0, hi=20.0)
    timeout_s: float = setting(0.0, lo=0.0, hi=DAY)  # 0: presence.timeout_s

    def check(self, error):
        if self.name is None:
            error("is required", "name")
        if self.leave_dbm >= self.enter_dbm:
            error("must be below enter_dbm (%g): the gap is the hysteresis that stops a beacon on the edge "
                  "flapping" % self.enter_dbm, "leave_dbm")
        if not self.beacons and not self.sensors:
            error("a zone needs beacons or occupancy sensors", "beacons")


@dataclass(frozen=True, slots=True)
class PresenceSection(Table):
    """``[presence]``: zones from BLE beacons and occupancy sensors (gateway/core/presence.py)."""
    mode: str = setting("counts", choices=PRESENCE_MODES)  # counts: no beacon or sensor id ever leaves
    alpha: float = setting(0.3, above=0.0, hi=1.0)  # RSSI smoothing (1: none)
    timeout_s: float = setting(60.0, above=0.0, hi=DAY)
    report_s: float = setting(300.0, lo=0.0, hi=DAY)  # every zone's count at least this often (0: on change)
    zones: tuple = field(default=(), metadata={"internal": True})  # ZoneSections, parsed by parse_presence

    def zones_for(self, gw):
        """The zones this gateway tracks."""
        return tuple(z for z in self.zones if not z.gateway or z.gateway == gw)


def parse_presence(table, file=None):
    """The ``[presence]`` table -> ``PresenceSection`` (None when absent); errors name ``presence.<key>``."""
    if table is None:
        return None
    section = parse(PresenceSection, {k: v for k, v in table.items() if k != "zones"} if isinstance(
        table, dict) else table, file, "presence", "[presence]", extra=("zones",))
    raw = table.get("zones", [])
    if not isinstance(raw, list) or not raw:
        raise ConfigError("must be a non-empty array of tables ([[presence.zones]])", file, "presence.zones")
    zones = []
    for i, item in enumerate(raw):
        where = "presence.zones[%d]" % i
        zone = parse(ZoneSection, item, file, where, "[[presence.zones]]")
        if any(z.name == zone.name and z.gateway == zone.gateway for z in zones):
            raise ConfigError("zone %r appears twice" % zone.name, file, join(where, "name"))
        zones.append(zone)
    return dataclasses.replace(section, zones=tuple(zones))


def _topic(value, error):
    if not isinstance(value, str) or not value.strip("/") or any(c in value for c in "+#\0"):
        error("must be an MQTT topic without wildcards, got %r" % (value,))
    return value.strip("/")


def _broker(value, error):
    from gateway.adapters.uplink.mqtt import parse_url
    try:
        parse_url(value)
    except (ValueError, TypeError, AttributeError) as exc:
        error(str(exc))
    return value


@dataclass(frozen=True, slots=True)
class HomeAssistantSection(Table):
    """``[homeassistant]``: the optional local publisher with MQTT discovery (gateway/app/homeassistant.py)."""
    enabled: bool = False
    broker: str = setting("mqtt://127.0.0.1:1883", parse=_broker)  # mqtt[s]://[user:pass@]host[:port]
    discovery_prefix: str = setting("homeassistant", parse=_topic)
    base_topic: str = setting("edge-gateway", parse=_topic)  # state and availability: <base>/<gw>/...
    client_id: str = ""
    ca_file: str = ""
    keepalive_s: int = setting(30, lo=5, hi=3600)
    queue: int = setting(1000, lo=1, hi=100_000)  # items waiting for the local broker; more are dropped, counted
    status_s: float = setting(30.0, lo=1.0, hi=DAY)  # the gateway's own entities, this often


def parse_homeassistant(table, file=None):
    """The ``[homeassistant]`` table -> ``HomeAssistantSection`` (None when absent)."""
    if table is None:
        return None
    return parse(HomeAssistantSection, table, file, "homeassistant", "[homeassistant]")


def from_dict(data, file=None):
    _check_finite(data, file)
    cfg = Config(file=file)
    if isinstance(data, dict) and "presence" in data:
        data = dict(data)
        cfg.presence = parse_presence(data.pop("presence"), file)
    if isinstance(data, dict) and "homeassistant" in data:
        data = dict(data)
        cfg.homeassistant = parse_homeassistant(data.pop("homeassistant"), file)
    _fill(cfg, data, file, "")
    if not ID_RE.match(cfg.gateway.id):
        raise ConfigError("must be 1-64 letters, digits, '-', '_', '.' or ':', starting with a letter or digit",
                          file, "gateway.id")
    try:
        uplink_class(cfg.uplink.kind).check_section(cfg.uplink)
    except SectionError as exc:
        raise ConfigError(str(exc), file, exc.key) from None
    if cfg.uplink.backoff_min_s > cfg.uplink.backoff_max_s:
        raise ConfigError("must not exceed uplink.backoff_max_s", file, "uplink.backoff_min_s")
    if cfg.downlink.operators and not uplink_class(cfg.uplink.kind).downlink:
        carriers = [kind for kind in UPLINKS if uplink_class(kind).downlink]
        raise ConfigError("commands cannot arrive over the %s uplink: use uplink.kind %s, or leave "
                          "downlink.operators empty" % (cfg.uplink.kind, " or ".join(carriers)), file,
                          "downlink.operators")
    if cfg.update.pin:
        from gateway.core.update import parse_version
        try:
            parse_version(cfg.update.pin)
        except ValueError as exc:
            raise ConfigError(str(exc), file, "update.pin") from None
    cfg.source_configs = [parse_source(src, i, file) for i, src in enumerate(cfg.sources)]
    _check_rules(cfg.rules, file)
    _check_actions(cfg, file)
    _check_metrics(cfg.metrics, file)
    return cfg


def _check_actions(cfg, file):
    """``[[actuators]]`` and ``[[actions]]`` (local actions, docs/configuration.md): typed and cross-checked by
    ``gateway.core.actions.parse_actions``; errors name the key (``actions[1].channel``) and the fix."""
    from gateway.core.actions import parse_actions
    if cfg.actuators and not cfg.actions:
        raise ConfigError("a board no action drives; add an [[actions]] table naming it, or remove the board", file,
                          "actuators[0]")
    cfg.actuator_configs, cfg.action_configs = parse_actions(cfg.actuators, cfg.actions, file)


def parse_listen(text):
    """``"127.0.0.1:9108"`` or ``"[::1]:9108"`` -> ``(host, port)``; raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT, e.g. \"127.0.0.1:9108\", got %r" % text)
    return host.strip("[]"), int(port)


def _check_metrics(section, file):
    """``metrics.listen``: empty (off), or HOST:PORT on a loopback address unless ``allow_remote = true``."""
    if not section.listen:
        return
    import ipaddress
    try:
        host, _ = parse_listen(section.listen)
    except ValueError as exc:
        raise ConfigError(str(exc), file, "metrics.listen") from None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not section.allow_remote:
        raise ConfigError("%s is not a loopback address: the metrics stay on this machine unless you also set "
                          "metrics.allow_remote = true (then firewall the port)" % host, file, "metrics.listen")


def loads(text, file="<text>"):
    """Parse and validate config TOML from ``text``; ``file`` is the name errors carry."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("not valid TOML: %s" % exc, file) from exc
    return from_dict(data, file)


def load(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError("file not found", path) from None
    except OSError as exc:
        raise ConfigError("cannot read: %s" % exc.strerror, path) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("not valid TOML: not UTF-8 (byte %d)" % exc.start, path) from None
    return loads(text, path)


def to_toml(data, _prefix=""):
    """Serialise a plain dict (as read from TOML) back to TOML text. Used by ``provision`` and the console."""
    lines = []
    tables = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append((key, value))
        else:
            lines.append("%s = %s" % (key, _toml_value(value)))
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = _prefix + key
        if isinstance(value, list):
            for item in value:
                out += "\n[[%s]]\n" % name + to_toml(item, name + ".")
        else:
            sub = to_toml(value, name + ".")
            out += "\n[%s]\n" % name + sub
    return out


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    if isinstance(value, list):
        return "[%s]" % ", ".join(_toml_value(v) for v in value)
    if isinstance(value, dict):
        return "{%s}" % ", ".join("%s = %s" % (k, _toml_value(v)) for k, v in value.items())
    raise TypeError("cannot write %r to TOML" % (value,))


def write_atomic(path, text, mode=0o640):
    """The config file (or another small file of the installer's) replaced atomically: ``gateway.adapters.files``."""
    files.write_atomic(path, text, mode)
