"""The actuator board's line protocol (gateway/core/actuator_link.py): frames fed whole and byte by byte, the CRC,
resynchronisation after garbage, and what it refuses."""

import pytest

from gateway.core.actuator_link import (COMMAND, NOTICE, REPLY, MAX_LINE, Frame, LinkError, LinkFramer, crc16,
                                        decode, encode)


def test_crc_is_ccitt_false():
    assert crc16(b"123456789") == 0x29B1  # the catalogue's check value of CRC-16/CCITT-FALSE
    assert crc16(b"") == 0xFFFF


def test_encode_is_the_documented_bytes():
    # the examples of docs/operations.md, "Actuator boards"
    assert encode(COMMAND, 7, "SET", ["buzzer", "1"]) == b">7 SET buzzer 1*%04X\n" % crc16(b">7 SET buzzer 1")
    assert encode(REPLY, 7, "ACK", ["buzzer=1", "relay=0"]).startswith(b"<7 ACK buzzer=1 relay=0*")
    assert decode(encode(NOTICE, 0, "SAFE", ["keepalive"])[:-1]) == Frame("!", 0, "SAFE", ("keepalive",))


def test_ack_states():
    assert decode(encode(REPLY, 1, "ACK", ["buzzer=1", "relay=0", "x"])[:-1]).states() == {"buzzer": 1, "relay": 0}


STREAM = [Frame(">", 0, "PING"), Frame("<", 0, "ACK", ("buzzer=0", "relay=0")), Frame(">", 65535, "SET",
          ("relay", "1")), Frame("!", 3, "BOOT", ("buzzer", "relay"))]


@pytest.mark.parametrize("step", [None, 1, 3])
def test_framer_whole_and_byte_by_byte(step):
    data = b"".join(encode(f.lead, f.seq, f.verb, f.args) for f in STREAM).replace(b"\n", b"\r\n", 1)
    framer = LinkFramer()
    got = []
    if step is None:
        got = framer.feed(data)
    else:
        for i in range(0, len(data), step):
            got += framer.feed(data[i:i + step])
    assert got == STREAM and framer.errors == {}


def test_framer_counts_and_resyncs():
    good = encode(COMMAND, 5, "PING")
    bad = bytearray(encode(COMMAND, 6, "SET", ["buzzer", "1"]))
    bad[8] ^= 0x01  # one bit flipped on the line
    data = (b"noise\x00\xff\n" + bytes(bad) + b"x" * (MAX_LINE + 20) + b"\n" + good + b">1 PING*ZZZZ\n"
            + b">99999 PING*" + b"%04X\n" % crc16(b">99999 PING"))
    framer = LinkFramer()
    assert framer.feed(data) == [Frame(">", 5, "PING")]
    assert framer.errors == {"malformed": 3, "bad_checksum": 1, "too_long": 1}


def test_encode_refuses_what_the_line_cannot_carry():
    for lead, seq, verb, args in ((">", 65536, "PING", ()), ("?", 1, "PING", ()), (">", 1, "SET", ["a b"]),
                                  (">", 1, "SET", ["a*"]), (">", 1, "", ())):
        with pytest.raises(LinkError):
            encode(lead, seq, verb, args)
    with pytest.raises(LinkError) as info:
        encode(">", 1, "SET", ["x" * 80])
    assert info.value.reason == "too_long"
