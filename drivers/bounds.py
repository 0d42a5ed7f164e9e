"""What a decoder may return: bounded numbers, and partial results marked as such.

What a decoded number may be is checked at the source. Pure: values in, values or ``DecodeError`` out.

Everything downstream (rules, the SenML/CBOR encoder, the receiver's database) assumes that a numeric value fits
a signed 64-bit integer or is a finite double. A sensor line ``temp=123456789012345678901234567890`` or a float
field ``1e999`` must therefore stop here, as a counted ``DecodeError(reason="out_of_range")``, and never become a
``Reading``. Every decoder calls ``check`` on each value it returns (``checked`` for a list), so one rule holds for
lines, NMEA, Modbus, BTHome, Ruuvi, pvvx/ATC and ESS alike.

* ``int`` (not ``bool``): must lie in ``[-2**63, 2**63 - 1]``.
* ``float``: must be finite (no NaN, no infinity).
* ``bool``, ``str`` and ``bytes`` pass (binary sensors, button events, text objects); their size is bounded by the
  frame they came in.
"""

import math

from gateway.core.errors import DecodeError

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


def check(name, value):
    """Return ``value`` if it may leave the decoder; raise ``DecodeError(reason="out_of_range")`` otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return value
        raise DecodeError("value of %r does not fit a signed 64-bit integer (%d bits)" % (name, value.bit_length()),
                          reason="out_of_range")
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise DecodeError("value of %r is not a finite number (%r)" % (name, value), reason="out_of_range")
    if isinstance(value, (str, bytes)):
        return value
    raise DecodeError("value of %r has the unsupported type %s" % (name, type(value).__name__), reason="bad_value")


def checked(measurements):
    """``check`` every ``Measurement`` of a list; return the list unchanged."""
    for m in measurements:
        check(m.name, m.value)
    return measurements


class PartialDecode(DecodeError):
    """A frame decoded only in part: ``measurements`` holds what was decoded before the fault, ``reason`` says
    what stopped the decoder (``unknown_object``, ``too_short`` ...).

    It is a ``DecodeError``, so a caller that does not care about partial results counts it and moves on; a caller
    that does (the BLE advert path) keeps ``measurements`` and counts the error. Raised only when at least one
    measurement came before the fault.
    """

    def __init__(self, message, reason, measurements):
        super().__init__(message, reason=reason)
        self.measurements = measurements
