"""Custom thermometer firmware adverts on service data UUID 0x181A (pvvx and ATC1441 formats), pure.

Source: the pvvx/ATC_MiThermometer README ("Custom format" / "atc1441 format") and atc1441/ATC_MiThermometer.
The input is the service data VALUE (after the 16-bit UUID). The format is chosen by length:

* **15 bytes, pvvx custom**, little-endian: MAC[6] (least significant byte first), int16 temperature x0.01 Cel,
  uint16 humidity x0.01 %, uint16 battery mV, uint8 battery %, uint8 measurement counter, uint8 flags.
* **13 bytes, ATC1441**, big-endian: MAC[6] (most significant byte first), int16 temperature x0.1 Cel,
  uint8 humidity %, uint8 battery %, uint16 battery mV, uint8 frame counter.
* **8, 10 or 11 bytes**: the pvvx/ATC *encrypted* variants; refused with ``reason="encrypted_unsupported"``.

Every other length is ``reason="bad_length"``. Units: temp Cel, hum %RH, voltage V, batt %EL, counter and flags
unit None. The MAC is identity, not a measurement: ``mac_of`` returns it.
"""

import struct

from drivers.ble.units import format_mac, parse_hex
from drivers.bounds import checked
from gateway.core.errors import DecodeError
from gateway.core.model import Measurement

SERVICE_UUID = 0x181A
ENCRYPTED_LENGTHS = (8, 10, 11)

#: length -> (name, struct layout, MAC reversed?, fields); field = (index, name, num, den, unit, resolution)
FORMATS = {
    15: ("pvvx", struct.Struct("<6shHHBBB"), True, (
        (1, "temp", 1, 100, "Cel", 0.01),
        (2, "hum", 1, 100, "%RH", 0.01),
        (3, "voltage", 1, 1000, "V", 0.001),
        (4, "batt", 1, 1, "%EL", 1),
        (5, "counter", 1, 1, None, 1),
        (6, "flags", 1, 1, None, 1),
    )),
    13: ("atc1441", struct.Struct(">6shBBHB"), False, (
        (1, "temp", 1, 10, "Cel", 0.1),
        (2, "hum", 1, 1, "%RH", 1),
        (3, "batt", 1, 1, "%EL", 1),
        (4, "voltage", 1, 1000, "V", 0.001),
        (5, "counter", 1, 1, None, 1),
    )),
}


def _lookup(data):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("service data must be bytes", reason="bad_type")
    fmt = FORMATS.get(len(data))
    if fmt is None:
        if len(data) in ENCRYPTED_LENGTHS:
            raise DecodeError("encrypted pvvx/ATC adverts (%d bytes) are not supported; switch the sensor to an "
                              "unencrypted format or to encrypted BTHome" % len(data), reason="encrypted_unsupported")
        raise DecodeError("0x181A service data of %d bytes is neither pvvx (15) nor ATC1441 (13)" % len(data),
                          reason="bad_length")
    return fmt


def format_of(data):
    """``"pvvx"`` or ``"atc1441"``."""
    return _lookup(data)[0]


def decode(data, mac=None, key=None):
    """Decode one 0x181A service data value into a list of ``Measurement``."""
    _, layout, _, fields = _lookup(data)
    values = layout.unpack_from(data, 0)
    out = []
    for index, name, num, den, unit, resolution in fields:
        value = values[index] * num
        if den != 1:
            value = value / den
        out.append(Measurement(name, value, unit, resolution))
    return checked(out)


def mac_of(data):
    """The sender's MAC carried in the payload, as ``"AA:BB:CC:DD:EE:FF"``."""
    _, layout, reversed_mac, _ = _lookup(data)
    raw = layout.unpack_from(data, 0)[0]
    return format_mac(raw[::-1] if reversed_mac else raw)


def cli_decode(text, mac=None, key=None):
    """``edge-gateway decode atc HEX``: HEX is the 0x181A service data value."""
    return decode(parse_hex(text))
