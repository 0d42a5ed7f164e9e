"""The console's line discipline, pure: whole input and byte by byte (as h11's tests do), editing, noise."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from gateway.app.console.protocol import ERASE, Line, LineDiscipline


def feed_all(data, max_line=160, chunks=None):
    d = LineDiscipline(max_line)
    echo, lines = bytearray(), []
    pieces = [data] if chunks is None else [data[i:i + chunks] for i in range(0, len(data), chunks)]
    for piece in pieces:
        e, ls = d.feed(piece)
        echo += e
        lines += ls
    return bytes(echo), lines, d


CASES = [
    # (input, expected line texts, expected echo)
    (b"status\r", ["status"], b"status\r\n"),
    (b"status\n", ["status"], b"status\r\n"),
    (b"status\r\n", ["status"], b"status\r\n"),
    (b"a\r\nb\r\n", ["a", "b"], b"a\r\nb\r\n"),
    (b"a\n\rb\r", ["a", "", "b"], b"a\r\n\r\nb\r\n"),          # LF CR is two endings, CR LF one
    (b"\r\r", ["", ""], b"\r\n\r\n"),
    (b"verx\x7fsion\r", ["version"], b"verx" + ERASE + b"sion\r\n"),
    (b"ab\x08\x08\x08c\r", ["c"], b"ab" + ERASE + ERASE + b"c\r\n"),  # backspace on empty: no echo
    (b"help\x15log\r", ["log"], b"help" + ERASE * 4 + b"log\r\n"),      # Ctrl-U kills the line
    (b"a\tb\r", ["a b"], b"a b\r\n"),
    (b"st\x1b[Aat\x1b[1;5Dus\x1bOPx\r", ["statusx"], b"statusx\r\n"),  # arrows, ctrl-arrow, F1 swallowed
    (b"ab\x1b[12\rc\r", ["ab", "c"], b"ab\r\nc\r\n"),                 # a broken sequence does not eat Enter
    (b"a\x00\x01\x07\x0b\x0c\x1cb\r", ["ab"], b"ab\r\n"),             # other control chars dropped
    (b"t\xc3\xa9st\xff\x80\r", ["tst"], b"tst\r\n"),                   # high bytes dropped
]


@pytest.mark.parametrize("data,texts,echo", CASES)
@pytest.mark.parametrize("chunks", [None, 1, 3])
def test_whole_and_byte_by_byte(data, texts, echo, chunks):
    got_echo, lines, _ = feed_all(data, chunks=chunks)
    assert [ln.text for ln in lines] == texts
    assert got_echo == echo
    assert not any(ln.truncated or ln.cancelled for ln in lines)


def test_crlf_split_across_feeds_counts_once():
    d = LineDiscipline()
    assert d.feed(b"one\r") == (b"one\r\n", [Line("one")])
    assert d.feed(b"\n") == (b"", [])
    assert d.feed(b"two\n") == (b"two\r\n", [Line("two")])


def test_ctrl_c_abandons_the_line():
    echo, lines, d = feed_all(b"config se\x03status\r")
    assert lines == [Line("", cancelled=True), Line("status")]
    assert echo == b"config se^C\r\nstatus\r\n"
    assert d.pending == ""


def test_line_length_is_bounded_and_flagged():
    echo, lines, d = feed_all(b"x" * 50 + b"\r" + b"ok\r", max_line=20)
    assert lines[0] == Line("x" * 20, truncated=True)
    assert lines[1] == Line("ok")
    assert echo.count(b"\x07") == 1  # the bell rings once, not 30 times
    assert d.counters["dropped_overflow"] == 30


def test_mask_mode_echoes_stars_and_redraw():
    d = LineDiscipline()
    d.mask = True
    echo, lines = d.feed(b"12\x7f34")
    assert echo == b"**" + ERASE + b"**"
    assert d.redraw() == b"***"
    assert d.feed(b"\r")[1] == [Line("134")]


def test_counters_count_noise():
    _, _, d = feed_all(b"\x01\x02\xfe\xff\x1b[Aa\r")
    assert d.counters["dropped_control"] == 2
    assert d.counters["dropped_high"] == 2
    assert d.counters["escapes"] == 1
    assert d.counters["lines"] == 1


def test_line_noise_burst_never_breaks_the_discipline():
    rng = random.Random(7)
    noise = bytes(rng.randrange(256) for _ in range(20000))
    _, _, d = feed_all(noise, max_line=40)
    # After the burst a clean line still comes out intact, whatever state the noise left behind.
    echo, lines = d.feed(b"\x15\rversion\r")
    assert lines[-1] == Line("version")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 7))
def test_random_bytes_whole_equals_chunked(data, chunk):
    e1, l1, _ = feed_all(data, max_line=32)
    e2, l2, _ = feed_all(data, max_line=32, chunks=chunk)
    assert (e1, l1) == (e2, l2)
    for ln in l1:
        assert len(ln.text) <= 32
        assert all(" " <= ch <= "~" for ch in ln.text)
    assert b"\x1b" not in e1  # we never send escape sequences
    assert all(b in b"\r\n\x08\x07" or 0x20 <= b <= 0x7E for b in e1)
