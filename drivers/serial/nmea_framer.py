"""NMEA 0183 framing: the incremental sentence framer and the checksum. Pure: bytes in, checked bodies out.

``NmeaFramer(max_len=82).feed(data) -> [body, ...]`` finds ``$<body>*HH<CR><LF>`` and returns each ``body``
(``b"GPGGA,..."``, without ``$`` and ``*HH``) whose checksum matches. Everything that is not a good sentence is
counted in ``framer.counters`` under a stable reason token and dropped; the stream never stops:

========================  ==================================================================================
``bad_checksum``          the ``*HH`` did not match the XOR of the body (or was not two hex digits)
``no_checksum``           a sentence without ``*HH``; we require it (every GNSS receiver sends it)
``overlong``              more than ``max_len`` characters including ``$`` and CR LF (82 in NMEA 0183)
``truncated``             a ``$`` arrived before the previous sentence ended (a sentence was cut short)
``garbage``               bytes outside any sentence (CR and LF between sentences do not count)
========================  ==================================================================================

Some high-precision receivers (Hemisphere, Trimble with 8-decimal positions) exceed 82 characters; raise
``max_len`` for them.
"""

MAX_SENTENCE = 82  # NMEA 0183: at most 82 characters from "$" to LF inclusive

_HEX = {}
for _i in range(256):
    _HEX[b"%02X" % _i] = _i
    _HEX[b"%02x" % _i] = _i
del _i
_MASKS = [(1 << (8 * _n)) - 1 for _n in range(129)]  # a cache for sentences up to 258 bytes; longer ones compute


def checksum(body):
    """XOR of every byte of ``body`` (the bytes between ``$`` and ``*``) as an int 0..255.

    Folds a big integer in halves instead of looping per byte: about ten big-int operations per sentence. Any
    length works (a receiver configured with a large ``max_len`` sends long bodies).
    """
    n = len(body)
    x = int.from_bytes(body, "big")
    masks = _MASKS
    while n > 1:
        half = (n + 1) >> 1
        x = (x >> (half << 3)) ^ (x & (masks[half] if half < 129 else (1 << (half << 3)) - 1))
        n = half
    return x


def with_checksum(body):
    """``b"GPGGA,..."`` -> ``b"$GPGGA,...*HH\\r\\n"``: what a receiver sends."""
    return b"$%s*%02X\r\n" % (body, checksum(body))


class NmeaFramer:
    """Finds checksummed sentences in a byte stream. See the module docstring for the counters."""

    def __init__(self, max_len=MAX_SENTENCE):
        if max_len < 10:
            raise ValueError("max_len must be at least 10")
        self.max_len = max_len
        self.counters = {}
        self._buf = b""
        self._skipping = False  # inside an over-long sentence: drop bytes up to the next LF or "$"

    def _count(self, reason, n=1):
        self.counters[reason] = self.counters.get(reason, 0) + n

    def _garbage(self, seg):
        n = len(seg) - seg.count(b"\r") - seg.count(b"\n")
        if n:
            self._count("garbage", n)

    def feed(self, data):
        """Return the checked bodies of the complete sentences now available (bytes, without ``$`` and ``*HH``)."""
        buf = self._buf + data if self._buf else bytes(data)
        out = []
        pos = 0
        n = len(buf)
        limit = self.max_len - 1  # bytes allowed from "$" up to, not including, the LF
        if self._skipping:
            lf = buf.find(b"\n")
            dollar = buf.find(b"$")
            if lf < 0 and dollar < 0:
                self._buf = b""
                return out
            self._skipping = False
            pos = lf + 1 if dollar < 0 or 0 <= lf < dollar else dollar
        find = buf.find
        while True:
            start = find(b"$", pos)
            if start < 0:
                self._garbage(buf[pos:])
                buf = b""
                break
            if start > pos:
                self._garbage(buf[pos:start])
            end = find(b"\n", start)
            nxt = find(b"$", start + 1, n if end < 0 else end)
            stop = nxt if nxt >= 0 else end
            if stop < 0:  # incomplete
                if n - start > limit:
                    self._count("overlong")
                    self._skipping = True
                    buf = b""
                else:
                    buf = buf[start:]
                break
            if stop - start > limit:
                self._count("overlong")
                pos = stop if stop == nxt else stop + 1
                continue
            if stop == nxt:
                self._count("truncated")
                pos = nxt
                continue
            pos = end + 1
            body = buf[start + 1:end - 1 if buf[end - 1] == 13 else end]
            if len(body) < 3 or body[-3] != 42:  # "*"
                self._count("no_checksum")
                continue
            want = _HEX.get(body[-2:])
            body = body[:-3]
            if want is None or want != checksum(body):
                self._count("bad_checksum")
                continue
            out.append(body)
        self._buf = buf
        return out
