"""A strict well-formedness check for untrusted CBOR (RFC 8949), run over the bytes before any decoder sees them.

Pure: bytes in, an offset or a ``CBORStrictError`` out. No IO, no decoding of values.

``item_end(data, start)`` walks one data item from its head bytes (major type, argument, length, nesting) and
returns the offset just past it. It accepts only the subset of CBOR the wire format uses:

* unsigned and negative integers, byte strings, text strings (valid UTF-8), arrays and maps of definite length;
* ``false``, ``true``, ``null`` and half, single or double precision floats;
* map keys that are integers or text, each at most once per map;
* nesting at most ``max_depth`` arrays or maps deep;
* no semantic tag, except one ``top_tag`` in front of the item when the caller allows it (COSE_Sign1, 18).

Everything else (indefinite lengths, reserved or unassigned simple values, tags such as decimal fractions or shared
values, duplicate keys, truncation) raises ``CBORStrictError``. Byte and text strings are skipped by their length,
so a byte string holding a whole payload costs one step: callers check the envelope before the signature and the
payload after it. A decoder such as ``cbor2`` then only ever sees input it decodes without an error path.
"""

MAX_DEPTH = 16


class CBORStrictError(ValueError):
    """The bytes are not well-formed CBOR, or use CBOR the wire format does not allow.

    ``offset`` says where; ``index`` is the item's position when the bytes were a sequence (``split_sequence``).
    """

    def __init__(self, message, offset, index=None):
        super().__init__("%s at byte %d" % (message, offset))
        self.detail = message
        self.offset = offset
        self.index = index


def _leaf_sizes():
    """Bytes taken by each initial byte that is a whole item by itself (0: not such an item)."""
    sizes = bytearray(256)
    for base in (0x00, 0x20):  # unsigned, negative integers
        for ai in range(24):
            sizes[base + ai] = 1
        for ai, size in ((24, 2), (25, 3), (26, 5), (27, 9)):
            sizes[base + ai] = size
    sizes[0x40] = sizes[0x60] = 1  # empty byte and text strings
    for b in (0xf4, 0xf5, 0xf6):  # false, true, null
        sizes[b] = 1
    sizes[0xf9], sizes[0xfa], sizes[0xfb] = 3, 5, 9  # half, single, double
    return bytes(sizes)


_LEAF = _leaf_sizes()
# One-byte integer keys (the SenML and COSE labels) map to their value; None for every other initial byte.
_SMALL_INT = tuple(b if b < 24 else -1 - (b - 0x20) if 0x20 <= b < 0x38 else None for b in range(256))
# ... and to one bit each, for the duplicate check of the fast path (0 for every other initial byte).
_KEY_BIT = tuple(0 if k is None else 1 << (k + 24) for k in _SMALL_INT)
_ARG_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}


def _describe(b):
    major, ai = b >> 5, b & 31
    if ai == 31:
        return "an indefinite length (initial byte 0x%02x)" % b if major != 7 else "a stray break (0xff)"
    if ai >= 28:
        return "reserved additional information %d (initial byte 0x%02x)" % (ai, b)
    if major == 6:
        return "a semantic tag (initial byte 0x%02x)" % b
    return "a simple value that is not false, true, null or a float (initial byte 0x%02x)" % b


# Kept at 78 lines: helpers for the per-map fast path and strings cost +10% (534 -> 586 us per 1000-reading payload).
def item_end(data, start=0, end=None, max_depth=MAX_DEPTH, top_tag=None):
    """Check the one CBOR item at ``data[start:]`` and return the offset just past it (``<= end``).

    ``top_tag``, when given, is the one tag number allowed, and only in front of the outermost item.
    """
    if end is None:
        end = len(data)
    pos = start
    if top_tag is not None and pos < end and data[pos] >> 5 == 6:
        pos = _skip_tag(data, pos, end, top_tag)
    leaf = _LEAF
    small_int = _SMALL_INT
    key_bit = _KEY_BIT
    left = 1  # items still to read at the current level
    keys = None  # the keys seen so far when the current level is a map, else None
    stack = []
    while True:
        while not left:
            if not stack:
                if pos > end:
                    raise CBORStrictError("truncated item", end)
                return pos
            left, keys = stack.pop()
        if pos >= end:
            raise CBORStrictError("truncated item", end)
        b = data[pos]
        left -= 1
        if keys is not None and left & 1:  # a map key: left is odd right after taking the key
            key = small_int[b]
            if key is not None:
                pos += 1
            else:
                key, pos = _map_key(data, pos, end)
            if key in keys:
                raise CBORStrictError("duplicate map key %r" % (key if not isinstance(key, str) else key[:40],), pos)
            keys.add(key)
            continue
        size = leaf[b]
        if size:
            pos += size
            continue
        if 0xa0 < b < 0xb8 and len(stack) < max_depth:
            # Fast path for the common SenML record: a small map of one-byte integer keys and whole-item values.
            p, mask, n = pos + 1, 0, b - 0xa0
            while n and p + 1 < end:
                bit = key_bit[data[p]]
                size = leaf[data[p + 1]]
                if not bit or not size:
                    break
                if mask & bit:
                    raise CBORStrictError("duplicate map key %r" % (small_int[data[p]],), p)
                mask |= bit
                p += 1 + size
                n -= 1
            if not n:
                pos = p
                continue
        major = b >> 5
        if major == 2 or major == 3:
            length, after = _argument(data, pos, end)
            if length > end - after:
                raise CBORStrictError("string of %d bytes runs past the end" % length, pos)
            if major == 3:
                _text(data, after, length, end)
            pos = after + length
        elif major == 4 or major == 5:
            count, after = _argument(data, pos, end)
            if major == 5:
                count *= 2
            if count > end - after:
                raise CBORStrictError("%d items cannot fit in the %d bytes left" % (count, end - after), pos)
            if len(stack) >= max_depth:
                raise CBORStrictError("nested deeper than %d" % max_depth, pos)
            stack.append((left, keys))
            left, keys = count, (set() if major == 5 else None)
            pos = after
        else:
            raise CBORStrictError("%s is not allowed" % _describe(b), pos)


def _skip_tag(data, pos, end, top_tag):
    """The offset after the tag head at ``pos``, which must be ``top_tag``."""
    tag, after = _argument(data, pos, end)
    if tag != top_tag:
        raise CBORStrictError("tag %d is not allowed (only %d)" % (tag, top_tag), pos)
    return after


def _map_key(data, pos, end):
    """A map key that is not a one-byte integer (the fast case stays in ``item_end``): ``(key, offset after)``."""
    major = data[pos] >> 5
    if major == 0 or major == 1:
        key, pos = _argument(data, pos, end)
        return (-1 - key if major else key), pos
    if major == 3:
        length, after = _argument(data, pos, end)
        return _text(data, after, length, end), after + length
    raise CBORStrictError("a map key must be an integer or a text string", pos)


def _argument(data, pos, end):
    """The argument of the head at ``pos`` and the offset after the head. Definite lengths only."""
    ai = data[pos] & 31
    if ai < 24:
        return ai, pos + 1
    n = _ARG_BYTES.get(ai)
    if n is None:
        raise CBORStrictError(_describe(data[pos]) + " is not allowed", pos)
    if pos + 1 + n > end:
        raise CBORStrictError("truncated head", pos)
    return int.from_bytes(data[pos + 1:pos + 1 + n], "big"), pos + 1 + n


def _text(data, start, length, end):
    if length > end - start:
        raise CBORStrictError("text of %d bytes runs past the end" % length, start)
    try:
        return bytes(data[start:start + length]).decode("utf-8")
    except UnicodeDecodeError:
        raise CBORStrictError("text string is not valid UTF-8", start) from None


def check(data, max_depth=MAX_DEPTH, top_tag=None):
    """Check that ``data`` is exactly one allowed CBOR item, with no bytes after it."""
    stop = item_end(data, 0, len(data), max_depth, top_tag)
    if stop != len(data):
        raise CBORStrictError("%d bytes after the item" % (len(data) - stop), stop)


def split_sequence(data, max_depth=MAX_DEPTH, top_tag=None):
    """Split a CBOR sequence (RFC 8742: items back to back) into the bytes of each item.

    Raises ``CBORStrictError`` with ``index`` set to the position of the first item that is not allowed.
    """
    items = []
    pos = 0
    while pos < len(data):
        try:
            stop = item_end(data, pos, len(data), max_depth, top_tag)
        except CBORStrictError as exc:
            raise CBORStrictError(exc.detail, exc.offset, len(items)) from None
        items.append(data[pos:stop])
        pos = stop
    return items
