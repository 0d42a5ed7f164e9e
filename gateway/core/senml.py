"""SenML packs in the CBOR representation of RFC 8428: encode readings and events, decode and resolve packs.

Pure: values in, bytes out, and back. No IO, no clock.

Compactness (the wire is billed per megabyte):

* Records are grouped by sensor and quantity. The first record of a group carries the whole name as base name
  (``bn`` = ``<gw>/<sensor>/<quantity>``), so no record needs ``n``. ``bu`` is set only when the unit changes, so
  a group costs its unit once. Groups with no unit come first, because ``bu`` cannot be unset.
* The first record carries the base time ``bt``; every other record carries its time relative to it (``t``).
* Numbers take the shortest CBOR encoding that loses nothing *of the sensor's resolution*: an integral value is a
  CBOR integer; otherwise half, single or double precision, the first whose value rounds to the same multiple of
  the reading's published resolution (``Measurement.resolution``, e.g. 0.01 °C for BTHome). With no known
  resolution the float must be exact. Times use the pack's time quantum the same way. This departs from a strict
  "bit-exact double" reading of the format (docs/wire-format.md): a 0.01 °C reading needs 9 bytes as a double and 5 as a single with no
  information lost, which is the difference between meeting and missing the 10 bytes per reading budget. Receivers
  that want the decimal value round to the resolution of the quantity (see ``docs/wire-format.md``).
"""

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


def encode_records(readings, events=(), prefix="", base_time=None, time_quantum=1.0, time_offset=0.0):
    """Build the list of SenML record maps (integer labels) for ``readings`` and ``events``.

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
    numbers = {}  # (value, resolution) -> compact value: readings repeat their values a lot within a batch
    current_bu = ""
    # Groups with no unit first, because bu cannot be unset once given.
    for key in sorted(groups):
        unit, sensor, name = key
        first = True
        for r in groups[key]:
            dt = r.t + shift
            dt = round(dt / iq) * iq if whole else _quantize_time(dt, time_quantum)
            rec = {T: dt} if dt else {}
            if first:
                first = False
                rec[BN] = "%s%s/%s" % (prefix, sensor, name)
                if unit and unit != current_bu:
                    rec[BU] = current_bu = unit
            value = r.value
            cls = value.__class__
            if cls is float:
                nkey = (value, r.resolution)
                compact = numbers.get(nkey)
                if compact is None:
                    compact = numbers[nkey] = compact_number(value, r.resolution)
                rec[V] = compact
            elif cls is int:
                if not INT64_MIN <= value <= INT64_MAX:
                    raise EncodeError("reading %s/%s: integer %d is beyond the 64-bit signed range"
                                      % (sensor, name, value))
                rec[V] = value
            elif cls is bool:
                rec[VB] = value
            elif cls is str:
                rec[VS] = value
            elif cls is bytes:
                rec[VD] = value
            else:
                rec[V] = compact_number(value, r.resolution)
            records.append(rec)
    records[0][BT] = base_time
    return records


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


def resolve(records):
    """Resolve a SenML pack (list of maps with integer labels) into plain records, per RFC 8428 section 4.6.

    Returns a list of dicts with ``n``, ``t`` and one of ``v``/``vs``/``vb``/``vd``, plus ``u`` when known. Raises
    ``VerifyError(reason="bad_senml")`` on anything RFC 8428 forbids: unknown must-understand labels, a record
    with no or several values, a bad name, or wrongly typed fields. Accepts tuples as arrays (cbor2 6.x).
    """
    if not isinstance(records, (list, tuple)):
        raise VerifyError("SenML pack is not an array", reason="bad_senml")
    out = []
    bn, bt, bu, bv = "", 0, None, None
    base_name = None  # bn once checked as a whole name, or None
    known = _LABEL_SET
    for i, rec in enumerate(records):
        if rec.__class__ is not dict:
            raise VerifyError("SenML record %d is not a map" % i, reason="bad_senml")
        if not rec.keys() <= known:
            _check_labels(rec, i)
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
        if U in rec:
            res["u"] = _typed(rec[U], str, i, "u")
        elif bu is not None:
            res["u"] = bu
        if V in rec:
            v = _number(rec[V], i, "v")
            res["v"] = _sum(v, bv, i, "v") if bv is not None else v
        elif VS in rec:
            res["vs"] = _typed(rec[VS], str, i, "vs")
        elif VB in rec:
            res["vb"] = _typed(rec[VB], bool, i, "vb")
        elif VD in rec:
            res["vd"] = _typed(rec[VD], bytes, i, "vd")
        if S in rec:
            res["s"] = _number(rec[S], i, "s")
        out.append(res)
    return out


def _check_labels(rec, i):
    for label in rec:
        if label not in LABELS:
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
