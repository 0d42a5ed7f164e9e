"""The typed config of a serial source (``[[sources]]`` with ``type = "serial"``). Pure and free of pyserial, so
loading the config never imports it; ``drivers/sources.py`` lists this class and ``gateway/app/config.py`` asks it.

The port settings are fields with their ranges. The protocol's own keys (``drivers/serial/protocols.py``: each
protocol class's ``KEYS``) are checked against that table and by building the protocol once (pure), then kept as
``options`` for ``make_protocol`` when the source starts. Keys are documented in ``drivers/serial/README.md``.
"""

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType

from drivers.serial.protocols import PROTOCOLS, make_protocol
from gateway.core.errors import ConfigError
from gateway.core.fields import Table, check_table, join, parse, setting


def _port(value, error):
    if not isinstance(value, str) or not value:
        error("is required (a device path such as /dev/serial/by-id/...)")
    return value


def _protocol(value, error):
    if not isinstance(value, str) or value not in PROTOCOLS:
        error("must be one of %s, got %r" % (", ".join(PROTOCOLS), value))
    return value


@dataclass(frozen=True, slots=True)
class SerialConfig(Table):
    type: str = setting("serial", choices=("serial",))
    name: str = None
    port: str = setting(None, parse=_port)  # required: see check
    baud: int = setting(9600, lo=50, hi=4_000_000)
    bytesize: int = setting(8, lo=5, hi=8)
    parity: str = setting("N", choices=("N", "E", "O"))
    stopbits: int = setting(1, lo=1, hi=2)
    protocol: str = setting("lines", parse=_protocol)
    #: the protocol's keys, checked against its ``KEYS`` (not a key of the table itself)
    options: MappingProxyType = dataclasses.field(default_factory=lambda: MappingProxyType({}),
                                                  metadata={"internal": True})

    def check(self, error):
        if self.port is None:
            error("is required (a device path such as /dev/serial/by-id/...)", "port")

    def protocol_spec(self):
        """The table ``make_protocol`` reads: the protocol's keys plus what it needs of the port."""
        return dict(self.options, protocol=self.protocol, name=self.name, baud=self.baud, bytesize=self.bytesize,
                    parity=self.parity, stopbits=self.stopbits)

    @classmethod
    def from_table(cls, table, file=None, where="", what=None):
        """Parse the port keys as fields and the protocol's keys against its ``KEYS``; build the protocol once."""
        if not isinstance(table, dict):
            raise ConfigError("must be a table", file, where or None)
        protocol = table.get("protocol", "lines")
        if not isinstance(protocol, str) or protocol not in PROTOCOLS:
            raise ConfigError("must be one of %s, got %r" % (", ".join(PROTOCOLS), protocol), file,
                              join(where, "protocol"))
        keys = PROTOCOLS[protocol].KEYS
        own = {k: v for k, v in table.items() if k not in keys}
        options = {k: v for k, v in table.items() if k in keys}
        what = "%s (protocol %s)" % (what or "serial source", protocol)
        config = parse(cls, own, file, where, what, extra=tuple(keys))
        check_table(options, keys, file, where, what)
        config = dataclasses.replace(config, options=MappingProxyType(dict(options)))
        try:
            make_protocol(config.protocol_spec())
        except ConfigError as exc:
            raise ConfigError(exc.detail, file, join(where, exc.key or "protocol")) from None
        return config

