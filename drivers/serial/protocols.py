"""What travels over a serial line, as pure objects the serial adapter drives.

A protocol takes the bytes that arrived (``feed``) and returns ``(sensor_or_None, [Measurement])`` pairs; decode
errors are counted in ``errors`` by reason, never raised to the adapter. ``poll(now)`` returns bytes to write (a
Modbus request) or ``None``. No IO and no clock here: the adapter passes ``now``.
"""

from gateway.errors import DecodeError
from drivers.serial.lines import LineDecoder, LineFramer


class LinesProtocol:
    kind = "lines"

    def __init__(self, mode="kv", columns=None, units=None, max_line=256):
        self.framer = LineFramer(max_line)
        self.decoder = LineDecoder(mode, columns, units)
        self.errors = {}

    def feed(self, data, now=None):
        out = []
        before = self.framer.overlong
        for line in self.framer.feed(data):
            try:
                out.append(self.decoder.decode(line))
            except DecodeError as exc:
                self.errors[exc.reason] = self.errors.get(exc.reason, 0) + 1
        if self.framer.overlong != before:
            self.errors["overlong"] = self.errors.get("overlong", 0) + self.framer.overlong - before
        return out

    def poll(self, now):
        return None


PROTOCOLS = {"lines": LinesProtocol}


def make_protocol(spec):
    """Build a protocol from a source's config table (``protocol = "lines"`` plus its options)."""
    kind = spec.get("protocol", "lines")
    if kind == "lines":
        return LinesProtocol(spec.get("mode", "kv"), spec.get("columns"), spec.get("units"))
    if kind in PROTOCOLS:
        return PROTOCOLS[kind].from_spec(spec)
    raise ValueError("unknown serial protocol %r (known: %s)" % (kind, ", ".join(sorted(PROTOCOLS))))
