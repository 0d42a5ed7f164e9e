"""The console's commands: parsing, dispatch and 80-column output. Pure (house style, habit 1).

``Console.handle(line)`` takes one input line and returns either a ``Reply`` (lines of text) or a ``Work``: a
blocking call (an uplink round trip, a file write, a scrypt check) that the adapter runs off the event loop and
then hands to ``Work.finish`` for the ``Reply``. Everything the console knows about the gateway comes through the
injected ``GatewayView``; tests use a small fake.

The command table ``COMMANDS`` is data: words, usage, one-line summary, whether it writes. Write commands need
``unlock`` first and are audit-logged with their time and outcome. Every output line has URL credentials
redacted (``gateway.core.redact``), is cut to printable ASCII and wrapped to ``width`` (79) columns; unknown input gets
a one-line hint, never a traceback.

Where each part lives:

* ``values``: ``GatewayView``, ``Reply``, ``Work``, ``Probe``, ``run_sync``.
* ``table``: ``COMMANDS``, the command table (data).
* ``text``: ``fit``, ``sanitize`` and the number formats.
* ``read_commands``: the read-only commands; ``write_commands``: ``unlock``/``lock`` and the write commands.
* here: ``Console``, the session (prompt, banner, PIN entry, idle lock) and the dispatcher.
"""

import difflib

from gateway.app.console.read_commands import ReadCommands
from gateway.app.console.table import BY_WORDS, COMMANDS, GROUPS, Command
from gateway.app.console.text import WIDTH, age, fit, sanitize
from gateway.app.console.values import GatewayView, Probe, Reply, Work, run_sync
from gateway.app.console.write_commands import UnlockCommands, WriteCommands
from gateway.core.errors import ConfigError

__all__ = ["COMMANDS", "Command", "Console", "GatewayView", "Probe", "Reply", "WIDTH", "Work", "fit", "run_sync",
           "sanitize"]


class Console(ReadCommands, UnlockCommands, WriteCommands):
    def __init__(self, view, lock, audit, width=WIDTH, max_line=160):
        self.view = view
        self.lock = lock
        self.audit = audit
        self.width = width
        self.max_line = max_line
        self.awaiting_pin = False
        self.handlers = {c.words: getattr(self, "do_" + "_".join(c.words).replace("-", "_")) for c in COMMANDS}

    # -- session --------------------------------------------------------------------------------------------
    @property
    def masked(self):
        """True while the next line is a PIN: the line discipline echoes '*'."""
        return self.awaiting_pin

    def prompt(self):
        if self.awaiting_pin:
            return "PIN: "
        gw = sanitize(self.view.gateway_id())[:24]
        return "%s%s " % (gw, "#" if self.lock.unlocked else ">")

    def banner(self):
        """Two short lines; the adapter starts them on a fresh line (the screen may still show an old prompt)."""
        return self._reply(["edge-gateway %s console." % self.view.version(),
                            "Type 'help' for commands, 'unlock' to change things."])

    def disconnected(self):
        """The cable went away: lock, forget any half-entered PIN."""
        self.awaiting_pin = False
        if self.lock.lock():
            self.audit.record("lock", "locked on disconnect")

    def idle_check(self):
        """Called periodically; returns a Reply to show if the console just locked for inactivity."""
        if self.lock.check_idle():
            self.awaiting_pin = False
            self.audit.record("lock", "locked after %ds idle" % self.lock.idle_lock_s)
            return self._reply(["(console locked after %s idle)" % age(self.lock.idle_lock_s)])
        return None

    def _reply(self, lines):
        return Reply(tuple(fit(lines, self.width)))

    def handle(self, line):
        """One input line (a ``protocol.Line`` or text) -> ``Reply`` or ``Work``."""
        text = getattr(line, "text", line)
        notes = []
        if self.lock.check_idle():
            self.audit.record("lock", "locked after %ds idle" % self.lock.idle_lock_s)
            notes.append("(console locked after %s idle)" % age(self.lock.idle_lock_s))
            self.awaiting_pin = False
        self.lock.touch()
        if getattr(line, "cancelled", False):
            self.awaiting_pin = False
            return self._reply(notes)
        if getattr(line, "truncated", False):
            self.awaiting_pin = False
            return self._reply(notes + ["line too long (over %d characters): ignored" % self.max_line])
        if self.awaiting_pin:
            self.awaiting_pin = False
            return self._unlock(text, notes)
        words = text.split()
        if not words:
            return self._reply(notes)
        try:
            result = self._dispatch(words, text)
        except ConfigError as exc:
            result = self._reply(["config: %s" % exc])
        if notes:
            if isinstance(result, Reply):
                return Reply(tuple(fit(notes, self.width)) + result.lines)
        return result

    def _dispatch(self, words, text):
        """Command words are case-insensitive (``STATUS``, ``Uplink Test``); arguments keep their case."""
        key = tuple(w.lower() for w in words[:2])
        cmd = BY_WORDS.get(key) or BY_WORDS.get(key[:1])
        if cmd is None:
            return self._unknown(words)
        args = words[len(cmd.words):]
        if cmd.write and not self.lock.unlocked:
            return self._reply(["'%s' changes the gateway: type 'unlock' first" % cmd.name])
        return self.handlers[cmd.words](args, text)

    def _unknown(self, words):
        first = words[0].lower()
        if first in GROUPS:
            subs = [c.usage for c in COMMANDS if c.words[0] == first]
            return self._reply(["%s: try %s" % (first, " | ".join(subs))])
        names = sorted({c.words[0] for c in COMMANDS})
        close = difflib.get_close_matches(first, names, n=1)
        hint = "; did you mean '%s'?" % close[0] if close else ""
        return self._reply(["unknown command '%s'%s (type 'help')" % (words[0][:20], hint)])

    def _usage(self, words):
        return self._reply(["usage: " + BY_WORDS[words].usage])
