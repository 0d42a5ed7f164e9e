"""NMEA 0183 for GNSS receivers: an incremental sentence framer and decoders for GGA, RMC, GLL, VTG and GSA.

Pure (house style, habits 1 and 2): bytes go in, ``Sentence`` values come out, nothing here reads a port or a
clock. Three layers, usable apart:

* ``NmeaFramer(max_len=82).feed(data) -> [body, ...]`` (``drivers/serial/nmea_framer.py``, imported here) finds
  each checksummed ``$<body>*HH<CR><LF>`` and counts everything else under a stable reason token.
* ``decode_sentence(body) -> Sentence`` decodes one checked body. It raises ``DecodeError`` with reason
  ``unsupported`` for a sentence type we do not decode, ``malformed`` for a wrong field count or an unparsable
  field and ``bad_field`` for a value out of range.
* ``NmeaReader`` puts both together; its ``feed(data) -> [Sentence, ...]`` counts decoder failures in the same
  ``counters`` dict (an unsupported type is counted as ``ignored``), and keeps ``utc``, the last GPS date and time.

Units (SenML, RFC 8428): ``lat``/``lon`` in decimal degrees (units ``lat``/``lon``, resolution from the number of
decimals of the minutes), ``alt`` in ``m``, ``speed`` in ``m/s`` (converted from knots, or km/h when VTG has no
knots), ``course`` (true track) in ``rad``: RFC 8428 registers ``rad`` and no degree unit, so we convert.
``fix`` (GGA quality 0..8), ``sats``, ``hdop``, ``pdop``, ``vdop`` and ``fix_type`` (GSA 1 none, 2 2-D, 3 3-D) are
dimensionless (unit None).

No fix means no position: empty fields are omitted, never turned into zeros, and a GGA with quality 0, an RMC or GLL
with status ``V`` or mode ``N``, a VTG with mode ``N`` and a GSA with fix type 1 yield no position, speed, course or
DOP readings. The UTC time (GGA, RMC, GLL) and date (RMC) are not measurements; they ride on the ``Sentence`` as
``time``, ``date`` and ``datetime`` so a caller may use GPS time, as do the ``status`` (``A`` valid, ``V`` void) and
the NMEA 2.3+ ``mode`` indicator (``A`` autonomous, ``D`` differential, ``E`` estimated, ``M`` manual, ``S``
simulator, ``N`` not valid) of RMC, GLL and VTG. A GLL of NMEA 1.5 without a status field gives its position.

Bounds: every number returned passes ``drivers.bounds.check`` (int64, finite), so an absurd field is a counted
``out_of_range``; the checksum works for any sentence length, whatever ``max_len`` is configured.
"""

import datetime
import functools
import math
from dataclasses import dataclass

from drivers.bounds import checked
from drivers.serial.nmea_framer import MAX_SENTENCE, NmeaFramer, checksum, with_checksum  # noqa: F401 (API)
from gateway.core.errors import DecodeError
from gateway.core.model import Measurement

KNOT = 1852.0 / 3600.0  # m/s
KMH = 1.0 / 3.6  # m/s
DEG = math.pi / 180.0  # rad

_UTC = datetime.timezone.utc
_DECIMALS = [10.0 ** -_n for _n in range(20)]
_MIN_DECIMALS = [10.0 ** -_n / 60.0 for _n in range(20)]


@dataclass(frozen=True, slots=True)
class Sentence:
    """One decoded sentence: talker (``GP``, ``GN``, ``GL``, ``GA``, ...), kind (``GGA``...), the readings and
    the GPS UTC time (``datetime.time``) and date (``datetime.date``) when the sentence carries them."""

    talker: str
    kind: str
    measurements: tuple
    time: datetime.time = None
    date: datetime.date = None
    status: str = None
    mode: str = None

    @property
    def datetime(self):
        """An aware UTC ``datetime`` when both date and time are known, else None."""
        if self.time is None or self.date is None:
            return None
        return datetime.datetime.combine(self.date, self.time, _UTC)


def _decimal(text):
    """(value, resolution) of a decimal field such as ``b"545.4"``."""
    value = float(text)
    if value - value != 0:  # nan or inf
        raise DecodeError("field %r is not finite" % (text[:16],), reason="bad_field")
    dot = text.find(b".")
    return value, _DECIMALS[len(text) - dot - 1] if dot >= 0 else 1.0


@functools.lru_cache(maxsize=16)  # GGA, RMC and GLL of one epoch repeat the same position fields
def _coord(text, hemi, max_deg, pos, neg):
    dot = text.find(b".")
    if dot < 0:
        dot = len(text)
    deg = text[:dot - 2]
    if dot < 3 or not deg.isdigit():
        raise DecodeError("bad coordinate %r" % (text[:16],), reason="malformed")
    minutes = float(text[dot - 2:])
    deg = int(deg)
    if not 0.0 <= minutes < 60.0 or deg > max_deg or (deg == max_deg and minutes):  # also rejects nan and inf
        raise DecodeError("coordinate %r out of range" % (text[:16],), reason="bad_field")
    value = deg + minutes / 60.0
    if hemi == neg:
        value = -value
    elif hemi != pos:
        raise DecodeError("bad hemisphere %r" % (hemi[:4],), reason="bad_field")
    return value, _MIN_DECIMALS[len(text) - dot - 1] if dot < len(text) else 1.0 / 60.0


def _position(f, i):
    """[lat, lon] from fields i..i+3, or [] when they are empty."""
    if not f[i] or not f[i + 2]:
        return []
    lat, lat_res = _coord(f[i], f[i + 1], 90, b"N", b"S")
    lon, lon_res = _coord(f[i + 2], f[i + 3], 180, b"E", b"W")
    return [Measurement("lat", lat, "lat", lat_res), Measurement("lon", lon, "lon", lon_res)]


@functools.lru_cache(maxsize=8)  # GGA, RMC and ZDA of one epoch share the time field
def _time(text):
    if not text:
        return None
    if len(text) < 6 or not text[:6].isdigit() or (len(text) > 6 and (text[6] != 46 or not text[7:].isdigit())):
        raise DecodeError("bad UTC time %r" % (text[:16],), reason="malformed")
    h, m, s = int(text[0:2]), int(text[2:4]), int(text[4:6])
    us = int(round(float(b"0" + text[6:]) * 1e6)) if len(text) > 7 else 0
    if h > 23 or m > 59 or s > 60:
        raise DecodeError("UTC time %r out of range" % (text[:16],), reason="bad_field")
    if s == 60 or us > 999999:  # a leap second: keep the order of events, not the 61st second
        s, us = min(s, 59), 999999
    return datetime.time(h, m, s, us)


@functools.lru_cache(maxsize=4)
def _date(text):
    if not text:
        return None
    if len(text) != 6 or not text.isdigit():
        raise DecodeError("bad date %r" % (text[:16],), reason="malformed")
    d, m, y = int(text[0:2]), int(text[2:4]), int(text[4:6])
    try:
        return datetime.date(y + (1900 if y >= 80 else 2000), m, d)
    except ValueError:
        raise DecodeError("date %r out of range" % (text,), reason="bad_field") from None


def _need(f, n, kind):
    if len(f) < n:
        raise DecodeError("%s has %d fields, needs %d" % (kind, len(f), n), reason="malformed")


def _speed(out, text, factor):
    value, res = _decimal(text)
    if value < 0:
        raise DecodeError("negative speed", reason="bad_field")
    out.append(Measurement("speed", value * factor, "m/s", res * factor))


def _course(out, text):
    value, res = _decimal(text)
    if not 0.0 <= value <= 360.0:
        raise DecodeError("course %r out of range" % (text[:16],), reason="bad_field")
    out.append(Measurement("course", value * DEG, "rad", res * DEG))


def _gga(f):
    # time, lat, N/S, lon, E/W, quality, sats, hdop, alt, M, geoid separation, M, age, station
    if len(f) < 10:
        _need(f, 10, "GGA")
    if f[6]:
        quality = int(f[6])
        out = _position(f, 2) if quality else []
        out.append(Measurement("fix", quality))
        if quality:
            if f[9]:
                value, res = _decimal(f[9])
                out.append(Measurement("alt", value, "m", res))
            if f[8]:
                value, res = _decimal(f[8])
                out.append(Measurement("hdop", value, None, res))
    else:
        out = []
    if f[7]:
        out.append(Measurement("sats", int(f[7])))
    return out, _time(f[1]), None, None, None


def _indicator(f, i, allowed, what):
    """The one-letter field ``f[i]`` as text, or None when absent or empty; ``bad_field`` if not in ``allowed``."""
    if len(f) <= i or not f[i]:
        return None
    if len(f[i]) != 1 or f[i] not in allowed:
        raise DecodeError("%s %r" % (what, f[i][:4]), reason="bad_field")
    return f[i].decode("ascii")


_STATUS = b"AV"
_MODES = b"ADEFMNPRS"  # NMEA 0183 2.3+ mode indicator (F float RTK, P precise, R RTK of 4.x included)


def _rmc(f):
    # time, status A/V, lat, N/S, lon, E/W, knots, course, ddmmyy, magvar, E/W, [mode], [nav status]
    if len(f) < 10:
        _need(f, 10, "RMC")
    out = []
    if f[2] == b"A" and (len(f) < 13 or f[12] != b"N"):
        out = _position(f, 3)
        if f[7]:
            _speed(out, f[7], KNOT)
        if f[8]:
            _course(out, f[8])
    elif f[2] not in (b"A", b"V"):
        raise DecodeError("RMC status %r" % (f[2][:4],), reason="bad_field")
    return out, _time(f[1]), _date(f[9]), f[2].decode("ascii"), _indicator(f, 12, _MODES, "RMC mode")


def _gll(f):
    # lat, N/S, lon, E/W, [time], [status A/V], [mode]: time and status from NMEA 2.0, mode from 2.3
    _need(f, 5, "GLL")
    status = _indicator(f, 6, _STATUS, "GLL status")
    mode = _indicator(f, 7, _MODES, "GLL mode")
    out = _position(f, 1) if status != "V" and mode != "N" else []
    return out, _time(f[5]) if len(f) > 5 else None, None, status, mode


def _vtg(f):
    # course true, T, course magnetic, M, knots, N, km/h, K, [mode]
    _need(f, 9, "VTG")
    out = []
    if len(f) < 10 or f[9] != b"N":
        if f[1]:
            _course(out, f[1])
        if f[5]:
            _speed(out, f[5], KNOT)
        elif f[7]:
            _speed(out, f[7], KMH)
    return out, None, None, None, _indicator(f, 9, _MODES, "VTG mode")


def _gsa(f):
    # mode M/A, fix type 1/2/3, 12 satellite ids, PDOP, HDOP, VDOP, [system id]
    _need(f, 18, "GSA")
    out = []
    if f[2]:
        fix_type = int(f[2])
        out.append(Measurement("fix_type", fix_type))
        if fix_type > 1:
            for name, text in (("pdop", f[15]), ("hdop", f[16]), ("vdop", f[17])):
                if text:
                    value, res = _decimal(text)
                    out.append(Measurement(name, value, None, res))
    return out, None, None, None, None


DECODERS = {b"GGA": (_gga, "GGA"), b"RMC": (_rmc, "RMC"), b"GLL": (_gll, "GLL"), b"VTG": (_vtg, "VTG"),
            b"GSA": (_gsa, "GSA")}
#: what a serial NMEA source reads unless ``sentences`` says otherwise (GLL repeats the GGA position: opt in)
DEFAULT_SENTENCES = ("GGA", "RMC", "VTG", "GSA")


def decode_sentence(body):
    """Decode one checked sentence body (``b"GPGGA,..."``) into a ``Sentence``; raises ``DecodeError``."""
    f = body.split(b",")
    address = f[0]
    entry = DECODERS.get(address[2:]) if len(address) == 5 and address[0] != 80 else None  # 80: "P"roprietary
    if entry is None:
        raise DecodeError("sentence %r is not decoded" % (address[:8],), reason="unsupported")
    decoder, kind = entry
    try:
        out, time, date, status, mode = decoder(f)
        talker = address[:2].decode("ascii")
    except DecodeError:
        raise
    except (ValueError, IndexError) as exc:  # int()/float() on a bad field, a non-ASCII talker
        raise DecodeError("%s: %s" % (address[:8], str(exc)[:80]), reason="malformed") from exc
    return Sentence(talker, kind, tuple(checked(out)), time, date, status, mode)


class NmeaReader:
    """Framer plus decoder: ``feed(data) -> [Sentence, ...]``; every failure is counted in ``counters``."""

    def __init__(self, max_len=MAX_SENTENCE):
        self.framer = NmeaFramer(max_len)
        self.counters = self.framer.counters  # one dict: framing and decoding reasons together
        self.decoded = 0
        self._dated = None  # the last sentence that carried both a date and a time

    @property
    def utc(self):
        """The GPS date and time of the last RMC (an aware ``datetime``), or None before the first one."""
        return self._dated.datetime if self._dated is not None else None

    def feed(self, data):
        out = []
        for body in self.framer.feed(data):
            try:
                sentence = decode_sentence(body)
            except DecodeError as exc:
                reason = "ignored" if exc.reason == "unsupported" else exc.reason
                self.counters[reason] = self.counters.get(reason, 0) + 1
                continue
            if sentence.date is not None and sentence.time is not None:
                self._dated = sentence
            out.append(sentence)
        self.decoded += len(out)
        return out


def cli_decode(text, mac=None, key=None):
    """``edge-gateway decode nmea '$GPGGA,...*47'``: the measurements of one sentence, or ``DecodeError``."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    framer = NmeaFramer(max_len=max(MAX_SENTENCE, len(data) + 2))
    bodies = framer.feed(data.strip() + b"\r\n")
    if not bodies:
        reason = next(iter(sorted(framer.counters)), "malformed")
        raise DecodeError("not a valid NMEA sentence (%s)" % reason, reason=reason)
    return list(decode_sentence(bodies[0]).measurements)
