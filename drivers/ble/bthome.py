"""BTHome v2 decoder (service data of UUID 0xFCD2), pure: bytes in, ``Measurement`` s out.

Format: https://bthome.io/format (objects) and https://bthome.io/encryption (AES-CCM). The value handed in is the
service data *value*: the device information byte, then objects (``id`` + little-endian value), or, when
encrypted, ciphertext + counter (4, little-endian) + MIC (4).

Decisions (see also ``OBJECTS`` below):

* **One table, one loop.** ``OBJECTS`` maps every object id of the published v2 spec to
  ``(name, length, signed, num, den, unit, kind)``; ``value = raw * num / den``. Integer-only scalings keep ``int``
  values; others use exact integer division, so ``0x02 ca09`` is exactly the float ``25.06``. Units are SenML
  (RFC 8428 primary units and RFC 8798 units/secondary units); where the spec's unit has no SenML symbol the
  value is kept in the spec's unit and ``unit`` is None (commented per row). ``resolution`` is ``num / den``.
* **Pressure** arrives in 0.01 hPa and is returned in Pa (``int``, resolution 1).
* **Unknown object id, truncated object, bad value**: objects have no length field, so nothing after an unknown id
  can be framed. The measurements decoded before it are kept (as bthome-ble does) and the rest is an error: the
  decoder raises ``PartialDecode`` (a ``DecodeError`` whose ``measurements`` holds them, ``reason`` says what
  stopped it: ``unknown_object``, ``too_short``, ``bad_value``). The advert path emits the kept measurements and
  counts ``error.<reason>`` and ``partial``; a caller that ignores partial results just sees the ``DecodeError``.
  With nothing decoded before the fault it is a plain ``DecodeError``.
* **Size**: a BLE advertisement carries at most 255 bytes of AD data (extended advertising; legacy adverts 31), so
  service data longer than ``MAX_PAYLOAD`` (255) is refused (``reason="too_long"``) before any object is read.
  Decoding is linear in the payload: one table lookup per object and one dict update per name.
* **Order**: the spec asks senders to put objects in ascending id order. We accept any order (real devices, e.g.
  the Shelly BLU family, are not always strict) and return measurements in wire order.
* **Repeated quantities**: the first keeps its name, the next ones get ``_2``, ``_3`` ... (``temp``, ``temp_2``),
  counted per name, in wire order. (bthome-ble numbers every duplicate from ``_1``; ours keeps the first name
  stable so a device that adds a second probe does not rename its first one.)
* **Binary sensors** give ``bool`` (0 False, 1 True, anything else ``DecodeError(reason="bad_value")``).
  **Button** events give a string (``"press"``, ``"double_press"``, ``"none"`` ...; an unlisted code gives
  ``"event_0xNN"``). **Dimmer** gives signed steps: right positive, left negative, none 0.
* **packet_id** (0x00) is returned so that the caller can drop repeats; this module does not dedupe it.
* **Encryption** (device info bit 0): AES-CCM, 16-byte bindkey, nonce = MAC(6) + ``d2 fc`` + device info + counter,
  4-byte MIC. Missing key -> ``no_key``; missing MAC -> ``no_mac``; failed MIC -> ``bad_mic``; a key configured
  but an unencrypted advert -> ``downgrade`` (an attacker could otherwise inject plaintext).
* **Replay** is the caller's state: ``BTHomeDecoder`` keeps the last counter per MAC and rejects a counter that
  is not strictly greater (``reason="replay"``); a counter is only remembered after its MIC verified. Its state
  can be saved and restored (``state``/``restore``), so a restart does not reopen the door to captured adverts
  (the BLE adapter persists it; see ``drivers/ble/README.md``).
* **Counter reset** (a battery change restarts the sender's counter): adverts with a valid MIC and a counter
  below the last accepted one are refused as ``replay``, but they are also tracked as a reset candidate (an equal
  counter is only a replay). When
  ``reset_adverts`` of them in a row have strictly increasing counters, span at least ``reset_gap_s`` seconds,
  and no advert above the last accepted counter arrived meanwhile, the device is taken to have restarted: the last
  of them is accepted and counted (``resets``, surfaced as ``counter_reset``). A single captured advert replayed,
  or any replay while the real device is still heard, never completes a reset.
"""

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from drivers.ble.units import parse_hex, parse_key, parse_mac
from drivers.bounds import PartialDecode, checked
from gateway.core.errors import DecodeError
from gateway.core.model import Measurement

SERVICE_UUID = 0xFCD2
_UUID_LE = b"\xd2\xfc"
#: the most service data one advertisement can carry (255 bytes of AD data in extended advertising)
MAX_PAYLOAD = 255
#: defaults of the counter-reset rule (see the module docstring)
RESET_ADVERTS = 5
RESET_GAP_S = 60.0

# kinds of object
_NUM = 0      # integer scaled by num/den
_BOOL = 1     # binary sensor
_BUTTON = 2   # button event
_DIMMER = 3   # dimmer event: event byte + steps byte
_TEXT = 4     # length-prefixed UTF-8
_RAW = 5      # length-prefixed bytes
_VERSION = 6  # firmware version, bytes little-endian -> "a.b.c[.d]"


def _n(name, length, signed, num, den, unit):
    return (name, length, signed, num, den, unit, _NUM)


def _b(name):
    return (name, 1, False, 1, 1, None, _BOOL)


#: Every object id of the BTHome v2 spec (bthome.io/format; cross-checked with bthome-ble ``const.py``
#: ``MEAS_TYPES`` at commit d55bd3a of 2026-02-27: the same ids 0x00-0x64, lengths and signedness; it defines no id
#: above 0x64 either). An id we do not know ends the walk with the measurements before it kept (``PartialDecode``).
#: ``(name, length, signed, num, den, SenML unit, kind)``; the value is ``raw * num / den``. Length -1 means a
#: length byte follows the id.
OBJECTS = {
    # -- sensor data -----------------------------------------------------------------------------------------
    0x00: _n("packet_id", 1, False, 1, 1, None),
    0x01: _n("batt", 1, False, 1, 1, "%EL"),
    0x02: _n("temp", 2, True, 1, 100, "Cel"),
    0x03: _n("hum", 2, False, 1, 100, "%RH"),
    0x04: _n("pres", 3, False, 1, 1, "Pa"),             # 0.01 hPa == 1 Pa
    0x05: _n("illuminance", 3, False, 1, 100, "lx"),
    0x06: _n("mass", 2, False, 1, 100, "kg"),
    0x07: _n("mass_lb", 2, False, 1, 100, None),        # pounds; SenML has no lb and kg would be inexact
    0x08: _n("dew_point", 2, True, 1, 100, "Cel"),
    0x09: _n("count", 1, False, 1, 1, None),
    0x0A: _n("energy", 3, False, 1, 1000, "kWh"),       # RFC 8798 secondary unit
    0x0B: _n("power", 3, False, 1, 100, "W"),
    0x0C: _n("voltage", 2, False, 1, 1000, "V"),
    0x0D: _n("pm25", 2, False, 1, 1, "ug/m3"),          # RFC 8798 secondary unit
    0x0E: _n("pm10", 2, False, 1, 1, "ug/m3"),
    0x0F: _b("generic"),
    0x10: _b("power_on"),
    0x11: _b("opening"),
    0x12: _n("co2", 2, False, 1, 1, "ppm"),             # RFC 8798 secondary unit
    0x13: _n("tvoc", 2, False, 1, 1, "ug/m3"),
    0x14: _n("moisture", 2, False, 1, 100, "/100"),     # percent: RFC 8798 secondary unit "/100"
    0x15: _b("battery_low"),
    0x16: _b("battery_charging"),
    0x17: _b("co_detected"),
    0x18: _b("cold"),
    0x19: _b("connectivity"),
    0x1A: _b("door"),
    0x1B: _b("garage_door"),
    0x1C: _b("gas_detected"),
    0x1D: _b("heat"),
    0x1E: _b("light"),
    0x1F: _b("lock"),
    0x20: _b("moisture_detected"),
    0x21: _b("motion"),
    0x22: _b("moving"),
    0x23: _b("occupancy"),
    0x24: _b("plug"),
    0x25: _b("presence"),
    0x26: _b("problem"),
    0x27: _b("running"),
    0x28: _b("safety"),
    0x29: _b("smoke"),
    0x2A: _b("sound"),
    0x2B: _b("tamper"),
    0x2C: _b("vibration"),
    0x2D: _b("window"),
    0x2E: _n("hum", 1, False, 1, 1, "%RH"),
    0x2F: _n("moisture", 1, False, 1, 1, "/100"),
    # -- events ----------------------------------------------------------------------------------------------
    0x3A: ("button", 1, False, 1, 1, None, _BUTTON),
    0x3C: ("dimmer", 2, False, 1, 1, None, _DIMMER),
    # -- more sensor data ------------------------------------------------------------------------------------
    0x3D: _n("count", 2, False, 1, 1, None),
    0x3E: _n("count", 4, False, 1, 1, None),
    0x3F: _n("rotation", 2, True, 1, 10, "deg"),        # RFC 8798 unit
    0x40: _n("distance", 2, False, 1, 1000, "m"),       # mm -> m
    0x41: _n("distance", 2, False, 1, 10, "m"),
    0x42: _n("duration", 3, False, 1, 1000, "s"),
    0x43: _n("current", 2, False, 1, 1000, "A"),
    0x44: _n("speed", 2, False, 1, 100, "m/s"),
    0x45: _n("temp", 2, True, 1, 10, "Cel"),
    0x46: _n("uv_index", 1, False, 1, 10, None),        # dimensionless index
    0x47: _n("volume", 2, False, 1, 10000, "m3"),       # 0.1 L -> m3
    0x48: _n("volume", 2, False, 1, 1000000, "m3"),     # mL -> m3
    0x49: _n("flow_rate", 2, False, 1, 3600000, "m3/s"),  # 0.001 m3/h -> m3/s
    0x4A: _n("voltage", 2, False, 1, 10, "V"),
    0x4B: _n("gas", 3, False, 1, 1000, "m3"),
    0x4C: _n("gas", 4, False, 1, 1000, "m3"),
    0x4D: _n("energy", 4, False, 1, 1000, "kWh"),
    0x4E: _n("volume", 4, False, 1, 1000000, "m3"),     # 0.001 L -> m3
    0x4F: _n("water", 4, False, 1, 1000000, "m3"),      # 0.001 L -> m3
    0x50: _n("timestamp", 4, False, 1, 1, None),        # Unix seconds of the sender's clock, not a duration
    0x51: _n("acceleration", 2, False, 1, 1000, "m/s2"),
    0x52: _n("gyroscope", 2, False, 1, 1000, None),     # deg/s; SenML has no angular-rate unit
    0x53: ("text", -1, False, 1, 1, None, _TEXT),
    0x54: ("raw", -1, False, 1, 1, None, _RAW),
    0x55: _n("volume_storage", 4, False, 1, 1000000, "m3"),  # 0.001 L -> m3
    0x56: _n("conductivity", 2, False, 1, 10000, "S/m"),     # uS/cm -> S/m
    0x57: _n("temp", 1, True, 1, 1, "Cel"),
    0x58: _n("temp", 1, True, 35, 100, "Cel"),          # factor 0.35
    0x59: _n("count", 1, True, 1, 1, None),
    0x5A: _n("count", 2, True, 1, 1, None),
    0x5B: _n("count", 4, True, 1, 1, None),
    0x5C: _n("power", 4, True, 1, 100, "W"),
    0x5D: _n("current", 2, True, 1, 1000, "A"),
    0x5E: _n("direction", 2, False, 1, 100, "deg"),
    0x5F: _n("precipitation", 2, False, 1, 10000, "m"),  # 0.1 mm -> m
    0x60: _n("channel", 1, False, 1, 1, None),
    0x61: _n("rotational_speed", 2, False, 1, 1, None),  # rpm; SenML 1/min is deprecated, Hz would be inexact
    0x62: _n("speed", 4, True, 1, 1000000, "m/s"),
    0x63: _n("acceleration", 4, True, 1, 1000000, "m/s2"),
    0x64: _n("light_level", 1, False, 1, 1, None),
    # -- device information ----------------------------------------------------------------------------------
    0xF0: _n("device_type", 2, False, 1, 1, None),
    0xF1: ("firmware_version", 4, False, 1, 1, None, _VERSION),
    0xF2: ("firmware_version", 3, False, 1, 1, None, _VERSION),
}

BUTTON_EVENTS = {
    0x00: "none",
    0x01: "press",
    0x02: "double_press",
    0x03: "triple_press",
    0x04: "long_press",
    0x05: "long_double_press",
    0x06: "long_triple_press",
    0x80: "hold_press",
}

DIMMER_SIGN = {0x00: 0, 0x01: -1, 0x02: 1}  # none, rotate left, rotate right


def _u24(data, pos):
    return (data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16,)


def _s24(data, pos):
    v = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
    return (v - 0x1000000 if v & 0x800000 else v,)


def _reader(length, signed):
    if length == 3:
        return _s24 if signed else _u24
    if length in (1, 2, 4):
        code = {1: "b", 2: "h", 4: "i"}[length]
        return struct.Struct("<" + (code if signed else code.upper())).unpack_from
    return None


class _Obj:
    __slots__ = ("oid", "name", "length", "read", "num", "den", "unit", "kind", "resolution", "scale")

    def __init__(self, oid, name, length, signed, num, den, unit, kind):
        self.oid = oid
        self.name = name
        self.length = length
        self.read = _reader(length, signed) if kind == _NUM else None
        self.num = num
        self.den = den
        self.unit = unit
        self.kind = kind
        self.resolution = (num if den == 1 else num / den) if kind == _NUM else None
        # 0: value is raw; 1: raw * num (int); 2: raw * num / den (exact division, float)
        self.scale = 0 if num == den == 1 else (1 if den == 1 else 2)


def _compile(objects):
    table = [None] * 256
    for oid, row in objects.items():
        table[oid] = _Obj(oid, *row)
    return tuple(table)


_TABLE = _compile(OBJECTS)
#: the same table as flat tuples, unpacked in one step by the hot loop
_ROWS = tuple(None if o is None else (o.name, o.length, o.read, o.scale, o.num, o.den, o.unit, o.resolution, o.kind)
              for o in _TABLE)


def _parse_objects(data, pos, end):
    """Walk the objects in ``data[pos:end]`` with the one table; return ``(measurements, error or None)``.

    ``error`` is the ``DecodeError`` that stopped the walk; ``measurements`` holds everything decoded before it.
    Linear in the payload: one table lookup per object and one dict update per name (the suffix of a repeated
    name comes from a count, not from searching the names already given).
    """
    out = []
    seen = {}  # name -> how many objects of that name so far
    table = _ROWS
    make = Measurement
    try:
        while pos < end:
            oid = data[pos]
            row = table[oid]
            if row is None:
                raise DecodeError("unknown BTHome object id 0x%02X at offset %d; the rest cannot be framed"
                                  % (oid, pos), reason="unknown_object")
            name, length, read, scale, num, den, unit, resolution, kind = row
            pos += 1
            if length < 0:
                if pos >= end:
                    raise DecodeError("object 0x%02X has no length byte" % oid, reason="too_short")
                length = data[pos]
                pos += 1
            if pos + length > end:
                raise DecodeError("object 0x%02X needs %d bytes at offset %d, %d left"
                                  % (oid, length, pos, end - pos), reason="too_short")
            if kind == _NUM:
                if scale == 0:
                    value = read(data, pos)[0]
                elif scale == 1:
                    value = read(data, pos)[0] * num
                else:
                    value = read(data, pos)[0] * num / den
            else:
                value = _special(oid, kind, data, pos, length)
            pos += length
            k = seen.get(name, 0) + 1
            seen[name] = k
            out.append(make(name if k == 1 else "%s_%d" % (name, k), value, unit, resolution))
    except DecodeError as exc:
        return out, exc
    return out, None


def _special(oid, kind, data, pos, length):
    """Values that are not scaled integers: binary sensors, events, text, raw bytes, versions."""
    if kind == _BOOL:
        raw = data[pos]
        if raw > 1:
            raise DecodeError("binary object 0x%02X has value %d (0 or 1 expected)" % (oid, raw),
                              reason="bad_value")
        return raw == 1
    if kind == _BUTTON:
        code = data[pos]
        return BUTTON_EVENTS.get(code) or ("event_0x%02X" % code)
    if kind == _DIMMER:
        sign = DIMMER_SIGN.get(data[pos])
        if sign is None:
            raise DecodeError("dimmer event 0x%02X is not defined" % data[pos], reason="bad_value")
        return sign * data[pos + 1]
    if kind == _TEXT:
        try:
            return bytes(data[pos:pos + length]).decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("text object 0x%02X is not UTF-8" % oid, reason="bad_value") from None
    if kind == _RAW:
        return bytes(data[pos:pos + length])
    return ".".join([str(b) for b in reversed(data[pos:pos + length])])  # _VERSION


def _header(data):
    """Check the device information byte; return (info, pos after header, MAC bytes from the payload or None)."""
    n = len(data)
    if n == 0:
        raise DecodeError("empty BTHome service data", reason="too_short")
    info = data[0]
    version = info >> 5
    if version != 2:
        raise DecodeError("BTHome version %d is not supported (device info 0x%02X; v2 expected)"
                          % (version, info), reason="bad_version")
    if info & 0x02:  # MAC included, reversed byte order
        if n < 7:
            raise DecodeError("device info says a MAC follows but only %d bytes remain" % (n - 1),
                              reason="too_short")
        return info, 7, bytes(data[6:0:-1])
    return info, 1, None


def _decrypt(data, info, pos, mac, aead):
    """Verify and decrypt; return (plaintext, counter)."""
    n = len(data)
    if n - pos < 9:
        raise DecodeError("encrypted BTHome advert of %d bytes is too short for payload, counter and MIC" % n,
                          reason="too_short")
    counter_bytes = bytes(data[n - 8:n - 4])
    nonce = mac + _UUID_LE + bytes((info,)) + counter_bytes
    try:
        plain = aead.decrypt(nonce, bytes(data[pos:n - 8]) + bytes(data[n - 4:]), None)
    except InvalidTag:
        raise DecodeError("MIC check failed: wrong bindkey, wrong MAC or tampered advert", reason="bad_mic") from None
    return plain, int.from_bytes(counter_bytes, "little")


def _decode(data, mac, key, aead):
    """Shared core. ``mac`` is bytes or None, ``key`` bytes or None.

    Returns ``(measurements, counter or None, error or None)``: ``error`` is what stopped the object walk after
    the MIC verified (see ``_parse_objects``); header, size and MIC faults raise.
    """
    if len(data) > MAX_PAYLOAD:
        raise DecodeError("BTHome service data of %d bytes is longer than one advertisement can carry (%d)"
                          % (len(data), MAX_PAYLOAD), reason="too_long")
    info, pos, payload_mac = _header(data)
    if info & 0x01:
        if key is None:
            raise DecodeError("advert is encrypted and no bindkey is configured for this device", reason="no_key")
        if payload_mac is not None:
            mac = payload_mac
        if mac is None:
            raise DecodeError("advert is encrypted and the device MAC is needed for the nonce", reason="no_mac")
        if aead is None:
            aead = AESCCM(key, tag_length=4)
        plain, counter = _decrypt(data, info, pos, mac, aead)
        return _parse_objects(plain, 0, len(plain)) + (counter,)
    if key is not None:
        raise DecodeError("a bindkey is configured but the advert is not encrypted (downgrade refused)",
                          reason="downgrade")
    return _parse_objects(data, pos, len(data)) + (None,)


def _result(measurements, error):
    """The measurements of a decode, bounded (``drivers.bounds``); a fault after some of them -> ``PartialDecode``."""
    checked(measurements)
    if error is None:
        return measurements
    if not measurements:
        raise error
    raise PartialDecode("%s (%d measurement%s decoded before it)" % (error, len(measurements),
                                                                   "" if len(measurements) == 1 else "s"),
                        error.reason, measurements)


def decode(data, mac=None, key=None):
    """Decode one BTHome v2 service data value. Stateless: no replay check (see ``BTHomeDecoder``).

    ``mac`` is ``"AA:BB:CC:DD:EE:FF"`` (or 6 bytes), needed only for encrypted adverts; ``key`` the 16-byte
    bindkey (bytes or hex). Returns a list of ``Measurement``; raises ``DecodeError`` for anything malformed, and
    ``PartialDecode`` (a ``DecodeError`` carrying ``measurements``) when objects before the fault decoded.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("BTHome data must be bytes", reason="bad_type")
    if key is not None:
        key = parse_key(key)
        mac = parse_mac(mac)
    measurements, error, _ = _decode(data, mac, key, None)
    return _result(measurements, error)


def encryption_counter(data):
    """Return the counter of an encrypted advert without decrypting, or None when unencrypted."""
    info, pos, _ = _header(data)
    if not info & 0x01:
        return None
    if len(data) - pos < 9:
        raise DecodeError("encrypted BTHome advert too short", reason="too_short")
    return int.from_bytes(bytes(data[-8:-4]), "little")


class BTHomeDecoder:
    """Stateful decoder: per-device bindkeys, STRICT replay protection and the counter-reset rule.

    ``keys`` maps MAC (``"AA:BB:CC:DD:EE:FF"``, any case) to a 16-byte bindkey. ``decode(data, mac, now)``
    rejects an encrypted advert whose counter is not strictly greater than the last accepted one from that MAC
    (``reason="replay"``), unless it completes a counter reset (module docstring; ``now`` is the caller's
    monotonic time, used only for ``reset_gap_s``). State is updated only after the MIC verified, so forged
    adverts cannot move it. ``state()``/``restore()`` save and load the last counters; ``dirty`` says whether
    they changed since the last ``state()``; ``resets`` counts accepted counter resets.
    """

    def __init__(self, keys=None, reset_adverts=RESET_ADVERTS, reset_gap_s=RESET_GAP_S):
        if reset_adverts < 2:
            raise ValueError("reset_adverts must be at least 2: one replayed advert must never reset a counter")
        self._keys = {}
        self._aead = {}
        self._last = {}
        self._pending = {}  # MAC -> [first now, adverts so far, last counter of the candidate run]
        self._macs = {}  # MAC as given -> (normalised text, 6 bytes)
        self.reset_adverts = reset_adverts
        self.reset_gap_s = reset_gap_s
        self.dirty = False
        self.resets = 0
        self.last_reset = None  # (MAC, old counter, new counter) of the latest accepted reset
        for mac, key in (keys or {}).items():
            self.set_key(mac, key)

    @staticmethod
    def _norm(mac):
        if mac is None:
            return None
        raw = parse_mac(mac)
        return ":".join("%02X" % b for b in raw)

    def set_key(self, mac, key):
        norm = self._norm(mac)
        key = parse_key(key)
        self._keys[norm] = key
        self._aead[norm] = AESCCM(key, tag_length=4)

    def forget(self, mac):
        """Drop the remembered counter of ``mac`` (after a re-key or a deliberate counter reset)."""
        norm = self._norm(mac)
        if self._last.pop(norm, None) is not None:
            self.dirty = True
        self._pending.pop(norm, None)

    def last_counter(self, mac):
        return self._last.get(self._norm(mac))

    def state(self):
        """``{MAC: last accepted counter}`` of the keyed devices, to persist; clears ``dirty``."""
        self.dirty = False
        return {mac: counter for mac, counter in self._last.items() if mac in self._keys}

    def restore(self, state):
        """Load counters saved by ``state()``. Entries for devices without a key, or malformed, are skipped;
        returns how many were loaded. A loaded counter only ever raises the one in memory."""
        loaded = 0
        for mac, counter in state.items():
            try:
                norm = self._norm(mac)
            except DecodeError:
                continue
            if norm not in self._keys or isinstance(counter, bool) or not isinstance(counter, int) \
                    or not 0 <= counter <= 0xFFFFFFFF:
                continue
            if counter > self._last.get(norm, -1):
                self._last[norm] = counter
            loaded += 1
        return loaded

    def decode(self, data, mac=None, now=None):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError("BTHome data must be bytes", reason="bad_type")
        if mac is None and len(data) >= 7 and data[0] & 0x02:
            mac = bytes(data[6:0:-1])
        ident = self._macs.get(mac)
        if ident is None:
            norm = self._norm(mac)
            ident = (norm, None if norm is None else bytes.fromhex(norm.replace(":", "")))
            if len(self._macs) >= 4096:  # bounded: random private addresses must not grow it forever
                self._macs.clear()
            self._macs[mac] = ident
        norm, macb = ident
        key = self._keys.get(norm)
        measurements, error, counter = _decode(data, macb, key, self._aead.get(norm))
        if counter is not None:
            self._check_counter(norm, counter, now)
        return _result(measurements, error)

    def _check_counter(self, norm, counter, now):
        """Accept ``counter`` (MIC already verified) or raise ``replay``; see the module docstring."""
        last = self._last.get(norm)
        if last is None or counter > last:
            self._last[norm] = counter
            self._pending.pop(norm, None)  # the device is heard above the last counter: no reset under way
            self.dirty = True
            return
        run = self._pending.get(norm)
        if counter == last:  # the last accepted advert again: a plain replay, never part of a reset
            raise DecodeError("counter %d of %s equals the last accepted one (replay)" % (counter, norm),
                              reason="replay")
        if run is None or counter <= run[2]:
            self._pending[norm] = run = [now, 1, counter]
        else:
            run[1] += 1
            run[2] = counter
        gap_ok = now is None or run[0] is None or now - run[0] >= self.reset_gap_s
        if run[1] >= self.reset_adverts and gap_ok:
            del self._pending[norm]
            self._last[norm] = counter
            self.dirty = True
            self.resets += 1
            self.last_reset = (norm, last, counter)
            return
        raise DecodeError("counter %d of %s is not greater than the last accepted %d (replay; %d of %d adverts "
                          "towards a counter reset)" % (counter, norm, last, run[1], self.reset_adverts),
                          reason="replay")


def cli_decode(text, mac=None, key=None):
    """``edge-gateway decode bthome HEX [--mac MAC] [--key HEX]``."""
    return decode(parse_hex(text), mac=mac, key=key)
