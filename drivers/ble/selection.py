"""Which advertisements to decode, and which are repeats. Pure: values in, values out; no bleak, no clock.

An advertisement record (the MAC, the service data by UUID and the manufacturer data by company id, as bleak's
``AdvertisementData`` gives them) becomes a list of ``(format, payload)`` by the ``advert`` column of the one
table of formats, ``drivers/ble/formats.py`` (service data 0xFCD2 -> ``bthome``, 0x181A -> ``atc``, manufacturer
data 0x0499 -> ``ruuvi``).

``Selection`` says whether a MAC/format pair is wanted (and under which alias and bindkey). With a ``sensors`` list,
only those MACs are decoded (and a sensor pinned to a format only in that format); without one, every advert of
an enabled format is. ``Deduper`` drops repeats: BlueZ reports a device again whenever any property changes
(RSSI jitter, a second AD structure), so the same payload arrives several times. A repeat is an advert whose key
equals the last accepted key of that (MAC, format) within ``window_s``:

* an unencrypted BTHome advert carrying a packet id (object 0x00) is keyed by that id, as the BTHome spec says;
* every other advert is keyed by its payload bytes (Ruuvi, pvvx and ATC1441 carry a counter of their own, and an
  encrypted BTHome advert carries its strictly increasing counter, so equal bytes mean the same packet).

After ``window_s`` an equal key is accepted again, so a sensor whose values never change (and that has no
counter) still reports once per window instead of falling silent.
"""

from drivers.ble import formats

BASE_UUID_TAIL = "-0000-1000-8000-00805f9b34fb"

#: derived from the one table of formats, ``drivers/ble/formats.py``
RECORDS = formats.RECORDS
FORMATS = formats.ADVERTISED
#: accepted spellings in the config -> format name
FORMAT_ALIASES = formats.ALIASES
#: format -> packet id function for dedup (formats without one are keyed by their bytes)
_PACKET_IDS = {}


def uuid16(uuid):
    """``"0000fcd2-0000-1000-8000-00805f9b34fb"`` (or ``"fcd2"``, or an int) -> 0xFCD2; None if not 16-bit."""
    if isinstance(uuid, int):
        return uuid if 0 <= uuid <= 0xFFFF else None
    text = str(uuid).lower()
    if len(text) == 36 and text.startswith("0000") and text.endswith(BASE_UUID_TAIL):
        text = text[4:8]
    if len(text) != 4:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None


def records(service_data, manufacturer_data):
    """The decodable records of one advertisement, as a list of ``(format, payload bytes)``, in table order."""
    out = []
    for uuid, payload in (service_data or {}).items():
        fmt = RECORDS.get(("service", uuid16(uuid)))
        if fmt is not None:
            out.append((fmt, bytes(payload)))
    for company, payload in (manufacturer_data or {}).items():
        fmt = RECORDS.get(("manufacturer", company))
        if fmt is not None:
            out.append((fmt, bytes(payload)))
    return out


def normalise_mac(mac):
    """``"a4-c1-38-00-00-01"`` / ``"A4:C1:38:00:00:01"`` -> ``"A4:C1:38:00:00:01"``; ValueError if not a MAC."""
    if not isinstance(mac, str):
        raise ValueError("a MAC is text like A4:C1:38:00:00:01")
    hexdigits = mac.strip().replace(":", "").replace("-", "")
    if len(hexdigits) != 12:
        raise ValueError("a MAC is 6 bytes written A4:C1:38:00:00:01, got %r" % (mac[:40],))
    try:
        int(hexdigits, 16)
    except ValueError:
        raise ValueError("a MAC is 6 bytes written A4:C1:38:00:00:01, got %r" % (mac[:40],)) from None
    return ":".join(hexdigits[i:i + 2] for i in range(0, 12, 2)).upper()


def normalise_format(fmt, key="format"):
    name = FORMAT_ALIASES.get(str(fmt).strip().lower())
    if name is None:
        raise ValueError("%s: unknown BLE format %r (one of %s)" % (key, fmt, ", ".join(sorted(FORMAT_ALIASES))))
    return name


class SensorSpec:
    """One configured sensor: ``mac`` (normalised), optional ``format`` pin, ``key`` (hex bindkey), ``alias``."""

    __slots__ = ("mac", "format", "key", "alias")

    def __init__(self, mac, format=None, key=None, alias=None):
        self.mac = mac
        self.format = format
        self.key = key
        self.alias = alias

    @property
    def sensor(self):
        """The sensor name used in readings: the alias, or the MAC in lower case."""
        return self.alias or self.mac.lower()

    def __repr__(self):  # never shows the key
        return "SensorSpec(%s, format=%s, alias=%s, key=%s)" % (self.mac, self.format, self.alias,
                                                                 "set" if self.key else None)


class Selection:
    """Decide which (MAC, format) pairs to decode. ``sensors``: list of ``SensorSpec``; ``formats``: enabled names."""

    def __init__(self, sensors=(), formats=FORMATS):
        self.sensors = {s.mac: s for s in sensors}
        self.formats = frozenset(formats)

    def match(self, mac, fmt):
        """The ``SensorSpec`` to decode this record as, or None to ignore it."""
        if fmt not in self.formats:
            return None
        spec = self.sensors.get(mac.upper())
        if self.sensors:
            if spec is None or (spec.format is not None and spec.format != fmt):
                return None
            return spec
        return SensorSpec(mac.upper())

    def keys(self):
        """``{MAC: bindkey hex}`` for the BTHome decoder."""
        return {mac: s.key for mac, s in self.sensors.items() if s.key}


def bthome_packet_id(payload):
    """The packet id of an unencrypted BTHome v2 advert, or None (encrypted, absent, or not BTHome v2)."""
    if len(payload) < 3 or payload[0] >> 5 != 2 or payload[0] & 0x01:
        return None
    pos = 7 if payload[0] & 0x02 else 1
    if len(payload) >= pos + 2 and payload[pos] == 0x00:
        return payload[pos + 1]
    return None


class Deduper:
    """Remembers the last accepted key per (MAC, format); ``accept`` says whether an advert is new.

    Bounded: beyond ``max_devices`` entries (random private addresses of passing phones) it starts afresh.
    """

    def __init__(self, window_s=30.0, max_devices=4096):
        if window_s < 0:
            raise ValueError("dedup_window_s cannot be negative")
        self.window_s = window_s
        self.max_devices = max_devices
        self._last = {}

    @staticmethod
    def key(fmt, payload):
        if fmt not in _PACKET_IDS:
            row = formats.FORMATS.get(fmt)
            _PACKET_IDS[fmt] = row.packet_id_function() if row is not None else None
        packet_id = _PACKET_IDS[fmt]
        pid = packet_id(payload) if packet_id is not None else None
        return ("pid", pid) if pid is not None else bytes(payload)

    def accept(self, mac, fmt, payload, now):
        """True for a new advert (and remember it), False for a repeat."""
        slot = (mac.upper(), fmt)
        key = self.key(fmt, payload)
        last = self._last.get(slot)
        if last is not None and last[0] == key and now - last[1] < self.window_s:
            return False
        if last is None and len(self._last) >= self.max_devices:
            self._last.clear()
        self._last[slot] = (key, now)
        return True

    def forget(self, mac, fmt):
        """Drop the memory of one device, e.g. after its advert failed to decode (so a retransmit is tried)."""
        self._last.pop((mac.upper(), fmt), None)


class RateLimit:
    """At most one event per ``interval_s`` per key (used for the RSSI reading). ``interval_s`` 0: every time."""

    def __init__(self, interval_s):
        self.interval_s = interval_s
        self._last = {}

    def due(self, key, now):
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        if last is None and len(self._last) >= 4096:
            self._last.clear()
        self._last[key] = now
        return True
