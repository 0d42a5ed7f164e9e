"""``edge-gateway doctor [--config FILE] [--quick]``: the on-site self-check.

One line per check, ``PASS``/``WARN``/``FAIL``, each WARN and FAIL with a fix hint; the exit code is 1 if any
check FAILs (WARN alone exits 0). ``--quick`` runs only the checks that need no network and no hardware (config,
key, transport); ``upgrade.sh`` gates a new virtualenv on it. URLs are shown with their credentials redacted
(``gateway.core.redact``), in every line.

Checks: config valid (any config error is a FAIL: the agent would exit 78 and systemd would not restart it); key
present, 0600 and owned by the running user; the running and previous versions and the last update (a WARN while a
new version is on trial or after a rollback); a config holding the PIN hash or a broker password readable by
others (WARN); transport (a WARN when the uplink is plain text (``http://`` or MQTT
without TLS) to a host other than this machine); clock synchronised (kernel adjtimex);
the state directory is writable (a probe file is written, fsynced and removed there, as the store and the
boot epoch will); free disk for the store bound; serial ports (sources and ``[[actuators]]`` boards) present and
read/write; BLE adapter present and powered (BlueZ over
D-Bus, ``org.bluez.Adapter1.Powered``; only a WARN when no BLE source is configured); uplink reachable with a
valid TLS certificate (HTTP: an ``OPTIONS`` request to the batch URL, which a batch endpoint answers 2xx and a
wrong path 404, a FAIL; MQTT: TCP and, with ``tls``, a verified TLS handshake); with ``[homeassistant]`` on, its
broker likewise (a password in clear to another host is a WARN); with ``[metrics] listen``, the port free to bind
or served by this gateway's running agent (in use by another program is a FAIL). With ``[downlink] operators``:
the operator trust store (present, a JWK Set of valid public Ed25519 keys, none bound to a gateway with ``gw``,
not writable by group or others, since whoever can write it can command the gateway), the applied-sequence state
readable, and no uplink check left pending (``downlink-check.json``).
"""

import asyncio
import errno
import http.client
import os
import shutil
import socket
import stat
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass

from gateway.adapters import keys
from gateway.core.clock import kernel_clock_synced
from gateway.app.config import load, parse_listen
from gateway.core.errors import ConfigError, KeyFileError
from gateway.adapters.uplink import FAIL as PROBE_FAIL, OK as PROBE_OK, SectionError, build_uplink, uplink_class
from gateway.core.redact import is_loopback, redact_text

DEFAULT_CONFIG = "/etc/edge-gateway/config.toml"
PASS, WARN, FAIL = "PASS", "WARN", "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    status: str
    name: str
    detail: str
    fix: str = ""

    def line(self):
        text = "%s %-8s %s" % (self.status, self.name, self.detail)
        return redact_text(text + ("  -> fix: " + self.fix if self.fix and self.status != PASS else ""))


def check_key(cfg):
    path = cfg.state_path(cfg.gateway.key)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Check(FAIL, "key", "%s does not exist" % path,
                     "copy the provisioned key.pem there (mode 0600), or run 'edge-gateway provision'")
    except OSError as exc:
        return Check(FAIL, "key", "cannot stat %s: %s" % (path, exc.strerror),
                     "run doctor as the service user: sudo -u edge-gateway edge-gateway doctor")
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o600:
        return Check(FAIL, "key", "%s has mode %04o, must be 0600" % (path, mode), "chmod 600 %s" % path)
    if st.st_uid != os.geteuid():
        return Check(FAIL, "key", "%s is owned by uid %d, not by this user (uid %d)" % (path, st.st_uid,
                                                                                       os.geteuid()),
                     "chown edge-gateway: %s (and run doctor as the service user)" % path)
    try:
        key = keys.load_private(path)
    except KeyFileError as exc:
        return Check(FAIL, "key", str(exc), "re-copy the key from the provisioning bundle")
    return Check(PASS, "key", "%s (kid %s, %s)" % (path, key.kid, keys.fingerprint(key.public)))


def check_config_mode(cfg):
    """The config holds the PIN hash and broker passwords: nobody but its owner should read it."""
    ha = cfg.homeassistant.broker if cfg.homeassistant is not None and cfg.homeassistant.enabled else ""
    secrets = [k for k, v in (("console.pin_hash", cfg.console.pin_hash), ("uplink.mqtt.password",
                                                                          cfg.uplink.mqtt.password),
                              ("the homeassistant.broker password", urllib.parse.urlsplit(ha).password)) if v]
    try:
        mode = stat.S_IMODE(os.stat(cfg.file).st_mode)
    except (OSError, TypeError):
        return None
    if secrets and mode & 0o077:
        return Check(WARN, "secrets", "%s has mode %04o and holds %s" % (cfg.file, mode, " and ".join(secrets)),
                     "chmod 600 %s (owned by the service user)" % cfg.file)
    return None


#: an uplink ``Probe`` status -> a doctor line status
_PROBE_STATUS = {PROBE_OK: PASS, PROBE_FAIL: FAIL}


def _from_probe(name, probe):
    return Check(_PROBE_STATUS.get(probe.status, WARN), name, probe.message, probe.fix)


def check_update(cfg):
    """Offline: the running version, the previous one and the last update (gateway/app/update_agent.py)."""
    from gateway.adapters.versions import Layout
    from gateway.app.update_agent import summary
    layout = Layout(cfg.update.base, cfg.gateway.state_dir)
    info = summary(layout)
    if not layout.installed():
        return Check(PASS, "update", "running %s (no installed versions under %s: updates need install.sh's "
                     "layout)" % (info["running"], layout.base))
    detail = "running %s, previous %s, last: %s" % (info["running"], info["previous"] or "none",
                                                    info["last"] or "none")
    if info["on_trial"] and not info["proven"]:
        return Check(WARN, "update", detail + " (ON TRIAL)", "it must deliver a batch within update.prove_s, or "
                     "the previous version comes back at the next start")
    if (layout.outcome() or {}).get("outcome") in ("rolled_back", "failed", "refused"):
        return Check(WARN, "update", detail, "see docs/operations.md, \"Updating gateways\"")
    return Check(PASS, "update", detail)


def check_transport(cfg):
    """Offline: the uplink's own ``transport`` check (plain text to a host off this machine is a WARN)."""
    return _from_probe("tls", uplink_class(cfg.uplink.kind).transport(cfg.uplink))


def check_clock(synced=None):
    synced = kernel_clock_synced() if synced is None else synced
    if synced:
        return Check(PASS, "clock", "kernel reports the clock synchronised")
    detail = "kernel cannot tell" if synced is None else "not synchronised (batches are flagged clock=false)"
    return Check(WARN, "clock", detail, "check NTP: timedatectl timesync-status; allow UDP 123 out")


def check_state_dir(cfg):
    """Write, fsync and remove a file in ``gateway.state_dir``, and check the queue's files are writable: what the
    agent does at start (a state directory it cannot write makes ``run`` exit 2)."""
    state = cfg.gateway.state_dir
    fix = ("make it the service user's: chown -R edge-gateway: %s; chmod 700 %s (and check that its file system "
           "is mounted read-write: findmnt -T %s)" % (state, state, state))
    if not os.path.isdir(state):
        return Check(FAIL, "state", "%s does not exist or is not a directory" % state,
                     "install.sh creates it; or: mkdir -m 700 %s; chown edge-gateway: %s" % (state, state))
    try:
        fd, probe = tempfile.mkstemp(prefix=".doctor-probe-", dir=state)
        try:
            os.write(fd, b"edge-gateway doctor\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return Check(FAIL, "state", "cannot write in %s: %s" % (state, exc.strerror or exc), fix)
    store = cfg.state_path(cfg.store.path)
    locked = [store + s for s in ("", "-wal", "-shm") if os.path.exists(store + s)
              and not os.access(store + s, os.R_OK | os.W_OK)]
    if locked:
        return Check(FAIL, "state", "%s is not readable and writable by this user" % ", ".join(locked), fix)
    return Check(PASS, "state", "%s is writable" % state)


def check_disk(cfg):
    state = cfg.gateway.state_dir
    probe = state
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    store = cfg.state_path(cfg.store.path)
    used = sum(os.path.getsize(store + s) for s in ("", "-wal", "-shm") if os.path.exists(store + s))
    free = shutil.disk_usage(probe).free
    need = max(cfg.store.max_bytes - used, 0)
    detail = "%d MiB free on %s, store bound %d MiB (%d MiB used)" % (free >> 20, probe, cfg.store.max_bytes >> 20,
                                                                      used >> 20)
    if free < need:
        return Check(FAIL, "disk", detail, "free space or lower store.max_bytes below %d" % (free + used))
    if free < need * 2:
        return Check(WARN, "disk", detail, "less than twice the bound free; logs and upgrades need room too")
    return Check(PASS, "disk", detail)


def _port(check, name, port):
    """A serial port the agent opens: present, and readable and writable by this user. Not opened here: opening a
    tty raises DTR, which resets many boards (an actuator board would switch its relay off)."""
    if not port or not os.path.exists(port):
        return Check(FAIL, check, "%s: %s does not exist" % (name, port or "(no port)"),
                     "plug the adapter in; list names with: ls -l /dev/edge-gateway/ /dev/serial/by-id/")
    if not os.access(port, os.R_OK | os.W_OK):
        return Check(FAIL, check, "%s: %s is not readable and writable" % (name, port),
                     "add the service user to the dialout group, or check the udev rule's GROUP/MODE")
    return Check(PASS, check, "%s: %s" % (name, os.path.realpath(port)))


def check_serial(cfg):
    return [_port("serial", src.get("name") or "serial%d" % i, src.get("port", ""))
            for i, src in enumerate(cfg.sources) if src.get("type") == "serial"]


def check_actuators(cfg):
    """Each ``[[actuators]]`` board's port, as the serial sources' (a board the agent cannot open is dead at once)."""
    return [_port("actuator", board.name, board.port) for board in cfg.actuator_configs]


async def _bluez_adapters(timeout):
    from dbus_fast import BusType, Message
    from dbus_fast.aio import MessageBus
    bus = await asyncio.wait_for(MessageBus(bus_type=BusType.SYSTEM).connect(), timeout)
    try:
        reply = await asyncio.wait_for(bus.call(Message(
            destination="org.bluez", path="/", interface="org.freedesktop.DBus.ObjectManager",
            member="GetManagedObjects")), timeout)
    finally:
        bus.disconnect()
    if reply.message_type.name == "ERROR":
        raise OSError(reply.error_name or "D-Bus error")
    adapters = {}
    for path, ifaces in reply.body[0].items():
        if "org.bluez.Adapter1" in ifaces:
            adapters[path] = bool(ifaces["org.bluez.Adapter1"].get("Powered").value)
    return adapters


def check_ble(cfg, timeout=3.0):
    wanted = [s for s in cfg.sources if s.get("type") in ("ble", "gatt")]
    bad = FAIL if wanted else WARN
    try:
        adapters = asyncio.run(_bluez_adapters(timeout))
    except ImportError:
        return Check(bad, "ble", "dbus-fast is not installed", "reinstall: it comes with bleak")
    except (OSError, asyncio.TimeoutError, ValueError, EOFError) as exc:
        return Check(bad, "ble", "BlueZ not reachable on the system D-Bus (%s)" % (exc or type(exc).__name__),
                     "systemctl start bluetooth; check the adapter: bluetoothctl list"
                     + ("" if wanted else " (no BLE sources configured, so this is only a warning)"))
    if not adapters:
        return Check(bad, "ble", "BlueZ runs but has no adapter", "check rfkill list; dmesg | grep -i blue")
    powered = [p.rsplit("/", 1)[-1] for p, on in sorted(adapters.items()) if on]
    if not powered:
        return Check(bad, "ble", "adapter %s present but powered off" % ", ".join(a.rsplit("/", 1)[-1]
                                                                                  for a in adapters),
                     "rfkill unblock bluetooth; bluetoothctl power on")
    return Check(PASS, "ble", "adapter %s powered" % ", ".join(powered)
                 + ("" if wanted else " (no BLE sources configured)"))


def check_uplink(cfg):
    """The uplink's own round trip (``Uplink.probe``), the same one the console's ``uplink test`` makes."""
    try:
        uplink = build_uplink(cfg.uplink)
    except SectionError as exc:
        return Check(FAIL, "uplink", "%s %s" % (exc.key, exc), "set %s in the config" % exc.key)
    except (ValueError, OSError) as exc:
        return Check(FAIL, "uplink", "cannot build the %s uplink: %s" % (cfg.uplink.kind, exc),
                     "fix the [uplink] section (docs/configuration.md)")
    try:
        return _from_probe("uplink", uplink.probe(cfg.uplink.timeout_s))
    finally:
        uplink.close()


def check_homeassistant(cfg, timeout=3.0):
    """With ``[homeassistant] enabled``: its broker reachable (TCP, and a verified TLS handshake for ``mqtts://``),
    and its password not sent in clear to another machine. None when it is off."""
    section = cfg.homeassistant
    if section is None or not section.enabled:
        return None
    from gateway.adapters.uplink.mqtt import parse_url, probe_broker
    broker = parse_url(section.broker)
    probe = probe_broker(broker["host"], broker["port"], broker["tls"], timeout, (section.ca_file or None, None, None),
                         ca_key="homeassistant.ca_file")
    if probe.status != PROBE_OK:
        return Check(FAIL, "homeassistant", "%s (Home Assistant's broker)" % probe.message,
                     "%s; or fix homeassistant.broker" % probe.fix)
    if broker["password"] and not broker["tls"] and not is_loopback(broker["host"]):
        return Check(WARN, "homeassistant", "%s: the broker password travels in clear" % probe.message,
                     "use mqtts:// and the broker's TLS port (usually 8883) in homeassistant.broker")
    return Check(PASS, "homeassistant", "%s (Home Assistant's broker)" % probe.message)


def _serves_metrics(host, port, gw, timeout):
    """True when ``http://host:port/metrics`` is this gateway's running agent (its ``edge_gateway_build`` line)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        reply = conn.getresponse()
        body = reply.read(1 << 20).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
    return reply.status == 200 and any(line.startswith("edge_gateway_build_info{") and 'gw="%s"' % gw in line
                                       for line in body.splitlines())


def check_metrics(cfg, timeout=3.0):
    """``[metrics] listen``: an address of this machine and a port the agent can bind (at start, a port in use stops
    it with exit 78), unless this gateway's running agent already serves it. None when it is off."""
    if not cfg.metrics.listen:
        return None
    listen = cfg.metrics.listen
    host, port = parse_listen(listen)
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the agent's listener
                sock.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and _serves_metrics(host, port, cfg.gateway.id, timeout):
            return Check(PASS, "metrics", "%s: served by the running agent" % listen)
        if exc.errno == errno.EADDRINUSE:
            return Check(FAIL, "metrics", "%s is in use by another program: the agent would stop at start (exit 78)"
                         % listen, "choose a free port for metrics.listen, or stop what holds it (ss -ltnp "
                         "'sport = :%d')" % port)
        if exc.errno == errno.EACCES:
            return Check(FAIL, "metrics", "%s: port %d needs root" % (listen, port),
                         "use a port above 1023 in metrics.listen, e.g. 9108")
        return Check(FAIL, "metrics", "cannot listen on %s: %s" % (listen, exc.strerror or exc),
                     "use 127.0.0.1 or an address of this machine (ip -brief addr) in metrics.listen")
    return Check(PASS, "metrics", "%s free: GET /metrics is served there while the agent runs" % listen)


def check_operators(cfg):
    """The downlink's trust root (None when the downlink is off)."""
    path = cfg.downlink.operators
    if not path:
        return None
    from gateway.adapters.operators import SeqState, load_operators
    from gateway.app.uplink_check import marker_path
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Check(FAIL, "operators", "%s does not exist (downlink.operators)" % path,
                     "copy the operators' operator.jwks.json there, or empty downlink.operators")
    except OSError as exc:
        return Check(FAIL, "operators", "cannot stat %s: %s" % (path, exc.strerror), "check the path and its mode")
    if st.st_mode & 0o022:
        return Check(FAIL, "operators", "%s has mode %04o: whoever can write it can command this gateway"
                     % (path, st.st_mode & 0o777), "chmod 644 %s (owned by root)" % path)
    try:
        operators = load_operators(path)
        SeqState(cfg.state_path(cfg.downlink.state))
    except KeyFileError as exc:
        return Check(FAIL, "operators", str(exc), "fix the file (edge-gateway operator keygen writes a good one)")
    if not operators:
        return Check(WARN, "operators", "%s lists no key: every command will be refused" % path,
                     "add the operators' public keys, or empty downlink.operators")
    if os.path.exists(marker_path(cfg.gateway.state_dir)):
        return Check(WARN, "operators", "an uplink change from afar is being checked (%s): the next start restores "
                     "the previous config" % marker_path(cfg.gateway.state_dir), "wait for the check, or restart")
    return Check(PASS, "operators", "%s: %d operator key%s (%s)" % (path, len(operators), "" if len(operators) == 1
                                                                    else "s", ", ".join(k.decode() for k in
                                                                                        sorted(operators))))


def run_checks(config_path, quick=False):
    try:
        cfg = load(config_path)
    except ConfigError as exc:
        return [Check(FAIL, "config", str(exc), "fix the named key (docs/configuration.md)")]
    checks = [Check(PASS, "config", "%s valid (gateway %s)" % (config_path, cfg.gateway.id))]
    checks += [c for c in (check_config_mode(cfg),) if c] + [check_key(cfg), check_transport(cfg),
                                                              check_update(cfg)]
    checks += [c for c in (check_operators(cfg),) if c]
    if quick:
        return checks
    checks += [check_clock(), check_state_dir(cfg), check_disk(cfg)] + check_serial(cfg) + check_actuators(cfg)
    checks += [check_ble(cfg), check_uplink(cfg)]
    checks += [c for c in (check_homeassistant(cfg), check_metrics(cfg)) if c]
    return checks


def register(subparsers):
    p = subparsers.add_parser("doctor", help="check this gateway: config, key, clock, state directory, disk, serial "
                              "ports, actuator boards, BLE, uplink, Home Assistant's broker, metrics port")
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE", help="the config to check (default %s)"
                   % DEFAULT_CONFIG)
    p.add_argument("--quick", action="store_true", help="config, key, transport and versions only (no network, "
                   "no hardware)")
    p.set_defaults(func=cmd_doctor)
    return p


def cmd_doctor(args, out=None):
    out = out or sys.stdout
    checks = run_checks(args.config, args.quick)
    for c in checks:
        out.write(c.line() + "\n")
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    out.write("%s: %d checks, %d failed, %d warnings\n" % ("FAIL" if failed else "OK", len(checks), failed, warned))
    out.flush()
    return 1 if failed else 0
