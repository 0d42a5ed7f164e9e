"""The source types: one row each, a typed config class (pure, next to its driver) and the adapter that builds the
source from it. ``gateway/app/config.py`` parses every ``[[sources]]`` table here, once, at load; the agent builds
the sources from the parsed objects. Adapters are imported only when a source is built, so a gateway with no BLE
sensors never loads bleak (and its D-Bus stack) into memory, and loading the config never does.

Errors are ``ConfigError`` s in one syntax: ``file: sources[2].timeout_s: must be ...``.
"""

import importlib
import re
from dataclasses import dataclass

from drivers.ble.config import BleScanConfig, GattConfig
from drivers.serial.config import SerialConfig
from gateway.core.errors import ConfigError
from gateway.core.fields import did_you_mean


@dataclass(frozen=True, slots=True)
class SourceType:
    config: type      # the frozen dataclass of its [[sources]] table
    builder: str      # "module:function" building the source: ``f(config, clock, name, state_dir)``


SOURCE_TYPES = {
    "serial": SourceType(SerialConfig, "drivers.serial.adapter:build_serial_source"),
    "ble": SourceType(BleScanConfig, "drivers.ble.adapter:build_ble_source"),
    "gatt": SourceType(GattConfig, "drivers.ble.adapter:build_ble_source"),
}

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,63}$")


def parse_source(table, index=0, file=None):
    """One ``[[sources]]`` table -> its typed config, or ``ConfigError`` naming ``file`` and ``sources[index].key``."""
    where = "sources[%d]" % index
    if not isinstance(table, dict):
        raise ConfigError("must be a table", file, where)
    kind = table.get("type")
    if not isinstance(kind, str) or kind not in SOURCE_TYPES:
        raise ConfigError("must be one of %s, got %r%s" % (", ".join(SOURCE_TYPES), kind, did_you_mean(
            kind, SOURCE_TYPES) if isinstance(kind, str) else ""), file, where + ".type")
    name = table.get("name")
    if name is not None and not (isinstance(name, str) and NAME_RE.match(name)):
        raise ConfigError("must be a short identifier", file, where + ".name")
    name = name or "%s%d" % (kind, index)
    return SOURCE_TYPES[kind].config.from_table(table, file, where, "%s source %r" % (kind, name))


def source_name(config, index):
    return config.name or "%s%d" % (config.type, index)


def build_source(spec, clock, file=None, index=0, state_dir=None):
    """A source from its typed config (or from its ``[[sources]]`` table, parsed here). ``state_dir``: where a
    source may keep state across restarts (the BLE scanner's BTHome counters); None keeps it in memory only."""
    config = spec if not isinstance(spec, dict) else parse_source(spec, index, file)
    module, _, function = SOURCE_TYPES[config.type].builder.partition(":")
    build = getattr(importlib.import_module(module), function)
    return build(config, clock, source_name(config, index), state_dir)
