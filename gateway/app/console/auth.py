"""PIN unlock for the console's write commands, and the audit trail. No IO except the audit and lock-state files
(each behind its own small class); the clock is injected.

* Only a salted scrypt hash is stored, in ``[console] pin_hash``, as ``scrypt$N$r$p$<salt b64>$<hash b64>``
  (standard base64). ``hash_pin(pin)`` makes one; ``edge-gateway console --set-pin`` and the installer's
  provisioning call it. The PIN itself is never logged, echoed, audited or kept.
* No ``pin_hash`` configured means write commands stay disabled: there is no default PIN.
* Failed attempts back off: after the k-th consecutive failure the next attempt is refused unchecked for
  ``backoff_s * 2**(k-1)`` seconds (1, 2, 4, 8 s). After ``max_failures`` failures every attempt is refused for
  ``lockout_s`` (15 min). Unplugging the cable does not reset the count; a correct PIN does.
* The failure count and the wait survive a restart and a power cycle: ``LockState`` keeps them in
  ``<state_dir>/console-lock.json`` (0600, written atomically after every checked attempt). The monotonic clock
  starts again at boot, so the wait left is stored and starts again in full after a restart: a power cycle never
  shortens a lockout. A file that cannot be read back counts as a lockout (fail closed).
* PINs are at least ``MIN_PIN`` (6) characters: 4 digits fall to 5 guesses per 15 min in about a month.
* The audit file is bounded: ``AuditLog`` rotates it to ``.1`` at ``max_bytes`` (one old file kept) and writes
  a run of identical failure lines once, then ``(previous line repeated N times)``.
* The console locks again after ``idle_lock_s`` without input, on disconnect, and on ``lock``.
"""

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import logging
import os
import re
from dataclasses import dataclass

from gateway.adapters.files import write_atomic
from gateway.core.errors import ConfigError
from gateway.core.redact import redact_text

log = logging.getLogger(__name__)

SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1  # 16 MiB, ~50 ms on a desktop, ~0.3 s on a Raspberry Pi 3
SALT_BYTES, HASH_BYTES = 16, 32
MIN_PIN, MAX_PIN = 6, 64


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _maxmem(n, r):
    return 128 * r * n + (4 << 20)


def hash_pin(pin, salt=None, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P):
    """``"scrypt$N$r$p$salt$hash"`` for ``pin`` (text). A random 16-byte salt unless one is given (tests)."""
    if not isinstance(pin, str) or not MIN_PIN <= len(pin) <= MAX_PIN or not pin.isprintable() or " " in pin:
        raise ValueError("a PIN is %d to %d printable characters without spaces (at least %d digits: shorter "
                         "PINs fall to guessing)" % (MIN_PIN, MAX_PIN, MIN_PIN))
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(pin.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=HASH_BYTES,
                            maxmem=_maxmem(n, r))
    return "scrypt$%d$%d$%d$%s$%s" % (n, r, p, _b64(salt), _b64(digest))


def parse_pin_hash(text, file=None):
    """Check a stored hash; returns ``(n, r, p, salt, digest)``. Bounds keep a bad config from eating memory."""
    key = "console.pin_hash"
    parts = text.split("$") if isinstance(text, str) else []
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ConfigError("must look like scrypt$N$r$p$salt$hash (make one with edge-gateway console --set-pin)",
                          file, key)
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ConfigError("is not a valid scrypt hash: %s" % exc, file, key) from None
    if n < 2 or n & (n - 1) or n > 1 << 20 or not 1 <= r <= 32 or not 1 <= p <= 16 or n * r > 1 << 22:
        raise ConfigError("scrypt parameters out of range (N a power of two up to 2^20, r 1-32, p 1-16)", file, key)
    if len(salt) < 8 or len(digest) < 16:
        raise ConfigError("salt or hash too short", file, key)
    return n, r, p, salt, digest


def verify_pin(pin, stored):
    """True if ``pin`` matches the stored hash (constant-time compare)."""
    n, r, p, salt, digest = parse_pin_hash(stored)
    try:
        got = hashlib.scrypt(pin.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(digest),
                             maxmem=_maxmem(n, r))
    except (ValueError, UnicodeEncodeError, MemoryError):
        return False
    return hmac.compare_digest(got, digest)


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one unlock attempt. ``retry_in`` is seconds until the next attempt is checked."""

    ok: bool
    message: str
    retry_in: float = 0.0
    checked: bool = True


class PinLock:
    """Lock state, failure backoff and idle re-lock for one console. ``clock.monotonic()`` is the only time read."""

    def __init__(self, pin_hash, clock, *, max_failures=5, lockout_s=900.0, backoff_s=1.0, idle_lock_s=300.0,
                 state=None):
        self.pin_hash = pin_hash or ""
        if self.pin_hash:
            parse_pin_hash(self.pin_hash)
        self.clock = clock
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.backoff_s = backoff_s
        self.idle_lock_s = idle_lock_s
        self.unlocked = False
        self.failures = 0
        self.not_before = None
        self.locked_out = False
        self.last_activity = clock.monotonic()
        self.state = state  # a LockState, or None (tests, the demo): nothing survives a restart
        self._wait = 0.0  # the wait set by the last checked attempt (what is persisted)
        if state is not None:
            self._restore(state.load(max_failures, lockout_s))

    def _restore(self, saved):
        if not saved:
            return
        self.failures = saved["failures"]
        self.locked_out = saved["locked_out"]
        self._wait = saved["wait_s"]
        if self._wait > 0:
            self.not_before = self.clock.monotonic() + self._wait

    def _save(self):
        if self.state is not None:
            self.state.save({"failures": self.failures, "locked_out": self.locked_out, "wait_s": self._wait})

    @property
    def configured(self):
        return bool(self.pin_hash)

    def touch(self):
        """Input arrived: the idle timer starts again."""
        self.last_activity = self.clock.monotonic()

    def lock(self):
        was = self.unlocked
        self.unlocked = False
        return was

    def check_idle(self):
        """Lock if idle too long. Returns True if this call locked the console."""
        if self.unlocked and self.clock.monotonic() - self.last_activity >= self.idle_lock_s:
            self.unlocked = False
            return True
        return False

    def wait_s(self):
        """Seconds before the next attempt will be checked (0 when it may be tried now)."""
        if self.not_before is None:
            return 0.0
        return max(0.0, self.not_before - self.clock.monotonic())

    def attempt(self, pin):
        if not self.configured:
            return Attempt(False, "no PIN is configured (console.pin_hash): write commands are disabled",
                           checked=False)
        wait = self.wait_s()
        if wait > 0:
            what = "locked out after %d failed PINs" % self.failures if self.locked_out else "too soon"
            return Attempt(False, "%s: try again in %s" % (what, _seconds(wait)), wait, checked=False)
        if self.locked_out:  # the lockout has run out: a fresh start
            self.locked_out = False
            self.failures = 0
        self.touch()
        if verify_pin(pin, self.pin_hash):
            self.failures = 0
            self.not_before = None
            self._wait = 0.0
            self.unlocked = True
            self._save()
            return Attempt(True, "unlocked: write commands allowed until 'lock', idle %s or disconnect"
                           % _seconds(self.idle_lock_s))
        self.failures += 1
        if self.failures >= self.max_failures:
            self.locked_out = True
            wait = self.lockout_s
            message = "wrong PIN; locked out for %s after %d failures" % (_seconds(wait), self.failures)
        else:
            wait = self.backoff_s * 2 ** (self.failures - 1)
            message = "wrong PIN (%d of %d); next attempt in %s" % (self.failures, self.max_failures,
                                                                   _seconds(wait))
        self.not_before = self.clock.monotonic() + wait
        self._wait = wait
        self._save()
        return Attempt(False, message, wait)


def _seconds(s):
    if s >= 120:
        return "%d min" % round(s / 60.0)
    if s >= 10:
        return "%d s" % round(s)
    return "%.1f s" % s


class LockState:
    """The PIN lock's failures and wait on disk: JSON, mode 0600, replaced atomically (temp file, fsync, rename).

    ``load`` returns ``{"failures", "locked_out", "wait_s"}`` or None when there is no file. A file that exists but
    cannot be read back means a full lockout (fail closed): whoever can corrupt it must not win a fresh count."""

    def __init__(self, path):
        self.path = path
        self.errors = 0

    def load(self, max_failures, lockout_s):
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
            failures, locked_out, wait = data["failures"], data["locked_out"], data["wait_s"]
            if (type(failures) is not int or type(locked_out) is not bool or type(wait) not in (int, float)
                    or failures < 0 or not 0 <= wait <= lockout_s):
                raise ValueError("bad values")
            return {"failures": failures, "locked_out": locked_out, "wait_s": float(wait)}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            log.warning("console: lock state %s unreadable (%s): locked out for %d s", self.path, exc, lockout_s)
            return {"failures": max_failures, "locked_out": True, "wait_s": float(lockout_s)}

    def save(self, state):
        try:
            write_atomic(self.path, json.dumps(state, sort_keys=True), 0o600, secret=True)
        except OSError as exc:
            self.errors += 1
            log.error("console: cannot save the PIN lock state to %s: %s (a restart would forget failures)",
                      self.path, exc.strerror or exc)


_DIGITS = re.compile(r"\d+(?:\.\d+)?")


class AuditLog:
    """Every write command and unlock attempt, with wall time, to a logger and (optionally) an append-only file.

    The time is the injected clock's wall time in UTC, marked ``(clock unsynced)`` when NTP has not synced yet.
    Bounded: the file is rotated to ``<path>.1`` before it would pass ``max_bytes`` (one old file is kept, so the
    trail takes at most twice that), and a failure line that repeats the previous one (numbers aside) within
    ``repeat_window_s`` is only counted; the count is written as ``(previous line repeated N times)`` before the
    next line that is written (another line, or the same one after the window). Successful actions are always
    written.
    """

    def __init__(self, clock, path=None, logger=None, max_bytes=256 << 10, repeat_window_s=60.0):
        self.clock = clock
        self.path = path
        self.max_bytes = max_bytes
        self.repeat_window_s = repeat_window_s
        self.log = logger or logging.getLogger("gateway.app.console.audit")
        if self.log.level == logging.NOTSET or self.log.level > logging.INFO:
            self.log.setLevel(logging.INFO)  # the audit trail is kept whatever the agent's log level
        self.entries = []  # the last few, for tests and 'log'
        self.errors = 0
        self.suppressed = 0  # repeated failure lines counted, not written
        self.rotations = 0
        self._shape = None  # the last written failure line with its numbers blanked
        self._since = None  # when that line was written (monotonic)
        self._repeats = 0

    def stamp(self):
        when = datetime.datetime.fromtimestamp(self.clock.wall(), datetime.timezone.utc)
        text = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        synced = getattr(self.clock, "synced", None)
        if synced is not None and not synced():
            text += " (clock unsynced)"
        return text

    def record(self, action, outcome):
        action, outcome = redact_text(action), redact_text(outcome)
        entry = "%s console %s -> %s" % (self.stamp(), action, outcome)
        self.entries = (self.entries + [entry])[-100:]
        now = self.clock.monotonic()
        failure = not outcome.startswith("ok")
        shape = _DIGITS.sub("#", "%s -> %s" % (action, outcome)) if failure else None
        if shape is not None and shape == self._shape and now - self._since < self.repeat_window_s:
            self._repeats += 1
            self.suppressed += 1
            return entry
        self._flush_repeats()
        self._shape, self._since = shape, now
        self._write(entry)
        return entry

    def _flush_repeats(self):
        if self._repeats:
            self._write("%s console (previous line repeated %d times)" % (self.stamp(), self._repeats))
            self._repeats = 0

    def _write(self, entry):
        self.log.info("audit: %s", entry)
        if not self.path:
            return
        data = (entry + "\n").encode("utf-8", "replace")
        try:
            try:
                if os.stat(self.path).st_size + len(data) > self.max_bytes:
                    os.replace(self.path, self.path + ".1")
                    self.rotations += 1
            except FileNotFoundError:
                pass
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.errors += 1
            log.error("cannot append to audit file %s: %s", self.path, exc.strerror)
