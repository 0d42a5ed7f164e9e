"""The console's line discipline. Pure: bytes in, ``(echo bytes, complete lines)`` out (house style, habit 1).

What a technician's terminal (picocom, screen, minicom, PuTTY) sends, and what we do with it:

* Line endings: CR (picocom/screen's Enter), LF, or CRLF. A CR followed by LF counts once, even when the LF
  arrives in a later ``feed`` (byte-at-a-time input).
* Editing: backspace (0x08) and DEL (0x7f) remove the last character and echo ``"\\b \\b"``; Ctrl-U kills the
  line; Ctrl-C abandons it (echo ``^C``) and yields a ``Line`` with ``cancelled`` set, so the caller re-prompts.
* Echo is on (the terminal does no local echo at 8N1 defaults). In ``mask`` mode (a PIN prompt) each character is
  echoed as ``*``.
* Escape sequences (F-keys, left/right: ``ESC [ ... final`` and ``ESC O x``) are swallowed whole, never inserted
  as ``[A``. We never send ANSI ourselves.
* History: up-arrow (``ESC [ A``, or ``ESC O A`` in application mode) recalls the previous line, down-arrow
  (``ESC [ B`` / ``ESC O B``) the next one, then the line being typed. At most ``max_history`` lines are kept;
  a line typed in ``mask`` mode (a PIN), the line after a bare ``unlock`` (a PIN typed ahead of its prompt), a
  line starting with ``unlock``, and an empty, abandoned or overlong line are never recorded. The redraw uses only CR, BS, spaces and text: when ``prompt`` and both lines fit
  in one row of ``width`` columns it rewrites that row in place (``CR prompt text``, spaces over the rest of
  the old line, backspaces back); otherwise it starts a fresh line (``CR LF prompt text``), so a wrapped line
  never leaves garbage on an 80-column screen.
* Anything else that is not printable ASCII (other control characters, bytes >= 0x80, line noise) is dropped and
  counted in ``counters``; nothing raises.
* A line is bounded (``max_line`` characters). Extra characters are dropped, the terminal bell rings once, and the
  completed line comes out with ``truncated`` set so the command layer can refuse it rather than run half of it.
"""

import collections
from dataclasses import dataclass

CR, LF, BS, DEL, ESC, ETX, NAK, TAB, BEL = 0x0D, 0x0A, 0x08, 0x7F, 0x1B, 0x03, 0x15, 0x09, 0x07
ERASE = b"\b \b"
NEWLINE = b"\r\n"
MAX_ESCAPE = 16  # an escape sequence longer than this is line noise; stop swallowing
UP, DOWN = -1, 1
#: escape sequences that move in the history: (introducer, parameters, final byte) -> direction
HISTORY_KEYS = {("csi", b"", 0x41): UP, ("csi", b"", 0x42): DOWN, ("ss3", b"", 0x41): UP, ("ss3", b"", 0x42): DOWN}
PRIVATE_WORDS = ("unlock",)  # a line starting with one of these may hold a PIN: never recorded

# Parser states (an explicit table of what each state accepts lives in ``_step``).
TEXT, AFTER_CR, ESCAPE, CSI, SS3 = "text", "after_cr", "escape", "csi", "ss3"


@dataclass(frozen=True, slots=True)
class Line:
    """One completed input line. ``text`` is printable ASCII only."""

    text: str
    truncated: bool = False
    cancelled: bool = False


class LineDiscipline:
    def __init__(self, max_line=160, max_history=32, width=80):
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self.width = width
        self.mask = False
        self.prompt = ""  # what precedes the line on screen (the caller sets it), for the history redraw
        self.counters = {"dropped_control": 0, "dropped_high": 0, "dropped_overflow": 0, "escapes": 0,
                         "lines": 0, "recalls": 0}
        self.history = collections.deque(maxlen=max_history)
        self._hist_pos = None  # index into history while recalling; None while typing a new line
        self._after_unlock = False
        self._draft = ""  # the line being typed when recall started (down-arrow past the newest gives it back)
        self._buf = []
        self._state = TEXT
        self._esc_len = 0
        self._esc_params = bytearray()
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
        self._remember(text, cancelled or self._overflow)
        self._buf = []
        self._overflow = False
        echo += b"^C" + NEWLINE if cancelled else NEWLINE

    def _remember(self, text, discard):
        self._hist_pos, self._draft = None, ""
        words = text.lower().split()
        after_unlock, self._after_unlock = self._after_unlock, words == ["unlock"]
        if discard or self.mask or after_unlock or not words or words[0] in PRIVATE_WORDS:
            return  # (after a bare 'unlock' comes the PIN, even when typed ahead of the masked prompt)
        if not self.history or self.history[-1] != text:
            self.history.append(text)

    def _recall(self, direction, echo):
        """Move in the history; echo the redraw. Nothing happens at either end or in mask mode."""
        if self.mask or not self.history:
            return
        pos = len(self.history) if self._hist_pos is None else self._hist_pos
        pos += direction
        if pos < 0 or pos > len(self.history) or (pos == len(self.history) and self._hist_pos is None):
            return
        if self._hist_pos is None:
            self._draft = self.pending
        new = self._draft if pos == len(self.history) else self.history[pos]
        self._hist_pos = None if pos == len(self.history) else pos
        self.counters["recalls"] += 1
        old = self.pending
        self._buf = list(new)
        self._overflow = False
        prompt = self.prompt.encode("ascii", "replace")
        if len(self.prompt) + max(len(old), len(new)) < self.width:  # one row: rewrite it in place
            pad = len(old) - len(new)
            echo += b"\r" + prompt + new.encode("ascii") + (b" " * pad + b"\b" * pad if pad > 0 else b"")
        else:  # the old line may have wrapped: BS cannot climb rows, so start a fresh line
            echo += NEWLINE + prompt + new.encode("ascii")

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
            self._esc_params.clear()
            return
        elif state in (CSI, SS3):
            self._esc_len += 1
            if state == SS3 or 0x40 <= b <= 0x7E:
                self._state = TEXT
                direction = HISTORY_KEYS.get((state, bytes(self._esc_params), b))
                if direction is not None:
                    self._recall(direction, echo)
            elif self._esc_len > MAX_ESCAPE:
                self._state = TEXT
            else:
                self._esc_params.append(b)
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
