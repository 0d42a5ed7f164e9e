"""RuuviTag data format 5 (RAWv2) decoder, pure. Manufacturer data of company id 0x0499.

Implemented from the spec table at https://docs.ruuvi.com/communication/bluetooth-advertisements/data-format-5-rawv2.
The input is the manufacturer data value AFTER the 2-byte company id: 24 bytes, big-endian, byte 0 == 5.

Decisions:

* **Not available**: every sentinel of the spec is honoured and the quantity is OMITTED from the result (no None,
  no number): temperature 0x8000, humidity 0xFFFF, pressure 0xFFFF, each acceleration axis 0x8000, battery voltage
  2047 (11 bits), tx power 31 (5 bits), movement counter 255, measurement sequence 0xFFFF.
* **No rounding**: values are exact scalings (``raw / 200`` for 0.005 Cel) computed by exact integer division.
* **Units** (SenML): temp Cel, hum %RH, pres Pa (int), accel_x/y/z m/s2 (the spec's milli-g times
  g = 9.80665 m/s2 / 1000, resolution 0.00980665), voltage V, tx_power dBm, movement and seq unit None (counters).
* **MAC** (bytes 18-23) is identity, not a measurement: ``mac_of(data)`` returns it (None when all bits are set).
"""

import struct

from drivers.ble.units import format_mac, parse_hex
from drivers.bounds import checked
from gateway.core.errors import DecodeError
from gateway.core.model import Measurement

COMPANY_ID = 0x0499
FORMAT = 5
LENGTH = 24

_LAYOUT = struct.Struct(">BhHHhhhHBH6s")

#: (field index in _LAYOUT, name, sentinel, num, den, offset, unit, resolution); value = (raw*num + offset)/den
_FIELDS = (
    (1, "temp", -0x8000, 1, 200, 0, "Cel", 0.005),
    (2, "hum", 0xFFFF, 1, 400, 0, "%RH", 0.0025),
    (3, "pres", 0xFFFF, 1, 1, 50000, "Pa", 1),
    (4, "accel_x", -0x8000, 980665, 100000000, 0, "m/s2", 0.00980665),
    (5, "accel_y", -0x8000, 980665, 100000000, 0, "m/s2", 0.00980665),
    (6, "accel_z", -0x8000, 980665, 100000000, 0, "m/s2", 0.00980665),
    (7, "power", None, 0, 0, 0, None, None),  # 11 bits voltage + 5 bits tx power, see _power
    (8, "movement", 0xFF, 1, 1, 0, None, 1),
    (9, "seq", 0xFFFF, 1, 1, 0, None, 1),
)


def _check(data):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("Ruuvi data must be bytes", reason="bad_type")
    if len(data) == 0:
        raise DecodeError("empty Ruuvi manufacturer data", reason="too_short")
    if data[0] != FORMAT:
        raise DecodeError("Ruuvi data format %d is not supported (5 expected)" % data[0], reason="bad_version")
    if len(data) != LENGTH:
        raise DecodeError("Ruuvi format 5 is %d bytes, got %d" % (LENGTH, len(data)), reason="bad_length")
    return _LAYOUT.unpack_from(data, 0)


def decode(data, mac=None, key=None):
    """Decode one format-5 payload into a list of ``Measurement`` (unavailable quantities omitted)."""
    fields = _check(data)
    out = []
    for index, name, sentinel, num, den, offset, unit, resolution in _FIELDS:
        raw = fields[index]
        if index == 7:
            _power(raw, out)
            continue
        if raw == sentinel:
            continue
        value = raw * num + offset
        if den != 1:
            value = value / den
        out.append(Measurement(name, value, unit, resolution))
    return checked(out)


def _power(power, out):
    millivolts = power >> 5
    tx = power & 0x1F
    if millivolts != 2047:
        out.append(Measurement("voltage", (1600 + millivolts) / 1000, "V", 0.001))
    if tx != 31:
        out.append(Measurement("tx_power", -40 + 2 * tx, "dBm", 2))


def mac_of(data):
    """The tag's MAC (bytes 18-23) as ``"AA:BB:CC:DD:EE:FF"``, or None when not available (all bits set)."""
    raw = _check(data)[10]
    if raw == b"\xff" * 6:
        return None
    return format_mac(raw)


def cli_decode(text, mac=None, key=None):
    """``edge-gateway decode ruuvi HEX``: HEX is the manufacturer data after the company id (starts with 05)."""
    return decode(parse_hex(text))
