"""Small pure helpers shared by the BLE decoders: hex and MAC parsing for ``cli_decode``, and constants.

Nothing here does IO. Every malformed input becomes a ``DecodeError`` with a stable ``reason``.
"""

from gateway.core.errors import DecodeError

#: standard gravity (CGPM 1901), used to turn milli-g into the SenML unit m/s2
STANDARD_GRAVITY = 9.80665

_HEX_SEPARATORS = str.maketrans("", "", " :-\t\r\n")


def parse_hex(text):
    """Return the bytes written as hex in ``text``; spaces, colons and dashes are allowed between digits.

    A leading ``0x`` is accepted. Raises ``DecodeError(reason="bad_hex")``.
    """
    if isinstance(text, (bytes, bytearray)):
        return bytes(text)
    if not isinstance(text, str):
        raise DecodeError("expected hex text, got %s" % type(text).__name__, reason="bad_hex")
    cleaned = text.strip()
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    cleaned = cleaned.translate(_HEX_SEPARATORS)
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise DecodeError("not valid hex: %r" % (text[:80],), reason="bad_hex") from None


def parse_mac(mac):
    """Return the 6 bytes of a MAC written ``AA:BB:CC:DD:EE:FF`` (most significant first), or None for None.

    Bytes of length 6 are passed through. Raises ``DecodeError(reason="bad_mac_format")``.
    """
    if mac is None:
        return None
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != 6:
            raise DecodeError("a MAC is 6 bytes, got %d" % len(mac), reason="bad_mac_format")
        return bytes(mac)
    if not isinstance(mac, str):
        raise DecodeError("a MAC is text like AA:BB:CC:DD:EE:FF", reason="bad_mac_format")
    cleaned = mac.strip().translate(_HEX_SEPARATORS)
    if len(cleaned) != 12:
        raise DecodeError("a MAC is 6 bytes written AA:BB:CC:DD:EE:FF, got %r" % (mac[:40],),
                          reason="bad_mac_format")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise DecodeError("a MAC is 6 bytes written AA:BB:CC:DD:EE:FF, got %r" % (mac[:40],),
                          reason="bad_mac_format") from None


def format_mac(raw):
    """``b'\\xaa\\xbb...'`` -> ``"AA:BB:CC:DD:EE:FF"``."""
    return ":".join("%02X" % b for b in raw)


def parse_key(key):
    """Return a 16-byte AES key from bytes or hex text, or None. Raises ``DecodeError(reason="bad_key")``.

    The message never contains the key.
    """
    if key is None:
        return None
    if isinstance(key, str):
        try:
            key = bytes.fromhex(key.strip().translate(_HEX_SEPARATORS))
        except ValueError:
            raise DecodeError("the key is not valid hex", reason="bad_key") from None
    if not isinstance(key, (bytes, bytearray)) or len(key) != 16:
        raise DecodeError("the key must be 16 bytes (32 hex digits)", reason="bad_key")
    return bytes(key)
