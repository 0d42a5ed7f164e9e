"""Issue 13 ("Nothing lost, nobody in"), the config / console / installer layer: PIN lockout that survives
restarts, a bounded audit trail, no URL secret on any surface, plain-text uplinks called out, config numbers that
cannot crash the agent (exit 78, not restarted). The first-boot scrub is in ``test_deploy.py``."""

import argparse
import io
import json
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import threading
import types

import pytest

from gateway.app import doctor
from gateway.adapters import keys
from tools import provision
from gateway.core.clock import FakeClock
from gateway.app.config import load, to_toml
from gateway.app.console import command as console_command
from gateway.app.console import serve as console_serve
from gateway.app.console.auth import AuditLog, LockState, PinLock, hash_pin
from gateway.app.console.commands import Console, run_sync
from gateway.app.console.protocol import Line
from gateway.app.console.view import RingLogHandler
from gateway.core.redact import is_loopback, plaintext_uplink, redact_text, redact_url

from tests.support.fake_view import FakeView

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EG = [sys.executable, "-m", "gateway.cli"]
PIN = "808080"
PIN_HASH = hash_pin(PIN, salt=b"0123456789abcdef", n=1 << 10)
SECRET_URL = "https://gw07:hunter2@ingest.example/v1/batches?tenant=plant3&token=s3cr3t&api_key=k3y"

pytestmark = pytest.mark.timeout(120)


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -- finding 6: the console PIN ---------------------------------------------------------------------------------
def fail(lock, clock, n):
    for _ in range(n):
        assert not lock.attempt("000000").ok
        clock.advance(lock.wait_s())


def test_lockout_survives_a_restart_and_a_power_cycle(tmp_path):
    path = str(tmp_path / "console-lock.json")
    clock = FakeClock(mono=1000.0)
    lock = PinLock(PIN_HASH, clock, state=LockState(path))
    fail(lock, clock, 4)
    assert "locked out for 15 min" in lock.attempt("000000").message
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # Power cycle: a new process, and the monotonic clock starts again near zero.
    booted = FakeClock(mono=12.0)
    again = PinLock(PIN_HASH, booted, state=LockState(path))
    refused = again.attempt(PIN)
    assert not refused.ok and not refused.checked and "locked out after 5 failed PINs" in refused.message
    assert again.wait_s() == 900.0  # the whole wait is left: a restart never shortens a lockout
    booted.advance(900.0)
    assert again.attempt(PIN).ok
    assert json.load(open(path)) == {"failures": 0, "locked_out": False, "wait_s": 0.0}
    assert PinLock(PIN_HASH, FakeClock(), state=LockState(path)).attempt(PIN).ok


def test_backoff_count_survives_a_restart(tmp_path):
    path = str(tmp_path / "console-lock.json")
    clock = FakeClock()
    fail(PinLock(PIN_HASH, clock, state=LockState(path)), clock, 3)
    lock = PinLock(PIN_HASH, FakeClock(mono=5.0), state=LockState(path))
    assert lock.failures == 3 and lock.wait_s() == 4.0
    lock.clock.advance(4.0)
    assert "wrong PIN (4 of 5)" in lock.attempt("111111").message


@pytest.mark.parametrize("content", [b"{not json", b'{"failures": -1, "locked_out": false, "wait_s": 0}',
                                     b'{"failures": 1}', b"\xff\xfe"])
def test_unreadable_lock_state_fails_closed(tmp_path, content):
    path = tmp_path / "console-lock.json"
    path.write_bytes(content)
    lock = PinLock(PIN_HASH, FakeClock(), lockout_s=900.0, state=LockState(str(path)))
    assert lock.locked_out and lock.wait_s() == 900.0 and not lock.attempt(PIN).ok


def test_console_keeps_lock_state_and_audit_beside_the_agent_state(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(to_toml({"gateway": {"state_dir": str(tmp_path / "state")},
                            "console": {"pin_hash": PIN_HASH}}))
    agent = types.SimpleNamespace(clock=FakeClock(), observers=[])
    server = console_serve.build_console(agent, "/dev/null", str(cfg))
    console = server.console
    assert console.lock.state.path == str(tmp_path / "state" / "console-lock.json")
    assert console.audit.path == str(tmp_path / "state" / "console-audit.log")
    server.executor.shutdown()


def test_audit_file_is_capped_with_one_rotated_file(tmp_path):
    path = tmp_path / "audit.log"
    clock = FakeClock()
    audit = AuditLog(clock, str(path), max_bytes=2000)
    for i in range(300):
        audit.record("config set batch.max_age_s %d" % i, "ok: saved")  # successes: every one written
    assert path.stat().st_size <= 2000 and (tmp_path / "audit.log.1").stat().st_size <= 2000
    assert not (tmp_path / "audit.log.2").exists() and audit.rotations > 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().splitlines()[-1].endswith("batch.max_age_s 299 -> ok: saved")


def test_wrong_pin_flood_is_counted_not_written(tmp_path):
    path = tmp_path / "audit.log"
    clock = FakeClock()
    audit = AuditLog(clock, str(path))
    console = Console(FakeView(clock), PinLock(PIN_HASH, clock), audit)
    for _ in range(1500):  # what a script on the cable does: 1,574 lines in 3 s before
        run_sync(console.handle(Line("unlock 000000")))
    lines = path.read_text().splitlines()
    assert len(lines) <= 3, lines
    assert "wrong PIN (1 of 5)" in lines[0] and "refused unchecked: too soon" in lines[1]
    clock.advance(61.0)
    run_sync(console.handle(Line("unlock 000000")))
    lines = path.read_text().splitlines()
    assert "(previous line repeated 1498 times)" in lines[2] and "wrong PIN (2 of 5)" in lines[3]
    assert audit.suppressed == 1498


@pytest.mark.parametrize("pin", ["4711", "12345"])
def test_short_pins_are_refused_where_a_pin_is_set(tmp_path, pin):
    with pytest.raises(ValueError, match="at least 6"):
        hash_pin(pin)
    cfg = tmp_path / "config.toml"
    cfg.write_text('[gateway]\nid = "gw-1"\n')
    err = io.StringIO()
    args = argparse.Namespace(set_pin=True, config=str(cfg), port=None)
    old, sys.stderr = sys.stderr, err
    try:
        rc = console_command.cmd_console(args, stdin=io.StringIO("%s\n%s\n" % (pin, pin)), out=io.StringIO())
    finally:
        sys.stderr = old
    assert rc == 2 and "at least 6" in err.getvalue() and "pin_hash" not in cfg.read_text()
    proc = subprocess.run(EG + ["provision", "--gateway-id", "gw-p", "--uplink", "https://x.example/", "--pin", pin,
                                "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert proc.returncode == 2 and "--pin refused" in proc.stderr and "at least 6" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out" / "gw-p").exists()


# -- finding 7: secrets in URLs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("url,shown", [
    ("https://u:pw@h.example:8443/p?a=1&token=t#f", "https://u:<redacted>@h.example:8443/p?a=1&token=<redacted>#f"),
    ("http://tok3n@h/x", "http://<redacted>@h/x"),
    ("https://h/x?key=1&keepalive=5&password=&Signature=abc",
     "https://h/x?key=<redacted>&keepalive=5&password=&Signature=<redacted>"),
    ("mqtts://user:p%40ss@broker:8883/plant", "mqtts://user:<redacted>@broker:8883/plant"),
    ("https://ingest.example/v1/batches", "https://ingest.example/v1/batches"),
    ("https://h/a@b?x=1", "https://h/a@b?x=1"),  # an @ in the path is not userinfo
    ("not a url", "not a url"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert redact_text("cannot reach %s: refused" % url) == "cannot reach %s: refused" % shown


def test_console_status_config_show_log_and_audit_redact_urls():
    clock = FakeClock()
    view = FakeView(clock)
    view.config["uplink"]["url"] = SECRET_URL
    status = view.status

    def secret_status():
        st = status()
        st["uplink"], st["last_error"] = SECRET_URL, "cannot reach %s: timed out" % SECRET_URL
        return st
    view.status = secret_status
    console = Console(view, PinLock(PIN_HASH, clock), AuditLog(clock))
    ring = RingLogHandler()
    import logging
    ring.handle(logging.LogRecord("gateway.app.agent", logging.INFO, __file__, 1, "agent starting, uplink %s",
                                  (SECRET_URL,), None))
    view.log_lines = ring.tail
    shown = {}
    for command in ("status", "config show", "config show uplink", "log"):
        shown[command] = "\n".join(run_sync(console.handle(Line(command))).lines)
    run_sync(console.handle(Line("unlock " + PIN)))
    shown["set"] = "\n".join(run_sync(console.handle(Line("config set uplink.url " + SECRET_URL))).lines)
    shown["audit"] = "\n".join(console.audit.entries)
    for where, text in shown.items():
        for secret in ("hunter2", "s3cr3t", "k3y"):
            assert secret not in text, (where, text)
    flat = {where: "".join(text.split()) for where, text in shown.items()}  # long lines wrap at 79 columns
    assert "gw07:<redacted>@ingest.example" in flat["status"]
    assert "tenant=plant3&token=<redacted>&api_key=<redacted>" in flat["config show"]
    assert "<redacted>" in shown["log"] and "<redacted>" in shown["audit"]
    assert view.config["uplink"]["url"] == SECRET_URL  # what is saved is the real URL


def test_doctor_lines_redact_urls(tmp_path):
    port = closed_port()
    cfg = tmp_path / "config.toml"
    url = "http://gw07:hunter2@127.0.0.1:%d/v1/batches?token=s3cr3t" % port
    cfg.write_text(to_toml({"gateway": {"state_dir": str(tmp_path)}, "uplink": {"url": url, "timeout_s": 2.0}}))
    c = load(str(cfg))
    lines = [doctor.check_uplink(c).line(), doctor.check_transport(c).line()]
    text = "\n".join(lines)
    assert "hunter2" not in text and "s3cr3t" not in text and "gw07:<redacted>@127.0.0.1" in text
    bad = tmp_path / "bad.toml"
    bad.write_text('[uplink]\nurl = "ftp://gw07:hunter2@x.example/"\n')
    rc, out = run_doctor(str(bad), quick=True)
    assert rc == 1 and "hunter2" not in "\n".join(out) and out[0].startswith("FAIL config")


def test_provision_output_redacts_urls(tmp_path):
    out = str(tmp_path / "out")
    proc = subprocess.run(EG + ["provision", "--gateway-id", "gw-r", "--uplink", "ftp://gw07:hunter2@x.example/?token=s3cr3t",
                                "--out", out], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and "uplink.url" in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout and "s3cr3t" not in proc.stderr
    proc = subprocess.run(EG + ["provision", "--gateway-id", "gw-m", "--mqtt", "mqtt://gw07:hunter2@:x/p",
                                "--out", out], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and "hunter2" not in proc.stderr + proc.stdout
    proc = subprocess.run(EG + ["provision", "--gateway-id", "gw-h", "--uplink", SECRET_URL.replace("https", "http"),
                                "--out", out], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for secret in ("hunter2", "s3cr3t", "k3y"):
        assert secret not in proc.stderr + proc.stdout
    # The config keeps the real URL (the agent needs it), readable by its owner only.
    assert load(json.loads(proc.stdout)["config"]).uplink.url == SECRET_URL.replace("https", "http")


def test_provision_keeps_the_mqtt_password_from_the_url(tmp_path):
    section = provision.mqtt_section("mqtts://gw07:p%40ss@broker.example:8883/plant")
    assert section["username"] == "gw07" and section["password"] == "p@ss" and section["tls"] is True


# -- finding 8: plain-text uplinks ------------------------------------------------------------------------------
@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True),
                                       ("localhost", True), ("LocalHost.", True), ("10.0.0.1", False),
                                       ("ingest.example", False), ("localhost.example", False), ("", False)])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


@pytest.mark.parametrize("uplink,status", [
    ({"url": "http://ingest.example/v1"}, "WARN"),
    ({"url": "http://10.1.2.3:8080/v1"}, "WARN"),
    ({"url": "https://ingest.example/v1"}, "PASS"),
    ({"url": "http://127.0.0.1:8080/v1"}, "PASS"),
    ({"url": "http://localhost:8080/v1"}, "PASS"),
    ({"url": "http://[::1]:8080/v1"}, "PASS"),
    ({"kind": "mqtt", "mqtt": {"host": "broker.example"}}, "WARN"),
    ({"kind": "mqtt", "mqtt": {"host": "broker.example", "tls": True, "port": 8883}}, "PASS"),
    ({"kind": "mqtt", "mqtt": {"host": "127.0.0.1"}}, "PASS"),
])
def test_doctor_warns_on_plain_text_to_other_hosts(tmp_path, uplink, status):
    cfg = tmp_path / "config.toml"
    cfg.write_text(to_toml({"gateway": {"state_dir": str(tmp_path)}, "uplink": uplink}))
    rc, lines = run_doctor(str(cfg), quick=True)
    tls = [l for l in lines if l.split()[1:2] == ["tls"]][0]
    assert tls.startswith(status), tls
    if status == "WARN":
        assert "-> fix:" in tls and ("https://" in tls or "tls = true" in tls)


def test_provision_warns_on_plain_text(tmp_path):
    out = str(tmp_path / "out")
    for args, warned in ((["--uplink", "http://ingest.example/v1"], True),
                         (["--mqtt", "mqtt://broker.example:1883/p"], True),
                         (["--uplink", "https://ingest.example/v1"], False),
                         (["--uplink", "http://127.0.0.1:8080/v1"], False)):
        proc = subprocess.run(EG + ["provision", "--gateway-id", "gw-w", "--out", out] + args, capture_output=True,
                              text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert ("WARNING" in proc.stderr) is warned, (args, proc.stderr)
        if warned:
            assert "https://" in proc.stderr or "mqtts://" in proc.stderr


def test_agent_logs_plain_text_warning_and_no_url_secret(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    keys.write_private(str(state / "key.pem"), keys.SigningKey.generate())
    url = "http://gw07:hunter2@192.0.2.1:9/v1/batches?token=s3cr3t"  # TEST-NET-1: never answers; no batch is sent
    cfg = tmp_path / "config.toml"
    cfg.write_text(to_toml({"gateway": {"id": "gw-log", "state_dir": str(state), "log_level": "info"},
                            "uplink": {"url": url}, "clock": {"mode": "synced"}}))
    agent = subprocess.Popen(EG + ["run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in agent.stderr], daemon=True).start()
    seen = []
    try:
        while not (any("starting" in l for l in seen) and any("WARNING" in l for l in seen)):
            seen.append(lines.get(timeout=30))
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    text = "".join(seen)
    assert "hunter2" not in text and "s3cr3t" not in text, text
    warning = [l for l in seen if "WARNING" in l][0]
    assert "plain HTTP to 192.0.2.1" in warning and "use https://" in warning
    assert "gw07:<redacted>@192.0.2.1:9" in text


# -- finding 11: numbers, and the exit status systemd does not restart ------------------------------------------
def run_doctor(cfg, quick=False):
    parser = argparse.ArgumentParser()
    doctor.register(parser.add_subparsers(dest="command"))
    out = io.StringIO()
    rc = doctor.cmd_doctor(parser.parse_args(["doctor", "--config", cfg] + (["--quick"] if quick else [])), out)
    return rc, out.getvalue().splitlines()


@pytest.mark.parametrize("text,key", [("[batch]\ntime_quantum_s = nan\n", "batch.time_quantum_s"),
                                      ("[uplink]\ntimeout_s = inf\n", "uplink.timeout_s"),
                                      ("[batch]\ntime_quantum_s = 1e-300\n", "batch.time_quantum_s")])
def test_bad_numbers_exit_78_naming_the_key_and_fail_doctor(tmp_path, text, key):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    proc = subprocess.run(EG + ["run", "--config", str(cfg)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 78, proc.stderr
    assert "%s: %s:" % (cfg, key) in proc.stderr and "Traceback" not in proc.stderr
    rc, lines = run_doctor(str(cfg), quick=True)
    assert rc == 1 and lines[0].startswith("FAIL config") and key in lines[0]


def test_bad_url_exits_78_without_its_secret(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[uplink]\nurl = "ftp://gw07:hunter2@x.example/"\n')
    proc = subprocess.run(EG + ["run", "--config", str(cfg)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 78 and "uplink.url" in proc.stderr and "hunter2" not in proc.stderr


def test_doctor_warns_when_the_config_with_secrets_is_readable_by_others(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(to_toml({"gateway": {"state_dir": str(tmp_path)}, "uplink": {"url": "https://x.example/"},
                            "console": {"pin_hash": PIN_HASH}}))
    os.chmod(cfg, 0o644)
    rc, lines = run_doctor(str(cfg), quick=True)
    warn = [l for l in lines if l.startswith("WARN secrets")]
    assert warn and "console.pin_hash" in warn[0] and "chmod 600" in warn[0] and PIN_HASH not in warn[0]
    os.chmod(cfg, 0o600)
    assert not any("secrets" in l for l in run_doctor(str(cfg), quick=True)[1])


def test_plaintext_uplink_is_pure():
    assert plaintext_uplink("http", url="https://x.example/") is None
    assert plaintext_uplink("http", url="http://[bad") is None  # not a URL: the config check reports it
    assert "tls = true" in plaintext_uplink("mqtt", host="broker.example")
