"""The actuator board's serial line protocol: frames in and out, sans-IO. Pure, and written to MicroPython's subset
(no dataclasses, no typing, no f-strings): the gateway's driver (``drivers/serial/actuator.py``) and the board's
firmware (``firmware_sim/actuator_board.py``) share this one codec. docs/operations.md ("Actuator boards") is the
reference a board maker implements against.

One frame is one ASCII line of at most ``MAX_LINE`` bytes, 115200 baud 8N1::

    <lead><seq> <VERB>[ <arg>...]*<crc>\\n

* ``lead``: ``>`` a command (gateway to board), ``<`` a reply (board to gateway, it carries the command's ``seq``),
  ``!`` a notice (board to gateway, unasked; ``seq`` is the board's own counter).
* ``seq``: decimal 0-65535; the gateway numbers its commands and wraps at 65536. A command sent again after a lost
  reply keeps its ``seq``: the board answers it again from its memory of the last reply, without doing it twice.
* ``crc``: CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) of every byte before the ``*``, four upper-case hex digits.

Commands: ``SET <channel> <0|1>`` (switch one output), ``PING`` (the keep-alive; it changes nothing). Replies:
``ACK <channel>=<0|1>...`` (the state of every output after the command) or ``NAK <reason>`` (``bad_channel``,
``bad_value``, ``bad_verb``). Notices: ``BOOT <channel>...`` (the board started, every output off) and ``SAFE
<why>`` (the keep-alive ran out: every output switched off).

``LinkFramer.feed(data)`` returns the complete frames in ``data`` as ``Frame`` values and counts what it refused in
``errors`` (``bad_checksum``, ``too_long``, ``malformed``); it resynchronises at the next line end.
"""

MAX_LINE = 80
MAX_SEQ = 65536
COMMAND, REPLY, NOTICE = ">", "<", "!"
LEADS = (COMMAND, REPLY, NOTICE)
CHANNEL_OK = "abcdefghijklmnopqrstuvwxyz0123456789_-"


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE: ``crc16(b"123456789") == 0x29B1``."""
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


class LinkError(ValueError):
    """A frame that could not be built or read; ``reason`` is the counter name."""

    def __init__(self, reason, message):
        ValueError.__init__(self, message)
        self.reason = reason


class Frame:
    """One frame: ``lead`` (``>``, ``<`` or ``!``), ``seq`` (int), ``verb`` (str), ``args`` (tuple of str)."""

    __slots__ = ("lead", "seq", "verb", "args")

    def __init__(self, lead, seq, verb, args=()):
        self.lead = lead
        self.seq = seq
        self.verb = verb
        self.args = tuple(args)

    def __eq__(self, other):
        return (self.lead == other.lead and self.seq == other.seq and self.verb == other.verb
                and self.args == other.args)

    def __repr__(self):
        return "Frame(%r, %r, %r, %r)" % (self.lead, self.seq, self.verb, self.args)

    def states(self):
        """``{channel: 0|1}`` from an ACK's ``channel=state`` arguments (other arguments are skipped)."""
        out = {}
        for a in self.args:
            k, sep, v = a.partition("=")
            if sep and v in ("0", "1"):
                out[k] = int(v)
        return out


def encode(lead, seq, verb, args=()):
    """The bytes of one frame; ``LinkError`` for a frame this protocol cannot carry."""
    if lead not in LEADS or not 0 <= seq < MAX_SEQ:
        raise LinkError("malformed", "bad lead %r or seq %r" % (lead, seq))
    words = [verb] + [str(a) for a in args]
    for w in words:
        if not w or " " in w or "*" in w or "\n" in w or "\r" in w:
            raise LinkError("malformed", "bad word %r" % (w,))
    body = ("%s%d %s" % (lead, seq, " ".join(words))).encode()
    line = body + ("*%04X\n" % crc16(body)).encode()
    if len(line) > MAX_LINE:
        raise LinkError("too_long", "frame of %d bytes (at most %d)" % (len(line), MAX_LINE))
    return line


def decode(line):
    """One line (bytes, without its line end) -> ``Frame``; ``LinkError`` when it is not a valid frame."""
    star = line.rfind(b"*")
    if star < 0 or len(line) - star != 5:
        raise LinkError("malformed", "no *CRC at the end")
    body = line[:star]
    try:
        crc = int(line[star + 1:], 16)
        text = body.decode()
    except (ValueError, UnicodeError):
        raise LinkError("malformed", "CRC or text not readable")
    if crc16(body) != crc:
        raise LinkError("bad_checksum", "CRC %04X, expected %04X" % (crc, crc16(body)))
    words = text.split(" ")
    lead = text[:1]
    if lead not in LEADS or len(words) < 2 or not words[0][1:].isdigit() or not words[1]:
        raise LinkError("malformed", "not <lead><seq> <VERB>")
    seq = int(words[0][1:])
    if seq >= MAX_SEQ:
        raise LinkError("malformed", "seq %d out of range" % seq)
    return Frame(lead, seq, words[1], words[2:])


class LinkFramer:
    """Cuts a byte stream into frames at LF (a CR is ignored); bad lines are counted in ``errors``, never raised."""

    def __init__(self, max_line=MAX_LINE):
        self.max_line = max_line
        self.buf = b""
        self.discarding = False
        self.errors = {}

    def _count(self, reason):
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def feed(self, data):
        frames = []
        buf = self.buf + bytes(data).replace(b"\r", b"")
        while True:
            end = buf.find(b"\n")
            if end < 0:
                break
            line = buf[:end]
            buf = buf[end + 1:]
            if self.discarding:
                self.discarding = False  # the tail of an over-long line, already counted
                continue
            if not line:
                continue
            if len(line) + 1 > self.max_line:
                self._count("too_long")
                continue
            try:
                frames.append(decode(line))
            except LinkError as exc:
                self._count(exc.reason)
        if len(buf) + 1 > self.max_line:
            if not self.discarding:
                self._count("too_long")
            self.discarding = True
            buf = b""
        self.buf = buf
        return frames
