"""Line protocol for custom sensor boards: ``key=value`` pairs or CSV, one record per line.

Pure and incremental (house style, habit 2): ``LineFramer.feed(data)`` takes whatever bytes arrived and returns
the complete lines; ``LineDecoder.decode(line)`` turns one line into measurements. Garbage is resynchronised at
the next line end, an over-long line is discarded whole and counted, and nothing here touches IO or a clock.

Formats:

* ``kv`` (default): ``id=fridge-3 temp=4.21 hum=55.0``. Separators are spaces, tabs, commas or semicolons. The
  optional ``id`` key names the sensor; other keys are quantities. Units come from the configured ``units`` map, or
  from a ``key[unit]=value`` suffix such as ``temp[Cel]=4.2``.
* ``csv``: ``4.21,55.0``; the configured ``columns`` name each column in order (``id`` allowed as a column).

A line may end with ``*HH``: the XOR of every byte before the ``*`` in hex, as in NMEA. A line with a checksum that
does not match raises ``DecodeError(reason="bad_checksum")``.
"""

from drivers.bounds import check
from gateway.core.errors import DecodeError
from gateway.core.model import Measurement

MAX_LINE = 256
_SEPARATORS = bytes.maketrans(b",;\t", b"   ")


class LineFramer:
    """Splits a byte stream into lines at CR and/or LF. Keeps at most ``max_line`` bytes of a partial line."""

    def __init__(self, max_line=MAX_LINE):
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False
        self.overlong = 0

    def feed(self, data):
        """Return the complete, non-empty lines in ``data`` (bytes, without the line end)."""
        parts = bytes(data).replace(b"\r", b"\n").split(b"\n")
        lines = []
        buf = self._buf
        for chunk in parts[:-1]:  # each ends at a line end
            if self._discarding:
                self._discarding = False  # the tail of an over-long line, already counted
            elif len(buf) + len(chunk) > self.max_line:
                self.overlong += 1
            elif buf or chunk:
                lines.append(bytes(buf + chunk))
            buf.clear()
        tail = parts[-1]
        if self._discarding:
            pass
        elif len(buf) + len(tail) > self.max_line:
            self.overlong += 1
            self._discarding = True
            buf.clear()
        else:
            buf += tail
        return lines


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def _checksum_ok(line):
    """(line without ``*HH``, True/False) when it ends with ``*HH``, else (line, None)."""
    if len(line) < 3 or line[-3] != 42 or line[-2] not in _HEX_DIGITS or line[-1] not in _HEX_DIGITS:
        return line, None
    want = int(line[-2:], 16)
    got = 0
    for b in line[:-3]:
        got ^= b
    return line[:-3], got == want


def _number(text, key):
    """The int or float written in ``text``; out of int64 / not finite -> ``out_of_range`` (``drivers.bounds``)."""
    digits = text[1:] if text[:1] in b"+-" else text
    if digits.isdigit():
        if len(digits.lstrip(b"0")) > 19:  # 2**63 has 19 digits: longer is out of range (and slow for int())
            raise DecodeError("value of %r has %d digits; a signed 64-bit integer has at most 19"
                              % (key, len(digits.lstrip(b"0"))), reason="out_of_range")
        return check(key, int(text))
    # "1_0" (float() would read 10), "nan", "inf", "infinity": not numbers in this protocol
    if b"_" in text or not (digits[:1].isdigit() or digits[:1] == b"."):
        raise DecodeError("value of %r is not a number: %r" % (key, text[:16]), reason="bad_value")
    try:
        value = float(text)
    except ValueError:
        raise DecodeError("value of %r is not a number: %r" % (key, text[:16]), reason="bad_value") from None
    return check(key, value)  # "1e999" overflows to inf


def _resolution(text):
    dot = text.find(b".")
    if dot < 0 or b"e" in text or b"E" in text:
        return None
    return 10.0 ** -(len(text) - dot - 1)


class LineDecoder:
    """Decodes one framed line into ``(sensor_id_or_None, [Measurement, ...])``.

    ``units`` maps a key to a SenML unit. ``columns`` is required for ``csv``.
    """

    def __init__(self, mode="kv", columns=None, units=None):
        if mode not in ("kv", "csv"):
            raise ValueError("mode must be 'kv' or 'csv', not %r" % (mode,))
        if mode == "csv" and not columns:
            raise ValueError("csv mode needs columns")
        self.mode = mode
        self.columns = list(columns or ())
        self.units = dict(units or {})

    def decode(self, line):
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogateescape")
        line, ok = _checksum_ok(line.strip())
        if ok is False:
            raise DecodeError("line checksum mismatch", reason="bad_checksum")
        try:
            line.decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("line is not ASCII", reason="not_ascii") from None
        if self.mode == "kv":
            pairs = []
            for token in line.translate(_SEPARATORS).split():
                key, eq, value = token.partition(b"=")
                if not eq or not key or not value:
                    raise DecodeError("token %r is not key=value" % (token[:24],), reason="bad_token")
                pairs.append((key, value))
        else:
            values = line.split(b",")
            if len(values) != len(self.columns):
                raise DecodeError("expected %d columns, got %d" % (len(self.columns), len(values)),
                                  reason="bad_columns")
            pairs = [(c.encode(), v.strip()) for c, v in zip(self.columns, values)]
        if not pairs:
            raise DecodeError("empty record", reason="empty")
        sensor = None
        out = []
        for key, value in pairs:
            if key == b"id":
                if not value:
                    raise DecodeError("empty sensor id", reason="bad_value")
                sensor = value.decode()
                continue
            unit = None
            if key.endswith(b"]") and b"[" in key:
                key, _, unit = key[:-1].partition(b"[")
                unit = unit.decode()
            name = key.decode()
            if not name or not unit and unit is not None:
                raise DecodeError("empty name or unit in %r" % (key[:24],), reason="bad_token")
            if unit is None:
                unit = self.units.get(name)
            out.append(Measurement(name, _number(value, name), unit, _resolution(value)))
        if not out:
            raise DecodeError("record has no quantities", reason="empty")
        return sensor, out


def cli_decode(text, mac=None, key=None):
    """``edge-gateway decode lines 'id=a temp=4.2'``: decodes a ``kv`` line."""
    # surrogateescape: a shell argument that is not UTF-8 arrives with surrogates; it must become a DecodeError
    # (not_ascii), not a UnicodeEncodeError
    return LineDecoder().decode(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)[1]
