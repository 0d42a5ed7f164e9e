"""SenML packs in the CBOR representation of RFC 8428: encode readings and events, decode and resolve packs.

Pure: values in, bytes out, and back. No IO, no clock.

Compactness (the wire is billed per megabyte):

* Records are grouped by sensor and quantity. The first record of a group carries the whole name as base name
  (``bn`` = ``<gw>/<sensor>/<quantity>``), so no record needs ``n``. ``bu`` is set only when the unit changes, so
  a group costs its unit once. Groups with no unit come first, because ``bu`` cannot be unset.
* The first record carries the base time ``bt``; every other record carries its time relative to it (``t``).

Exact values (format version 2, docs/wire-format.md "Values"): a reading whose decoder publishes a decimal
resolution (``Measurement.resolution``: 0.01 for a BTHome temperature, 10^-k for a line-protocol value written
with k decimals) travels as an integer mantissa ``v`` under a decimal exponent ``be_`` (a must-understand base
field, RFC 8428 section 4.4): 3.95 at 0.01 is ``be_: -2, v: 395``. Within a group of several records, ``bv``
carries the first mantissa and each ``v`` the difference from it, so a calm stream costs one byte per value. A
float with no decimal resolution (a Modbus float32, an NMEA coordinate in degrees) travels as the exact float, in
the shortest of half, single or double precision that holds it; ``be_`` never scales a float.
"""

import functools
import math
import re
import struct

from gateway.core.errors import GatewayError, VerifyError

# RFC 8428 section 6, Table 4: CBOR labels.
BVER, BN, BT, BU, BV, BS = -1, -2, -3, -4, -5, -6
N, U, V, VS, VB, S, T, UT, VD = 0, 1, 2, 3, 4, 5, 6, 7, 8

LABELS = {BVER: "bver", BN: "bn", BT: "bt", BU: "bu", BV: "bv", BS: "bs", N: "n", U: "u", V: "v", VS: "vs",
          VB: "vb", S: "s", T: "t", UT: "ut", VD: "vd"}
_LABEL_SET = frozenset(LABELS)
# Format version 2's one extension (RFC 8428 section 4.4: a text label, must-understand as it ends in "_"): the
# base decimal exponent. An integer v (plus an integer bv) and an integer s mean that integer times 10^be_.
BE = "be_"
# ... and chained times: while true (it is a base field, given once in the first record), each record's t is
# relative to the previous record's resolved time, not to bt (RFC 8428: bt stays put), so a 1 Hz stream has t = 1.
DT = "dt_"
_LABEL_SET_V2 = frozenset(LABELS) | {BE, DT}

# RFC 8428 section 4.5.1: the resolved name.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:./_-]*$")

# The wire's bounds (docs/wire-format.md): integers are int64, floats finite; times stay well inside them.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
TIME_LIMIT = float(1 << 61)


class EncodeError(GatewayError, ValueError):
    """A value cannot be sealed into a batch: not finite, or beyond the wire's integer range. Never sent."""

_F16 = struct.Struct("<e")
_F32 = struct.Struct("<f")


def compact_number(x, resolution=None):
    """Return ``x`` as the value whose CBOR encoding is shortest without losing what the resolution keeps.

    Raises ``EncodeError`` for NaN, an infinity or an integer beyond int64: the wire carries none of them.
    """
    if x.__class__ is int:
        if INT64_MIN <= x <= INT64_MAX:
            return x
        raise EncodeError("integer %d is beyond the wire's 64-bit signed range" % x)
    if x.__class__ is not float:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise TypeError("not a number: %r" % (x,))
        return compact_number(int(x) if isinstance(x, int) else float(x), resolution)
    if x != x or x in (math.inf, -math.inf):
        raise EncodeError("value %r is not finite" % (x,))
    if x.is_integer() and INT64_MIN <= x <= INT64_MAX:
        return int(x)
    try:
        h = _F16.unpack(_F16.pack(x))[0]
    except OverflowError:
        h = None
    if h == x:
        return h
    if resolution:
        target = round(x / resolution)
        if h is not None and round(h / resolution) == target:
            return h
        s = _F32.unpack(_F32.pack(x))[0]
        if round(s / resolution) == target:
            return s
        return x
    try:
        s = _F32.unpack(_F32.pack(x))[0]
    except OverflowError:
        return x
    return s if s == x else x


def _quantize_time(dt, quantum):
    if quantum >= 1 and float(quantum).is_integer():
        return int(round(dt / quantum)) * int(quantum)
    steps = round(dt / quantum)
    return compact_number(steps * quantum, quantum)


def event_value(event):
    """The ``vs`` text of an event record: ``"<state>: <reason>"``."""
    return "%s: %s" % (event.state, event.reason)


#: a decimal exponent on the wire is within these bounds (docs/wire-format.md, CDDL ``exponent``)
EXP_MIN, EXP_MAX = -18, 18
#: mantissas the encoder makes stay below 2^53, where a double still holds every integer
_MANTISSA_LIMIT = float(1 << 53)


@functools.lru_cache(maxsize=256)  # a handful of distinct resolutions per agent
def decimal_exponent(resolution):
    """The decimal exponent ``e`` of a published resolution: the largest ``e <= 0`` such that the resolution is a
    whole multiple of ``10^e`` (0.01 -> -2, 0.5 -> -1, 0.00980665 -> -8, 1 or 10 -> 0). None when the resolution
    has no short decimal form (1/60, an NMEA minute in degrees) or needs more than 18 decimals."""
    e = None
    if resolution.__class__ in (int, float) and 0 < resolution < 1e18:
        text = repr(float(resolution))  # the shortest decimal that reads back as this double
        mantissa, _, power = text.partition("e")
        whole, _, frac = mantissa.partition(".")
        frac = frac.rstrip("0")
        e = min(0, int(power or 0) - len(frac))
        if e < EXP_MIN or len(whole.lstrip("0") + frac) > 15:
            e = None
    return e


def to_decimal(value, resolution):
    """``(mantissa, exponent)`` of a reading whose value lies on its resolution's decimal grid, else None.

    A decoder computes ``raw * step`` in binary, so the value is within float noise of ``mantissa * 10^exponent``;
    a value further than a thousandth of a step from the grid is not on it (None: it travels as a float)."""
    if value.__class__ is int:
        if not INT64_MIN <= value <= INT64_MAX:
            return None
        e = None if resolution is None or resolution >= 1 else decimal_exponent(resolution)
        if e is None:
            return value, 0
        m = value * 10 ** -e  # 21 at 0.1 is 21.0: 210 tenths
        return (m, e) if INT64_MIN <= m <= INT64_MAX else (value, 0)
    if value.__class__ is not float or resolution is None or value - value != 0.0:
        return None
    e = decimal_exponent(resolution)
    if e is None:
        return None
    scaled = value * 10 ** -e if e else value
    if not -_MANTISSA_LIMIT < scaled < _MANTISSA_LIMIT:
        return None
    m = round(scaled)
    if abs(scaled - m) > 0.001:
        return None
    return int(m), e


def decimal_text(mantissa, exponent):
    """The exact decimal ``mantissa * 10^exponent`` as text, with ``-exponent`` decimals (1602, -2 -> "16.02";
    -5, -1 -> "-0.5"; 0, -2 -> "0.00"; 12, 2 -> "1200")."""
    if exponent >= 0:
        return str(mantissa * 10 ** exponent)
    digits = str(abs(mantissa)).rjust(1 - exponent, "0")
    return "%s%s.%s" % ("-" if mantissa < 0 else "", digits[:exponent], digits[exponent:])


def decimal_value(mantissa, exponent):
    """The number nearest to ``mantissa * 10^exponent``: an int when the exponent is not negative, else the
    correctly rounded double (Python's int / int)."""
    if exponent >= 0:
        return mantissa * 10 ** exponent
    return mantissa / 10 ** -exponent


#: records of a group share a ``bv`` (its first mantissa) from this many records on: below it, the ``bv`` costs
#: more than the smaller offsets save (docs/wire-format.md, "Size")
OFFSET_MIN_RECORDS = 3


def encode_records(readings, events=(), prefix="", base_time=None, time_quantum=1.0, time_offset=0.0):
    """Build the list of SenML record maps (integer labels; format version 2) for ``readings`` and ``events``.

    ``prefix`` is prepended to every name (``"<gw>/"``). ``time_offset`` is added to each internal time to put it
    on the wire's time scale (``gateway.core.batcher.TimeBase.offset``). ``base_time`` (wire scale) defaults to the
    earliest wire time in the pack.
    """
    offset = time_offset
    groups, earliest = _group(readings, events)
    if earliest is None:
        return []
    if base_time is None:
        base_time = earliest + offset
    base_time = _checked_base_time(base_time, offset, time_quantum)
    shift = offset - base_time  # wire time relative to bt = internal time + shift
    whole = time_quantum >= 1 and float(time_quantum).is_integer()
    iq = int(time_quantum)
    # Events first: they have no unit, and alarms should be the first thing a reader sees.
    records = _event_records(events, prefix, shift, time_quantum)
    numbers = {}  # (value, resolution) -> wire value: readings repeat their values a lot within a batch
    values = {key: [_wire_value(r, numbers) for r in group] for key, group in groups.items()}
    current_bu, current_be, current_bv = "", 0, 0
    # Groups with no unit first, because bu cannot be unset; then by decimal exponent, so be_ changes seldom.
    for key in sorted(groups, key=lambda k: (k[0], _first_exponent(values[k]), k[1], k[2])):
        unit, sensor, name = key
        group, wvalues = groups[key], values[key]
        e0 = _first_exponent(wvalues)
        offsets = len(wvalues) >= OFFSET_MIN_RECORDS and all(w[0] is V and w[2] == e0 for w in wvalues)
        first = True
        for r, (label, value, e) in zip(group, wvalues):
            dt = r.t + shift
            dt = round(dt / iq) * iq if whole else _quantize_time(dt, time_quantum)
            rec = {T: dt} if dt else {}
            if first:
                rec[BN] = "%s%s/%s" % (prefix, sensor, name)
                if unit and unit != current_bu:
                    rec[BU] = current_bu = unit
                want_bv = value if offsets else 0
                if want_bv != current_bv:
                    rec[BV] = current_bv = want_bv
            if e is not None and e != current_be:
                rec[BE] = current_be = e
            if current_bv:  # only in a group with offsets, where every value is an integer mantissa
                value -= current_bv
            rec[label] = value
            first = False
            records.append(rec)
    if whole:
        _chain_times(records)
    records[0][BT] = base_time
    return records


def _chain_times(records):
    """Make every ``t`` relative to the previous record's time (``dt_``): a periodic stream then repeats one
    ``t``, which costs one byte and deflates to almost nothing. Only for whole-second quanta, where the times are
    integers and chaining adds no rounding."""
    prev = 0
    for rec in records:
        t = rec.get(T, 0)
        if t != prev:
            rec[T] = t - prev
            prev = t
        elif T in rec:
            del rec[T]
    records[0][DT] = True


def _first_exponent(wvalues):
    for _, _, e in wvalues:
        if e is not None:
            return e
    return 0


def _wire_value(r, numbers):
    """``(label, wire value, exponent)`` of one reading: an integer mantissa with its exponent, a float (exponent
    None: floats are never scaled) or a ``vb``/``vs``/``vd`` value. Raises ``EncodeError`` for what cannot travel."""
    value = r.value
    cls = value.__class__
    if cls is float or cls is int:
        nkey = (value, r.resolution)
        out = numbers.get(nkey)
        if out is None:
            dec = to_decimal(value, r.resolution)
            if dec is not None:
                out = (V, dec[0], dec[1])
            elif cls is int:
                raise EncodeError("reading %s/%s: integer %d is beyond the 64-bit signed range"
                                  % (r.sensor, r.name, value))
            else:
                exact = compact_number(value)
                out = (V, exact, 0) if exact.__class__ is int else (V, exact, None)
            numbers[nkey] = out
        return out
    if cls is bool:
        return VB, value, None
    if cls is str:
        return VS, value, None
    if cls is bytes:
        return VD, value, None
    exact = compact_number(value)
    return (V, exact, 0) if exact.__class__ is int else (V, exact, None)


def _checked_base_time(base_time, offset, time_quantum):
    """``bt`` on the time quantum, once ``base_time`` and ``offset`` are checked to be finite times (once per pack,
    out of ``encode_records``'s loop)."""
    limit = TIME_LIMIT
    if not -limit <= base_time <= limit or not -limit <= offset <= limit:
        raise EncodeError("base time %r or time offset %r is not a finite time" % (base_time, offset))
    return _quantize_time(base_time, time_quantum)


def _group(readings, events):
    """Check every time is finite; group readings by (unit, sensor, quantity) in arrival order; the earliest time
    of readings and events (None when there are none)."""
    groups = {}
    earliest = None
    limit = TIME_LIMIT
    for r in readings:
        if not -limit <= r.t <= limit:  # also false for NaN
            raise EncodeError("reading %s/%s has time %r, not a finite time" % (r.sensor, r.name, r.t))
        key = (r.unit or "", r.sensor, r.name)
        group = groups.get(key)
        if group is None:
            groups[key] = [r]
        else:
            group.append(r)
        if earliest is None or r.t < earliest:
            earliest = r.t
    for e in events:
        if not -limit <= e.t <= limit:
            raise EncodeError("event %s/%s has time %r, not a finite time" % (e.sensor, e.name, e.t))
        if earliest is None or e.t < earliest:
            earliest = e.t
    return groups, earliest


def _event_records(events, prefix, shift, time_quantum):
    records = []
    for e in events:
        rec = {BN: "%s%s/%s" % (prefix, e.sensor, e.name), VS: event_value(e)}
        dt = _quantize_time(e.t + shift, time_quantum)
        if dt:
            rec[T] = dt
        records.append(rec)
    return records


def resolve(records, version=2):
    """Resolve a SenML pack (list of maps with integer labels) into plain records, per RFC 8428 section 4.6.

    Returns a list of dicts with ``n``, ``t`` and one of ``v``/``vs``/``vb``/``vd``, plus ``u`` when known. In
    format version 2 a numeric record also has ``exact``: the value as decimal text, exact (``"16.02"``, ``"21.50"``
    from an integer under ``be_``; the shortest text that reads back as the same double for a float); ``v`` is then
    the number nearest to it. Version 1 packs have no ``be_`` (it is an unknown must-understand label there). Raises
    ``VerifyError(reason="bad_senml")`` on anything RFC 8428 forbids: unknown must-understand labels, a record
    with no or several values, a bad name, or wrongly typed fields. Accepts tuples as arrays (cbor2 6.x).
    """
    if not isinstance(records, (list, tuple)):
        raise VerifyError("SenML pack is not an array", reason="bad_senml")
    out = []
    bn, bt, bu, bv, be = "", 0, None, None, 0
    base_name = None  # bn once checked as a whole name, or None
    v2 = version >= 2
    known = _LABEL_SET_V2 if v2 else _LABEL_SET
    chained = False
    for i, rec in enumerate(records):
        if rec.__class__ is not dict:
            raise VerifyError("SenML record %d is not a map" % i, reason="bad_senml")
        if base_name is not None and V in rec and (len(rec) == 1 or (len(rec) == 2 and T in rec)):
            # The common record once a group's base fields are set: a value and maybe a time, nothing else. Its
            # usual types are resolved inline; anything else (and every error) takes the general path below,
            # which gives the same result (tests/unit/test_wire.py compares the two).
            v = rec[V]
            if len(rec) == 1:
                t = bt
            else:
                t = rec[T]
                t = bt + t if t.__class__ is float else None
                if t is not None and t - t != 0.0:  # not finite: the general path names the error
                    t = None
            if t is not None:
                res = None
                if v.__class__ is int and v2 and be < 0 and (bv is None or bv.__class__ is int) \
                        and INT64_MIN <= v <= INT64_MAX:
                    if bv is not None:
                        v += bv
                    if INT64_MIN <= v <= INT64_MAX:
                        res = {"n": base_name, "t": t}
                        if bu is not None:
                            res["u"] = bu
                        res["v"] = v / 10 ** -be  # decimal_value
                        digits = str(-v if v < 0 else v).rjust(1 - be, "0")  # decimal_text
                        res["exact"] = ("-" if v < 0 else "") + digits[:be] + "." + digits[be:]
                elif v.__class__ is float and bv is None:
                    if v - v == 0.0:
                        res = {"n": base_name, "t": t}
                        if bu is not None:
                            res["u"] = bu
                        res["v"] = v
                        if v2:
                            res["exact"] = repr(v)
                if res is not None:
                    if chained:
                        bt = t
                    out.append(res)
                    continue
        if not rec.keys() <= known:
            _check_labels(rec, i, known)
        if BVER in rec and not (_number(rec[BVER], i, "bver").__class__ is int and rec[BVER] <= 10):
            raise VerifyError("record %d has unsupported SenML version %r" % (i, rec[BVER]), reason="bad_senml")
        if BN in rec:
            bn, base_name = _typed(rec[BN], str, i, "bn"), None
        if BT in rec:
            bt = _number(rec[BT], i, "bt")
        if BU in rec:
            bu = _typed(rec[BU], str, i, "bu")
        if BV in rec:
            bv = _number(rec[BV], i, "bv")
        if v2 and DT in rec:
            chained = _typed(rec[DT], bool, i, "dt_")
        if v2 and BE in rec:
            be = rec[BE]
            if be.__class__ is not int or not EXP_MIN <= be <= EXP_MAX:
                raise VerifyError("record %d: be_ must be an integer in %d..%d" % (i, EXP_MIN, EXP_MAX),
                                  reason="bad_senml")
        if N in rec:
            name = bn + _typed(rec[N], str, i, "n")
            if not NAME_RE.match(name):
                raise VerifyError("record %d has an invalid name %r" % (i, name[:64]), reason="bad_senml")
        else:
            if base_name is None:
                if not NAME_RE.match(bn):
                    raise VerifyError("record %d has an invalid name %r" % (i, bn[:64]), reason="bad_senml")
                base_name = bn
            name = base_name
        nvalues = (V in rec) + (VS in rec) + (VB in rec) + (VD in rec)
        if nvalues != 1 and not (not nvalues and S in rec):
            raise VerifyError("record %d must have exactly one value field" % i, reason="bad_senml")
        res = {"n": name, "t": _sum(bt, _number(rec[T], i, "t"), i, "t") if T in rec else bt}
        if chained:
            bt = res["t"]
        if U in rec:
            res["u"] = _typed(rec[U], str, i, "u")
        elif bu is not None:
            res["u"] = bu
        if V in rec:
            v = _number(rec[V], i, "v")
            v = _sum(v, bv, i, "v") if bv is not None else v
            if v2:
                _exact(res, v, be, i, "v")
            else:
                res["v"] = v
        elif VS in rec:
            res["vs"] = _typed(rec[VS], str, i, "vs")
        elif VB in rec:
            res["vb"] = _typed(rec[VB], bool, i, "vb")
        elif VD in rec:
            res["vd"] = _typed(rec[VD], bytes, i, "vd")
        if S in rec:
            res["s"] = s = _number(rec[S], i, "s")
            if v2 and s.__class__ is int and be:
                res["s"] = _number(decimal_value(s, be), i, "resolved s")
        out.append(res)
    return out


def _exact(res, v, be, i, label):
    """Set ``res[label]`` and ``res["exact"]`` for the value ``v`` (an int64 or a finite float) under ``be``."""
    if v.__class__ is float:
        res[label], res["exact"] = v, repr(v)
    elif be:
        res[label] = _number(decimal_value(v, be), i, "resolved " + label)
        res["exact"] = decimal_text(v, be)
    else:
        res[label], res["exact"] = v, str(v)


def _check_labels(rec, i, known=_LABEL_SET):
    for label in rec:
        if label not in known:
            if isinstance(label, str) and label.endswith("_"):
                raise VerifyError("record %d has must-understand label %r" % (i, label), reason="bad_senml")
            if not isinstance(label, (int, str)):
                raise VerifyError("record %d has a label of type %s" % (i, type(label).__name__), reason="bad_senml")


def _typed(value, cls, i, label):
    if not isinstance(value, cls) or (cls is not bool and isinstance(value, bool)):
        raise VerifyError("record %d: %s must be %s" % (i, label, cls.__name__), reason="bad_senml")
    return value


def _number(value, i, label):
    """A finite number within the wire's bounds: an int64 integer or a finite float (never a bool)."""
    cls = value.__class__
    if cls is float:
        if value - value == 0.0:  # false for NaN and both infinities
            return value
        raise VerifyError("record %d: %s must be finite, got %r" % (i, label, value), reason="bad_senml")
    if cls is int:
        if INT64_MIN <= value <= INT64_MAX:
            return value
        raise VerifyError("record %d: %s is beyond the 64-bit signed range" % (i, label), reason="bad_senml")
    raise VerifyError("record %d: %s must be a number" % (i, label), reason="bad_senml")


def _sum(a, b, i, label):
    """``a + b`` of two checked numbers, refused when the sum leaves the bounds (a float overflow, an int64 carry)."""
    return _number(a + b, i, "resolved " + label)
