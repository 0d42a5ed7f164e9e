"""PIN unlock for the console's write commands, and the audit trail. No IO except the audit file; clock injected.

* Only a salted scrypt hash is stored, in ``[console] pin_hash``, as ``scrypt$N$r$p$<salt b64>$<hash b64>``
  (standard base64). ``hash_pin(pin)`` makes one; ``edge-gateway console --set-pin`` and the installer's
  provisioning call it. The PIN itself is never logged, echoed, audited or kept.
* No ``pin_hash`` configured means write commands stay disabled: there is no default PIN.
* Failed attempts back off: after the k-th consecutive failure the next attempt is refused unchecked for
  ``backoff_s * 2**(k-1)`` seconds (1, 2, 4, 8 s). After ``max_failures`` failures every attempt is refused for
  ``lockout_s`` (15 min). Unplugging the cable does not reset the count; a correct PIN does.
* The console locks again after ``idle_lock_s`` without input, on disconnect, and on ``lock``.
"""

import base64
import binascii
import datetime
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass

from gateway.errors import ConfigError

log = logging.getLogger(__name__)

SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1  # 16 MiB, ~50 ms on a desktop, ~0.3 s on a Raspberry Pi 3
SALT_BYTES, HASH_BYTES = 16, 32
MIN_PIN, MAX_PIN = 4, 64


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _maxmem(n, r):
    return 128 * r * n + (4 << 20)


def hash_pin(pin, salt=None, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P):
    """``"scrypt$N$r$p$salt$hash"`` for ``pin`` (text). A random 16-byte salt unless one is given (tests)."""
    if not isinstance(pin, str) or not MIN_PIN <= len(pin) <= MAX_PIN or not pin.isprintable() or " " in pin:
        raise ValueError("a PIN is %d to %d printable characters without spaces" % (MIN_PIN, MAX_PIN))
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

    def __init__(self, pin_hash, clock, *, max_failures=5, lockout_s=900.0, backoff_s=1.0, idle_lock_s=300.0):
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
            self.unlocked = True
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
        return Attempt(False, message, wait)


def _seconds(s):
    if s >= 120:
        return "%d min" % round(s / 60.0)
    if s >= 10:
        return "%d s" % round(s)
    return "%.1f s" % s


class AuditLog:
    """Every write command and unlock attempt, with wall time, to a logger and (optionally) an append-only file.

    The time is the injected clock's wall time in UTC, marked ``(clock unsynced)`` when NTP has not synced yet.
    """

    def __init__(self, clock, path=None, logger=None):
        self.clock = clock
        self.path = path
        self.log = logger or logging.getLogger("gateway.console.audit")
        if self.log.level == logging.NOTSET or self.log.level > logging.INFO:
            self.log.setLevel(logging.INFO)  # the audit trail is kept whatever the agent's log level
        self.entries = []  # the last few, for tests and 'log'
        self.errors = 0

    def stamp(self):
        when = datetime.datetime.fromtimestamp(self.clock.wall(), datetime.timezone.utc)
        text = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        synced = getattr(self.clock, "synced", None)
        if synced is not None and not synced():
            text += " (clock unsynced)"
        return text

    def record(self, action, outcome):
        entry = "%s console %s -> %s" % (self.stamp(), action, outcome)
        self.entries = (self.entries + [entry])[-100:]
        self.log.info("audit: %s", entry)
        if self.path:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, (entry + "\n").encode("utf-8", "replace"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                self.errors += 1
                log.error("cannot append to audit file %s: %s", self.path, exc.strerror)
        return entry
