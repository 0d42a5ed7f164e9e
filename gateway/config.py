"""Typed configuration loaded from TOML and validated once at start-up (house style, habit 10).

Every error names the file and the key (``ConfigError``), e.g.
``/etc/edge-gateway/config.toml: store.max_bytes: must be a positive integer, got "lots"``.
``docs/configuration.md`` documents every key; ``deploy/config.example.toml`` is a complete example.
"""

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field

from gateway.errors import ConfigError

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


@dataclass
class BatchSection:
    max_readings: int = 1000
    max_age_s: float = 10.0
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
class Config:
    gateway: GatewaySection = field(default_factory=GatewaySection)
    store: StoreSection = field(default_factory=StoreSection)
    batch: BatchSection = field(default_factory=BatchSection)
    uplink: UplinkSection = field(default_factory=UplinkSection)
    clock: ClockSection = field(default_factory=ClockSection)
    console: ConsoleSection = field(default_factory=ConsoleSection)
    sources: list = field(default_factory=list)
    rules: list = field(default_factory=list)
    file: str = None

    def state_path(self, value):
        return value if os.path.isabs(value) else os.path.join(self.gateway.state_dir, value)


_CHOICES = {
    "gateway.log_level": ("debug", "info", "warning", "error"),
    "uplink.kind": ("http", "mqtt"),
    "clock.mode": ("auto", "synced", "unsynced"),
}
_POSITIVE = {"store.max_bytes", "batch.max_readings", "batch.max_age_s", "batch.time_quantum_s",
             "uplink.timeout_s", "uplink.backoff_min_s", "uplink.backoff_max_s", "store.memory_batches",
             "store.max_age_days", "console.baud", "uplink.mqtt.port", "uplink.mqtt.keepalive_s",
             "console.idle_lock_s"}
SOURCE_TYPES = ("serial", "ble", "gatt")


def _fill(obj, data, file, prefix):
    if not isinstance(data, dict):
        raise ConfigError("must be a table", file, prefix.rstrip("."))
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        dotted = prefix + key
        f = names.get(key)
        if f is None or key == "file":
            raise ConfigError("unknown key (known: %s)" % ", ".join(n for n in names if n != "file"), file, dotted)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _fill(current, value, file, dotted + ".")
            continue
        kind = type(current)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is list:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError("must be an array of tables ([[%s]])" % key, file, dotted)
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError("must be %s, got %r" % ({int: "an integer", float: "a number", str: "a string",
                                                      bool: "true or false"}.get(kind, kind.__name__), value),
                              file, dotted)
        if dotted in _POSITIVE and value <= 0:
            raise ConfigError("must be positive, got %r" % (value,), file, dotted)
        if dotted in _CHOICES and value not in _CHOICES[dotted]:
            raise ConfigError("must be one of %s, got %r" % (", ".join(_CHOICES[dotted]), value), file, dotted)
        setattr(obj, key, value)


def from_dict(data, file=None):
    cfg = Config(file=file)
    _fill(cfg, data, file, "")
    if not ID_RE.match(cfg.gateway.id):
        raise ConfigError("must be 1-64 letters, digits, '-', '_', '.' or ':', starting with a letter or digit",
                          file, "gateway.id")
    if cfg.uplink.kind == "http" and cfg.uplink.url and not re.match(r"^https?://[^/\s]+", cfg.uplink.url):
        raise ConfigError("must be an http:// or https:// URL, got %r" % cfg.uplink.url, file, "uplink.url")
    if cfg.uplink.backoff_min_s > cfg.uplink.backoff_max_s:
        raise ConfigError("must not exceed uplink.backoff_max_s", file, "uplink.backoff_min_s")
    for i, src in enumerate(cfg.sources):
        where = "sources[%d]" % i
        if src.get("type") not in SOURCE_TYPES:
            raise ConfigError("type must be one of %s, got %r" % (", ".join(SOURCE_TYPES), src.get("type")),
                              file, where + ".type")
        if "name" in src and not (isinstance(src["name"], str) and ID_RE.match(src["name"])):
            raise ConfigError("must be a short identifier", file, where + ".name")
    for i, rule in enumerate(cfg.rules):
        if not isinstance(rule.get("match", {}), dict):
            raise ConfigError("must be a table like {sensor = \"*\", name = \"temp\"}", file,
                              "rules[%d].match" % i)
    return cfg


def load(path):
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("file not found", path) from None
    except OSError as exc:
        raise ConfigError("cannot read: %s" % exc.strerror, path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("not valid TOML: %s" % exc, path) from exc
    return from_dict(data, path)


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
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
