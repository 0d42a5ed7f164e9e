"""The console's commands: parsing, dispatch and 80-column output. Pure (house style, habit 1).

``Console.handle(line)`` takes one input line and returns either a ``Reply`` (lines of text) or a ``Work``: a
blocking call (an uplink round trip, a file write, a scrypt check) that the adapter runs off the event loop and
then hands to ``Work.finish`` for the ``Reply``. Everything the console knows about the gateway comes through the
injected ``GatewayView``; tests use a small fake.

The command table ``COMMANDS`` is data: words, usage, one-line summary, whether it writes. Write commands need
``unlock`` first and are audit-logged with their time and outcome. Every output line has URL credentials
redacted (``gateway.core.redact``), is cut to printable ASCII and wrapped to ``width`` (79) columns; unknown input gets
a one-line hint, never a traceback.
"""

import abc
import difflib
import textwrap
from dataclasses import dataclass

from gateway.core.errors import ConfigError, GatewayError
from gateway.core.redact import redact_text

WIDTH = 79
NEWLINE = "\r\n"


class GatewayView(abc.ABC):
    """What the console may see and do. Methods marked blocking are only called from ``Work.call``."""

    @abc.abstractmethod
    def version(self): """Software version text."""

    @abc.abstractmethod
    def gateway_id(self): """The gateway id (the prompt shows it)."""

    @abc.abstractmethod
    def status(self): """``Agent.status()`` plus ``version``, ``wall`` (now), ``store_counters``."""

    @abc.abstractmethod
    def now(self): """The monotonic time on the scale of ``Reading.t``."""

    @abc.abstractmethod
    def sensor_rows(self): """``[SensorRow]`` from the board."""

    @abc.abstractmethod
    def sensor_latest(self, sensor): """``{name: Reading}`` or None if the sensor is unknown."""

    @abc.abstractmethod
    def sensor_recent(self, sensor, n): """The last ``n`` readings, or None if unknown."""

    @abc.abstractmethod
    def alarms(self): """Active alarm events, or None when no rules are configured."""

    @abc.abstractmethod
    def log_lines(self, n): """The last ``n`` log lines."""

    @abc.abstractmethod
    def config_data(self): """The config file as a dict (ConfigError if there is none or it does not load)."""

    @abc.abstractmethod
    def keys(self): """``{"kid", "fingerprint", "alg", "x"}``: public identity only."""

    @abc.abstractmethod
    def uplink_test(self): """Blocking. ``Probe``."""

    @abc.abstractmethod
    def config_set(self, key, text): """Blocking. Validate, persist; returns a sentence saying when it applies."""

    @abc.abstractmethod
    def sensor_add(self, name, kind, params): """Blocking. Edit [[sources]]; returns a sentence."""

    @abc.abstractmethod
    def sensor_remove(self, name): """Blocking. Edit [[sources]]; returns a sentence."""

    @abc.abstractmethod
    def store_dump(self, path): """Blocking. Write the queue to ``path``; returns a sentence."""

    @abc.abstractmethod
    def restart(self): """Ask the agent to exit (systemd starts it again); returns a sentence."""


@dataclass(frozen=True, slots=True)
class Probe:
    ok: bool
    latency_s: float
    detail: str


@dataclass(frozen=True, slots=True)
class Reply:
    lines: tuple = ()

    def render(self):
        return "".join(line + NEWLINE for line in self.lines).encode("ascii", "replace")


@dataclass(frozen=True, slots=True)
class Work:
    """A blocking step: the adapter runs ``call()`` in a thread, then ``finish(result)`` gives the ``Reply``."""

    call: object
    finish: object
    label: str = ""


@dataclass(frozen=True, slots=True)
class Command:
    words: tuple
    args: str
    summary: str
    write: bool = False
    detail: str = ""

    @property
    def name(self):
        return " ".join(self.words)

    @property
    def usage(self):
        return (self.name + " " + self.args).strip()


COMMANDS = (
    Command(("help",), "[COMMAND]", "list the commands, or explain one"),
    Command(("status",), "", "gateway id, uptime, clock, uplink, queue and drops"),
    Command(("sensors",), "", "each sensor: last value, age, RSSI, battery"),
    Command(("read",), "SENSOR [N]", "last readings of one sensor (N up to 50)"),
    Command(("alarms",), "", "alarms in force (needs [[rules]] in the config)"),
    Command(("uplink", "test"), "", "round trip to the uplink host: latency or error"),
    Command(("log",), "[N]", "the last N log lines (default 20, up to 200)"),
    Command(("config", "show"), "[SECTION]", "the config file, secrets redacted"),
    Command(("keys",), "", "the signing key's kid and public fingerprint"),
    Command(("version",), "", "software version"),
    Command(("unlock",), "[PIN]", "enter the technician PIN to allow write commands",
            detail="Without PIN you are prompted and the PIN is echoed as '*'. Wrong PINs back off "
                   "(1, 2, 4, 8 s) and lock out after several failures."),
    Command(("lock",), "", "lock the write commands again"),
    Command(("config", "set"), "KEY VALUE", "change a setting; saved to the config file", write=True,
            detail="Validated like the config at start-up. Some keys apply at once, the others after "
                   "'restart'; the answer says which. Example: config set batch.max_age_s 5"),
    Command(("sensor", "add"), "NAME TYPE [KEY=VALUE ...]", "add a [[sources]] entry (on restart)",
            write=True, detail="Example: sensor add fridge serial port=/dev/ttyUSB1 baud=9600 protocol=lines"),
    Command(("sensor", "remove"), "NAME", "remove a [[sources]] entry (on restart)", write=True),
    Command(("store", "flush-to-file"), "PATH", "copy the queue to a file (CBOR sequence)",
            write=True, detail="The queue is not emptied: batches are still delivered. The file must not "
                               "exist yet; give an absolute path, e.g. on a USB stick."),
    Command(("store", "requeue"), "", "send rejected (quarantined) batches again",
            write=True, detail="Batches the backend refused with a 4xx (e.g. before it knew this gateway's key) "
                               "are kept aside; once the backend is fixed, this puts them back in the queue."),
    Command(("restart",), "", "stop the agent so systemd starts it again", write=True),
)
_BY_WORDS = {c.words: c for c in COMMANDS}
_GROUPS = sorted({c.words[0] for c in COMMANDS if len(c.words) > 1})


def sanitize(text):
    """Printable ASCII only: no escape sequences or control characters can reach the technician's terminal."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in str(text))


def fit(lines, width=WIDTH):
    """Redact URL credentials, sanitize and wrap every line to ``width`` columns (continuations indented by two
    spaces). Every reply passes here, so no console output shows a ``user:password@`` or a ``token=``."""
    out = []
    for line in lines:
        line = sanitize(redact_text(str(line))).rstrip()
        if len(line) <= width:
            out.append(line)
            continue
        indent = len(line) - len(line.lstrip(" "))
        out.extend(textwrap.wrap(line, width, subsequent_indent=" " * min(indent + 2, 20),
                                 break_on_hyphens=False, drop_whitespace=True) or [line[:width]])
    return out


def _age(seconds):
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return "%.1fs" % seconds
    if seconds < 120:
        return "%ds" % seconds
    if seconds < 7200:
        return "%dm" % (seconds // 60)
    if seconds < 172800:
        return "%dh" % (seconds // 3600)
    return "%dd" % (seconds // 86400)


def _uptime(seconds):
    seconds = int(seconds or 0)
    d, rest = divmod(seconds, 86400)
    return "%dd %02d:%02d:%02d" % (d, rest // 3600, rest // 60 % 60, rest % 60)


def _bytes(n):
    n = n or 0
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return ("%d %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1000.0
    return "%.1f GB" % n


def _value(r):
    if r is None:
        return "-"
    v = r.value
    if isinstance(v, float):
        v = ("%.4g" % v)
    elif isinstance(v, bytes):
        v = v[:8].hex()
    return ("%s %s" % (v, r.unit or "")).strip()


class Console:
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
        return self._reply(["edge-gateway %s console. Type 'help' for commands, 'unlock' to change things."
                            % self.view.version()])

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
            return self._reply(["(console locked after %s idle)" % _age(self.lock.idle_lock_s)])
        return None

    def _reply(self, lines):
        return Reply(tuple(fit(lines, self.width)))

    def handle(self, line):
        """One input line (a ``protocol.Line`` or text) -> ``Reply`` or ``Work``."""
        text = getattr(line, "text", line)
        notes = []
        if self.lock.check_idle():
            self.audit.record("lock", "locked after %ds idle" % self.lock.idle_lock_s)
            notes.append("(console locked after %s idle)" % _age(self.lock.idle_lock_s))
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
        cmd = _BY_WORDS.get(tuple(words[:2])) or _BY_WORDS.get(tuple(words[:1]))
        if cmd is None:
            return self._unknown(words)
        args = words[len(cmd.words):]
        if cmd.write and not self.lock.unlocked:
            return self._reply(["'%s' changes the gateway: type 'unlock' first" % cmd.name])
        return self.handlers[cmd.words](args, text)

    def _unknown(self, words):
        first = words[0].lower()
        if first in _GROUPS:
            subs = [c.usage for c in COMMANDS if c.words[0] == first]
            return self._reply(["%s: try %s" % (first, " | ".join(subs))])
        names = sorted({c.words[0] for c in COMMANDS})
        close = difflib.get_close_matches(first, names, n=1)
        hint = "; did you mean '%s'?" % close[0] if close else ""
        return self._reply(["unknown command '%s'%s (type 'help')" % (words[0][:20], hint)])

    def _usage(self, words):
        return self._reply(["usage: " + _BY_WORDS[words].usage])

    # -- read-only ------------------------------------------------------------------------------------------
    def do_help(self, args, text):
        if args:
            key = tuple(a.lower() for a in args[:2])
            cmd = _BY_WORDS.get(key) or _BY_WORDS.get(key[:1])
            if cmd is None and key[0] in _GROUPS:
                return self._reply([c.usage + "  -  " + c.summary for c in COMMANDS if c.words[0] == key[0]])
            if cmd is None:
                return self._unknown(args)
            lines = ["usage: " + cmd.usage, "  " + cmd.summary + (" (after unlock)" if cmd.write else "")]
            if cmd.detail:
                lines.append("  " + cmd.detail)
            return self._reply(lines)
        def row(c):
            if len(c.usage) > 26:
                return ["  " + c.usage, "  %-26s %s" % ("", c.summary)]
            return ["  %-26s %s" % (c.usage, c.summary)]
        lines = ["Commands anyone at the cable may use:"]
        lines += [text for c in COMMANDS if not c.write for text in row(c)]
        lines.append("After 'unlock' (technician PIN):")
        lines += [text for c in COMMANDS if c.write for text in row(c)]
        lines.append("Enter runs a line; Backspace edits; Ctrl-C abandons; Ctrl-U clears.")
        return self._reply(lines)

    def do_version(self, args, text):
        return self._reply(["edge-gateway " + self.view.version()])

    def do_status(self, args, text):
        s = self.view.status()
        wall = s.get("wall")
        last_ack = s.get("last_ack")
        ack = "never" if last_ack is None else "%s ago" % _age(wall - last_ack if wall else 0)
        c = s.get("counters", {})
        sc = s.get("store_counters", {})
        lines = [
            "gateway   %s  (edge-gateway %s, boot %s, kid %s)" % (s.get("gateway"), s.get("version"),
                                                                 s.get("boot"), s.get("kid")),
            "uptime    %s" % _uptime(s.get("uptime_s")),
            "clock     %s" % ("synced" if s.get("clock_synced") else "NOT synced (times are provisional)"),
            "uplink    %s  %s" % (s.get("uplink_state"), s.get("uplink")),
            "last ack  %s" % ack,
        ]
        if s.get("last_error"):
            lines.append("error     %s" % s["last_error"])
        lines += [
            "queue     %d batches, %d readings, %s, %d alarms; %d in memory" % (
                s.get("queue_batches", 0), s.get("queue_readings", 0), _bytes(s.get("queue_bytes")),
                s.get("queue_alarms", 0), s.get("memory_batches", 0)),
            "store     %s" % ("ok" if s.get("store_ok", True) else "FAILING (batches kept in memory)"),
            "drops     store %d batches/%d readings (%d alarm, %d expired), memory %d/%d, quarantined %d" % (
                sc.get("dropped_batches", 0), sc.get("dropped_readings", 0), sc.get("dropped_alarm_batches", 0),
                sc.get("expired_batches", 0), c.get("memory_dropped_batches", 0),
                c.get("memory_dropped_readings", 0), sc.get("quarantined", c.get("quarantined", 0))),
        ]
        integrity = [sc.get(k, 0) for k in ("salvaged_batches", "lost_batches", "poison_batches", "conflict_batches")]
        if any(integrity):
            lines.append("integrity salvaged %d, lost %d (corrupt queue); poison %d, conflict %d batches" % tuple(
                integrity))
        lines += [
            "readings  %d in, %d sent in %d batches; %d uplink failures" % (
                c.get("readings_in", 0), c.get("readings_sent", 0), c.get("batches_sent", 0),
                c.get("uplink_failures", 0)),
        ]
        for src in s.get("sources", []):
            errs = sum(v for k, v in src.get("counters", {}).items() if k.startswith("error."))
            lines.append("source    %s: %s" % (src.get("name"), ", ".join(
                "%s %s" % (k, v) for k, v in sorted(src.get("counters", {}).items())
                if not k.startswith("error.")) + (", errors %d" % errs if errs else "") or "no counters yet"))
        return self._reply(lines)

    def do_sensors(self, args, text):
        rows = self.view.sensor_rows()
        if not rows:
            return self._reply(["no readings yet"])
        now = self.view.now()
        lines = ["%-18s %-24s %6s %6s %-12s" % ("SENSOR", "LAST VALUE", "AGE", "RSSI", "BATTERY")]
        for r in rows:
            val = "-" if r.primary is None else "%s %s" % (r.primary.name, _value(r.primary))
            rssi = "-" if r.rssi is None else _value(r.rssi).replace(" dBm", "")
            lines.append("%-18s %-24s %6s %6s %-12s" % (sanitize(r.sensor)[:18], sanitize(val)[:24],
                                                       _age(now - r.last_t if r.last_t is not None else None),
                                                       rssi[:6], _value(r.battery)[:12]))
        return self._reply(lines)

    def do_read(self, args, text):
        if not args or len(args) > 2 or (len(args) == 2 and not args[1].isdigit()):
            return self._usage(("read",))
        sensor = args[0]
        n = min(int(args[1]), 50) if len(args) == 2 else 10
        latest = self.view.sensor_latest(sensor)
        if latest is None:
            known = [r.sensor for r in self.view.sensor_rows()]
            return self._reply(["no readings from '%s'; sensors: %s" % (sensor[:30], ", ".join(known) or "none")])
        now = self.view.now()
        lines = ["%s now:" % sensor]
        lines += ["  %-16s %-22s %s ago" % (name[:16], _value(r)[:22], _age(now - r.t))
                  for name, r in sorted(latest.items())]
        recent = self.view.sensor_recent(sensor, n) or []
        lines.append("last %d readings (newest last):" % len(recent))
        lines += ["  %8s ago  %-16s %s" % (_age(now - r.t), r.name[:16], _value(r)[:40]) for r in recent]
        return self._reply(lines)

    def do_alarms(self, args, text):
        alarms = self.view.alarms()
        if alarms is None:
            return self._reply(["no rules configured ([[rules]] in the config): no alarms are evaluated"])
        if not alarms:
            return self._reply(["no active alarms"])
        now = self.view.now()
        lines = ["%d active:" % len(alarms)]
        for e in alarms:
            lines.append("  %-16s %-16s %-8s %s ago: %s" % (
                str(e.sensor)[:16], str(e.name)[:16], str(e.level or "")[:8], _age(now - e.t), e.reason))
        return self._reply(lines)

    def do_uplink_test(self, args, text):
        def finish(probe):
            if probe.ok:
                return self._reply(["uplink ok in %.1f ms: %s" % (probe.latency_s * 1000.0, probe.detail)])
            return self._reply(["uplink FAILED after %.1f ms: %s" % (probe.latency_s * 1000.0, probe.detail)])
        return Work(self.view.uplink_test, finish, "uplink test")

    def do_log(self, args, text):
        if len(args) > 1 or (args and not args[0].isdigit()):
            return self._usage(("log",))
        n = max(1, min(int(args[0]) if args else 20, 200))
        lines = self.view.log_lines(n)
        return self._reply(lines or ["(no log lines yet)"])

    def do_config_show(self, args, text):
        from gateway.app.config import to_toml
        from gateway.app.console.settings import redact
        data = redact(self.view.config_data())
        if args:
            section = args[0]
            if section not in data:
                return self._reply(["no section '%s'; sections: %s" % (section[:20], ", ".join(data) or "none")])
            data = {section: data[section]}
        lines = to_toml(data).strip("\n").split("\n")
        return self._reply(lines)

    def do_keys(self, args, text):
        k = self.view.keys()
        return self._reply(["kid          %s" % k.get("kid"), "algorithm    %s" % k.get("alg"),
                            "fingerprint  %s" % k.get("fingerprint"), "public x     %s" % k.get("x"),
                            "(the private key never leaves the gateway and is never shown)"])

    # -- unlock / lock -------------------------------------------------------------------------------------
    def do_unlock(self, args, text):
        if len(args) > 1:
            return self._usage(("unlock",))
        if self.lock.unlocked:
            return self._reply(["already unlocked"])
        if not self.lock.configured:
            return self._reply(["no PIN is configured (console.pin_hash): write commands are disabled"])
        wait = self.lock.wait_s()
        if wait > 0:
            return self._unlock("", [])  # refused unchecked, with the wait, before asking for a PIN
        if not args:
            self.awaiting_pin = True
            return Reply(())
        return self._unlock(args[0], [])

    def _unlock(self, pin, notes):
        def finish(attempt):
            outcome = "ok" if attempt.ok else attempt.message if attempt.checked else "refused unchecked: " + \
                attempt.message
            self.audit.record("unlock", outcome)
            return self._reply(notes + [attempt.message])
        if self.lock.wait_s() > 0 or not self.lock.configured:
            return finish(self.lock.attempt(pin))
        return Work(lambda: self.lock.attempt(pin), finish, "unlock")

    def do_lock(self, args, text):
        was = self.lock.lock()
        if was:
            self.audit.record("lock", "locked by command")
        return self._reply(["locked" if was else "already locked"])

    # -- write commands (the dispatcher checked the lock) --------------------------------------------------
    def _write(self, action, call, secret=None):
        """Run ``call`` off the loop; audit the action with its outcome, success or not. ``secret`` (a value
        being set) is scrubbed from what is shown and audited, whatever the view put in its message."""
        def run():
            try:
                return True, call()
            except OSError as exc:
                where = "%s: " % exc.filename if exc.filename else ""
                return False, where + (exc.strerror or str(exc))
            except (GatewayError, ValueError) as exc:
                return False, str(exc)

        def finish(result):
            ok, message = result
            if secret:
                message = message.replace(secret, "<redacted>")
            self.audit.record(action, ("ok: " if ok else "FAILED: ") + message)
            return self._reply([message if ok else "failed: " + message])
        return Work(run, finish, action)

    def do_config_set(self, args, text):
        parts = text.split(None, 3)
        if len(parts) < 4:
            return self._usage(("config", "set"))
        key, value = parts[2], parts[3]
        from gateway.app.console.settings import is_secret
        shown = "<redacted>" if is_secret(key) else value
        return self._write("config set %s %s" % (key, shown), lambda: self.view.config_set(key, value),
                           secret=value.strip() if shown != value else None)

    def do_sensor_add(self, args, text):
        if len(args) < 2:
            return self._usage(("sensor", "add"))
        from gateway.app.console.settings import is_secret, scalar
        name, kind, params = args[0], args[1], {}
        for item in args[2:]:
            k, eq, v = item.partition("=")
            if not eq or not k:
                return self._reply(["'%s' is not KEY=VALUE" % item[:30], "usage: " + _BY_WORDS[("sensor", "add")]
                                    .usage])
            params[k] = scalar(v)
        shown = " ".join("%s=%s" % (k, "<redacted>" if is_secret(k) else v) for k, v in params.items())
        return self._write(("sensor add %s %s %s" % (name, kind, shown)).strip(),
                           lambda: self.view.sensor_add(name, kind, params))

    def do_sensor_remove(self, args, text):
        if len(args) != 1:
            return self._usage(("sensor", "remove"))
        return self._write("sensor remove %s" % args[0], lambda: self.view.sensor_remove(args[0]))

    def do_store_flush_to_file(self, args, text):
        if len(args) != 1:
            return self._usage(("store", "flush-to-file"))
        return self._write("store flush-to-file %s" % args[0], lambda: self.view.store_dump(args[0]))

    def do_store_requeue(self, args, text):
        if args:
            return self._usage(("store", "requeue"))
        return self._write("store requeue", self.view.store_requeue)

    def do_restart(self, args, text):
        if args:
            return self._usage(("restart",))
        return self._write("restart", self.view.restart)


def run_sync(result):
    """Resolve a ``Work`` in the calling thread (tests, scripts). Returns the ``Reply``."""
    while isinstance(result, Work):
        result = result.finish(result.call())
    return result
