"""Build sources from the ``[[sources]]`` tables of the config. Adapters are imported only when used, so a
gateway with no BLE sensors never loads bleak (and its D-Bus stack) into memory."""

from gateway.core.errors import ConfigError


def build_source(spec, clock, file=None, index=0, state_dir=None):
    """One source from its ``[[sources]]`` table. ``state_dir``: where a source may keep state across restarts
    (the BLE scanner's BTHome counters); None keeps it in memory only."""
    where = "sources[%d]" % index
    kind = spec.get("type")
    name = spec.get("name") or "%s%d" % (kind, index)
    try:
        if kind == "serial":
            from drivers.serial.adapter import SerialSource
            from drivers.serial.protocols import make_protocol
            port = spec.get("port")
            if not isinstance(port, str) or not port:
                raise ConfigError("is required (a device path such as /dev/serial/by-id/...)", file,
                                  where + ".port")
            return SerialSource(name, port, make_protocol(spec), clock, baud=int(spec.get("baud", 9600)),
                                bytesize=int(spec.get("bytesize", 8)), parity=str(spec.get("parity", "N")),
                                stopbits=int(spec.get("stopbits", 1)))
        if kind in ("ble", "gatt"):
            from drivers.ble.adapter import build_ble_source
            return build_ble_source(spec, clock, name, state_dir)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(str(exc), file, where) from exc
    raise ConfigError("unknown source type %r" % (kind,), file, where + ".type")
