"""The console's line discipline. Pure: bytes in, ``(echo bytes, complete lines)`` out (house style, habit 1).

What a technician's terminal (picocom, screen, minicom, PuTTY) sends, and what we do with it:

* Line endings: CR (picocom/screen's Enter), LF, or CRLF. A CR followed by LF counts once, even when the LF
  arrives in a later ``feed`` (byte-at-a-time input).
* Editing: backspace (0x08) and DEL (0x7f) remove the last character and echo ``"\\b \\b"``; Ctrl-U kills the
  line; Ctrl-C abandons it (echo ``^C``) and yields a ``Line`` with ``cancelled`` set, so the caller re-prompts.
* Echo is on (the terminal does no local echo at 8N1 defaults). In ``mask`` mode (a PIN prompt) each character is
  echoed as ``*``.
* Escape sequences (arrow keys, F-keys: ``ESC [ ... final`` and ``ESC O x``) are swallowed whole, never inserted
  as ``[A``. We never send ANSI ourselves.
* Anything else that is not printable ASCII (other control characters, bytes >= 0x80, line noise) is dropped and
  counted in ``counters``; nothing raises.
* A line is bounded (``max_line`` characters). Extra characters are dropped, the terminal bell rings once, and the
  completed line comes out with ``truncated`` set so the command layer can refuse it rather than run half of it.
"""

from dataclasses import dataclass

CR, LF, BS, DEL, ESC, ETX, NAK, TAB, BEL = 0x0D, 0x0A, 0x08, 0x7F, 0x1B, 0x03, 0x15, 0x09, 0x07
ERASE = b"\b \b"
NEWLINE = b"\r\n"
MAX_ESCAPE = 16  # an escape sequence longer than this is line noise; stop swallowing

# Parser states (an explicit table of what each state accepts lives in ``_step``).
TEXT, AFTER_CR, ESCAPE, CSI, SS3 = "text", "after_cr", "escape", "csi", "ss3"


@dataclass(frozen=True, slots=True)
class Line:
    """One completed input line. ``text`` is printable ASCII only."""

    text: str
    truncated: bool = False
    cancelled: bool = False


class LineDiscipline:
    def __init__(self, max_line=160):
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self.mask = False
        self.counters = {"dropped_control": 0, "dropped_high": 0, "dropped_overflow": 0, "escapes": 0,
                         "lines": 0}
        self._buf = []
        self._state = TEXT
        self._esc_len = 0
        self._overflow = False

    @property
    def pending(self):
        """The partial line typed so far (what a redraw after an asynchronous message must show again)."""
        return "".join(self._buf)

    def redraw(self):
        """Echo bytes that show the partial line again (masked in mask mode)."""
        return (("*" * len(self._buf)) if self.mask else self.pending).encode("ascii")

    def feed(self, data):
        """Consume ``data`` (bytes). Returns ``(echo, lines)``: bytes to write back and a list of ``Line``."""
        echo = bytearray()
        lines = []
        for byte in data:
            self._step(byte, echo, lines)
        return bytes(echo), lines

    def _finish(self, echo, lines, cancelled=False):
        text = "" if cancelled else "".join(self._buf)
        lines.append(Line(text, self._overflow and not cancelled, cancelled))
        self.counters["lines"] += 1
        self._buf = []
        self._overflow = False
        echo += b"^C" + NEWLINE if cancelled else NEWLINE

    def _step(self, b, echo, lines):
        state = self._state
        if state == AFTER_CR:
            self._state = TEXT
            if b == LF:
                return  # the LF of a CRLF pair
            state = TEXT
        if state != TEXT and (b < 0x20 or b > 0x7E):
            self._state = TEXT  # a broken escape sequence must not eat Enter, backspace or the next ESC
            state = TEXT
        elif state == ESCAPE:
            self._state = CSI if b == 0x5B else SS3 if b == 0x4F else TEXT  # ESC x (Alt-x) ends here
            self._esc_len = 1
            return
        elif state in (CSI, SS3):
            self._esc_len += 1
            if state == SS3 or 0x40 <= b <= 0x7E or self._esc_len > MAX_ESCAPE:
                self._state = TEXT
            return
        if b == CR:
            self._finish(echo, lines)
            self._state = AFTER_CR
        elif b == LF:
            self._finish(echo, lines)
        elif b in (BS, DEL):
            if self._buf:
                self._buf.pop()
                echo += ERASE
        elif b == NAK:  # Ctrl-U: kill the line
            echo += ERASE * len(self._buf)
            self._buf = []
            self._overflow = False
        elif b == ETX:  # Ctrl-C: abandon the line
            self._finish(echo, lines, cancelled=True)
        elif b == ESC:
            self._state = ESCAPE
            self.counters["escapes"] += 1
        elif b == TAB or 0x20 <= b <= 0x7E:
            if len(self._buf) >= self.max_line:
                self.counters["dropped_overflow"] += 1
                if not self._overflow:
                    echo.append(BEL)
                self._overflow = True
                return
            ch = " " if b == TAB else chr(b)
            self._buf.append(ch)
            echo += b"*" if self.mask else ch.encode("ascii")
        elif b >= 0x80:
            self.counters["dropped_high"] += 1
        else:
            self.counters["dropped_control"] += 1
