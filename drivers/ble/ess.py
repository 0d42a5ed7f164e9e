"""GATT Environmental Sensing characteristic decoders (Bluetooth GATT Specification Supplement), pure.

One table, keyed by the 16-bit characteristic UUID: ``uuid16 -> (name, struct layout, num, den, unit,
resolution, "value is not known" sentinel)``. All values are little-endian and of fixed length; any other length
is ``reason="bad_length"``, an unlisted UUID ``reason="unknown_characteristic"``.

* 0x2A6E Temperature: sint16, 0.01 Cel; 0x8000 means "value is not known".
* 0x2A6F Humidity: uint16, 0.01 %RH; 0xFFFF means "value is not known".
* 0x2A6D Pressure: uint32, 0.1 Pa; no sentinel.

A "value is not known" reading is not a number: ``decode_characteristic`` returns None and ``decode`` an empty
list, the same rule as the Ruuvi sentinels.
"""

import struct

from drivers.ble.units import parse_hex
from drivers.bounds import check
from gateway.core.errors import DecodeError
from gateway.core.model import Measurement

CHARACTERISTICS = {
    0x2A6E: ("temp", struct.Struct("<h"), 1, 100, "Cel", 0.01, -0x8000),
    0x2A6F: ("hum", struct.Struct("<H"), 1, 100, "%RH", 0.01, 0xFFFF),
    0x2A6D: ("pres", struct.Struct("<I"), 1, 10, "Pa", 0.1, None),
}

#: accepted names in ``cli_decode`` besides the hex UUID
ALIASES = {"temperature": 0x2A6E, "temp": 0x2A6E, "humidity": 0x2A6F, "hum": 0x2A6F, "pressure": 0x2A6D,
           "pres": 0x2A6D}


def decode_characteristic(uuid16, data):
    """Decode one characteristic value into a ``Measurement``, or None when the sensor says "not known"."""
    row = CHARACTERISTICS.get(uuid16)
    if row is None:
        raise DecodeError("characteristic %r is not an Environmental Sensing characteristic we decode" % (uuid16,),
                          reason="unknown_characteristic")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("characteristic value must be bytes", reason="bad_type")
    name, layout, num, den, unit, resolution, sentinel = row
    if len(data) != layout.size:
        raise DecodeError("characteristic 0x%04X is %d bytes, got %d" % (uuid16, layout.size, len(data)),
                          reason="bad_length")
    raw = layout.unpack_from(data, 0)[0]
    if raw == sentinel:
        return None
    value = raw * num
    if den != 1:
        value = value / den
    return Measurement(name, check(name, value), unit, resolution)


def decode(uuid16, data):
    """List form of ``decode_characteristic``: ``[]`` for "value is not known"."""
    m = decode_characteristic(uuid16, data)
    return [] if m is None else [m]


def parse_uuid(text):
    """``"2a6e"``, ``"0x2A6E"``, a full 128-bit Bluetooth base UUID or an alias -> int."""
    t = text.strip().lower()
    if t in ALIASES:
        return ALIASES[t]
    if len(t) == 36 and t.endswith("-0000-1000-8000-00805f9b34fb"):
        t = t[4:8]
    if t.startswith("0x"):
        t = t[2:]
    if not 1 <= len(t) <= 4:
        raise DecodeError("not a 16-bit UUID: %r" % (text[:40],), reason="bad_uuid")
    try:
        return int(t, 16)
    except ValueError:
        raise DecodeError("not a 16-bit UUID: %r" % (text[:40],), reason="bad_uuid") from None


def cli_decode(text, mac=None, key=None):
    """``edge-gateway decode ess 2a6e:HEX`` (or ``temperature:HEX``)."""
    if not isinstance(text, str) or ":" not in text:
        raise DecodeError("ESS input is UUID:HEX, e.g. 2a6e:ca09", reason="bad_input")
    uuid_text, _, hex_text = text.partition(":")
    return decode(parse_uuid(uuid_text), parse_hex(hex_text))
