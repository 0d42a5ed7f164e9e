"""The real ``GatewayView``: a running ``Agent``, its config file, the sensor board and the log ring.

This is an adapter (it does IO: the config file, the store, a network probe), kept apart from the pure command
layer. Blocking methods (``uplink_test``, ``config_set``, ``sensor_add``/``remove``, ``store_dump``) run in a
worker thread, never on the agent's event loop.
"""

import collections
import logging
import os
import stat
import time
import tomllib

from gateway import __version__
from gateway.adapters import keys
from gateway.app.config import to_toml, write_atomic
from gateway.core.algorithms import SIGNING
from gateway.app.console import settings
from gateway.app.console.commands import GatewayView, Probe
from gateway.core.errors import ConfigError
from gateway.core.redact import redact_text

log = logging.getLogger(__name__)

#: console settings the running agent applies at once, and the name ``Agent.configure`` knows them by
AGENT_LIVE = {"batch.max_age_s": "max_age_s", "batch.max_readings": "max_readings",
              "uplink.backoff_min_s": "backoff_min_s", "uplink.backoff_max_s": "backoff_max_s"}


class RingLogHandler(logging.Handler):
    """Keeps the last ``capacity`` log lines (one line each, no tracebacks) for the console's ``log``."""

    def __init__(self, capacity=500, level=logging.INFO):
        super().__init__(level)
        self.lines = collections.deque(maxlen=capacity)

    def emit(self, record):
        try:
            message = record.getMessage().splitlines()[0] if record.msg else ""
        except (TypeError, ValueError, IndexError):
            message = str(record.msg)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        self.lines.append("%s %s %s: %s" % (stamp, record.levelname[:4], record.name, redact_text(message)))

    def tail(self, n):
        return list(self.lines)[-n:]


class AgentView(GatewayView):
    def __init__(self, agent, board, config_path=None, ring=None, request_restart=None, probe_timeout=5.0,
                 console_port=None):
        self.agent = agent
        self.console_port = console_port  # the console's own tty: no source may take it
        self.board = board
        self.config_path = config_path
        self.ring = ring
        self.request_restart = request_restart
        self.probe_timeout = probe_timeout
        self.lock = None  # set by the server, so console.idle_lock_s applies live

    # -- read-only -------------------------------------------------------------------------------------------
    def version(self):
        return __version__

    def gateway_id(self):
        return self.agent.gw

    def now(self):
        return self.agent.clock.monotonic()

    def status(self):
        st = self.agent.status()
        for key in ("uplink", "last_error"):
            if isinstance(st.get(key), str):
                st[key] = redact_text(st[key])
        st["version"] = __version__
        st["wall"] = self.agent.clock.wall()
        rejected = self.agent.last_rejection  # (status, reason, wall) kept by gateway.app.delivery
        if rejected is not None:
            st["last_rejection"] = {"status": rejected[0], "reason": redact_text(rejected[1]), "wall": rejected[2]}
        return st

    def sensor_rows(self):
        return self.board.rows()

    def sensor_latest(self, sensor):
        return self.board.latest(sensor)

    def sensor_recent(self, sensor, n):
        return self.board.recent(sensor, n)

    def alarms(self):
        rules = self.agent.rules
        if rules is None or not hasattr(rules, "active_alarms"):
            return None
        return rules.active_alarms()

    def log_lines(self, n):
        return self.ring.tail(n) if self.ring is not None else []

    def keys(self):
        public = self.agent.pipeline.signer.key.public
        return {"kid": self.agent.kid, "alg": "%s (%s)" % (SIGNING.cose_name, SIGNING.name),
                "fingerprint": keys.fingerprint(public), "x": keys.public_jwk(public)["x"]}

    def commands(self):
        downlink = self.agent.downlink
        if downlink is None:
            return None
        counters = {k[len("downlink."):]: v for k, v in self.agent.counters.items() if k.startswith("downlink.")}
        return [dict(e) for e in downlink.recent], counters

    def config_data(self):
        if not self.config_path:
            raise ConfigError("this agent runs without a config file (demo): nothing to show or change")
        try:
            with open(self.config_path, "rb") as f:
                return tomllib.load(f)
        except OSError as exc:
            raise ConfigError("cannot read: %s" % exc.strerror, self.config_path) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("not valid TOML: %s" % exc, self.config_path) from exc

    # -- blocking ------------------------------------------------------------------------------------------
    def uplink_test(self):
        """The uplink's own round trip (``Uplink.probe``, shared with doctor) as the console's ``Probe``."""
        found = self.agent.uplink.probe(self.probe_timeout, self.agent.clock.monotonic)
        return Probe(found.ok, found.latency_s, found.message)

    def persist(self, raw):
        """Write ``raw`` (a plain dict) as the config file, atomically; the old file stays as ``FILE.bak``."""
        path = self.config_path
        mode = os.stat(path).st_mode & 0o777
        with open(path, "rb") as f:
            old = f.read()
        write_atomic(path + ".bak", old.decode("utf-8", "replace"), mode)
        write_atomic(path, to_toml(raw), mode)

    def config_set(self, key, text):
        raw = self.config_data()
        new, value = settings.set_key(raw, key, text, self.config_path)
        self.persist(new)
        shown = settings.REDACTED if settings.is_secret(key) else value
        if key in settings.LIVE_KEYS:
            self._apply_live(key, value)
            return "saved %s = %s; applied now" % (key, shown)
        return "saved %s = %s; takes effect after 'restart'" % (key, shown)

    def _apply_live(self, key, value):
        """Runs on the console's worker thread: the agent's settings change on its own loop (``Agent.configure``)."""
        if key in AGENT_LIVE:
            self.agent.configure(**{AGENT_LIVE[key]: value})
        elif key == "gateway.log_level":
            logging.getLogger().setLevel(value.upper())
        elif key == "console.idle_lock_s" and self.lock is not None:
            self.lock.idle_lock_s = value
        log.info("console: %s applied live", key)

    def sensor_add(self, name, kind, params):
        raw = self.config_data()
        new, spec = settings.add_source(raw, name, kind, params, self.config_path)
        index = len(new["sources"]) - 1
        if "port" in spec:
            busy = {str(s.get("port")): "source %r" % s.get("name") for s in raw.get("sources", []) if s.get("port")}
            for port in (self.console_port, raw.get("console", {}).get("port")):
                if port:
                    busy[str(port)] = "the console"
            _check_port(str(spec["port"]), busy, self.config_path, "sources[%d].port" % index)
        _check_source(spec, self.agent.clock, self.config_path, index)
        self.persist(new)
        return "added source %s (%s); takes effect after 'restart'" % (name, kind)

    def sensor_remove(self, name):
        new = settings.remove_source(self.config_data(), name, self.config_path)
        self.persist(new)
        return "removed source %s; takes effect after 'restart'" % name

    def store_dump(self, path):
        if not os.path.isabs(path):
            raise ValueError("give an absolute path, e.g. /media/usb/queue.cbor")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            queued, quarantined = self.agent.store.dump(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        return "wrote %d batches (%d bytes) to %s: %d queued, %d quarantined; the queue is unchanged" % (
            queued + quarantined, size, path, queued, quarantined)

    def store_requeue(self):
        n = self.agent.store.requeue_quarantined()
        return "put %d quarantined batches back in the queue" % n if n else "nothing is quarantined"

    def update(self, path):
        from gateway.app.config import load
        from gateway.app.update_agent import stage
        if not self.config_path:
            raise ValueError("no config file: updates need one (update.base, the operator keys)")
        if not os.path.isabs(path):
            raise ValueError("give an absolute path, e.g. /media/usb/edge-gateway-0.2.0.bundle")
        return stage(load(self.config_path), path)

    def restart(self):
        if self.request_restart is None:
            raise ValueError("restart is not available here")
        self.request_restart()
        return "restarting: the agent stops now and systemd starts it again"


def _check_port(port, busy, file, key):
    """Refuse a port that is missing, not a serial device, or already taken (``busy``: port -> who uses it),
    without opening it (opening a serial port can reset the device behind it)."""
    try:
        st = os.stat(port)
    except FileNotFoundError:
        raise ConfigError("no device %s (unplugged? stable names: /dev/edge-gateway/)" % port,
                          file, key) from None
    except OSError as exc:
        raise ConfigError("cannot check %s: %s" % (port, exc.strerror), file, key) from exc
    if not stat.S_ISCHR(st.st_mode):
        raise ConfigError("%s is not a serial device (not a character device)" % port, file, key)
    sysfs = "/sys/dev/char/%d:%d/subsystem" % (os.major(st.st_rdev), os.minor(st.st_rdev))
    if os.path.exists(sysfs) and os.path.basename(os.path.realpath(sysfs)) != "tty":  # pty slaves have no entry
        raise ConfigError("%s is not a serial device (a %s device)" % (
            port, os.path.basename(os.path.realpath(sysfs))), file, key)
    real = os.path.realpath(port)
    for other, who in busy.items():
        if other == port or os.path.realpath(other) == real:
            raise ConfigError("%s is already used by %s" % (port, who), file, key)


def _check_source(spec, clock, file, index):
    """Build (not start) the source, so a spec that would stop the agent at the next start is refused now."""
    from drivers.sources import build_source
    try:
        build_source(spec, clock, file, index)
    except ImportError as exc:
        raise ConfigError("source type %r is not available on this gateway (%s)" % (spec.get("type"), exc.name),
                          file, "sources[%d].type" % index) from exc
