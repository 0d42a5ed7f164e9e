"""`edge-gateway run` as a process, without systemd: readiness and watchdog keep-alives over sd_notify, and why the
previous run ended (clean, crash, SIGKILL, watchdog) reported upstream and logged at the next start.

The test plays systemd's part: it owns the NOTIFY_SOCKET (a unix datagram socket, abstract or a path), sets
WATCHDOG_USEC small, and for a watchdog kill sends SIGABRT (systemd's WatchdogSignal) and runs the unit's
ExecStopPost command (`edge-gateway record-stop`) with the variables systemd sets there. The agent writes its
batches to a directory uplink, whose files the test verifies with the gateway's key.

Faults the product has no switch for come from a launcher (``LAUNCHER``) that starts the same CLI after adding
them: SIGUSR2 blocks the event loop (the stall a watchdog exists for), or the tick task raises ValueError (a crash).
"""

import glob
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

from gateway.adapters import keys
from gateway.adapters.keys import TrustStore
from gateway.core.wire import verify
from tests.support import ROOT, wait_until

WATCHDOG_USEC = 200_000  # WatchdogSec=0.2s: keep-alives every 0.1 s
LAUNCHER = r"""
import asyncio, os, signal, socket, sys, time
from gateway.app.agent import Agent
from gateway.cli import main

fault = os.environ.get("TEST_FAULT", "")
original_run = Agent.run


async def run(self, stop, drain_timeout=0.0):
    if fault == "stall":
        def stall():
            address = os.environ["NOTIFY_SOCKET"]
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:  # tells the test the stall begins
                s.sendto(b"X-TEST-STALL=1", "\0" + address[1:] if address.startswith("@") else address)
            time.sleep(float(os.environ["TEST_STALL_S"]))  # the fault: the event loop does not come back
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, stall)
    return await original_run(self, stop, drain_timeout)


async def crash(self, period=0.2):
    await self.clock.sleep(period)
    raise ValueError("injected by the test")

Agent.run = run
if fault == "crash":
    Agent._tick_loop = crash
sys.exit(main(sys.argv[1:]))
"""


def no_core_dumps():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGABRT would leave a core file behind


class Gateway:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.state, self.spool = tmp_path / "state", tmp_path / "spool"
        self.state.mkdir()
        self.spool.mkdir()
        key = keys.SigningKey.generate()
        keys.write_private(str(self.state / "key.pem"), key)
        self.trust = TrustStore({"keys": [key.jwk("gw-wd")]})
        self.config = tmp_path / "config.toml"
        self.config.write_text('[gateway]\nid = "gw-wd"\nstate_dir = "%s"\n[batch]\nmax_age_s = 0.5\n[uplink]\n'
                               'kind = "directory"\nurl = "dir://%s"\n' % (self.state, self.spool))
        self.procs = []
        self.log = open(tmp_path / "agent.log", "ab")

    def start(self, fault="", **env):
        """The agent through the launcher; systemd's variables only as given (not inherited from this shell)."""
        base = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, "run", "--config", str(self.config)],
                                env=dict(base, TEST_FAULT=fault, **env), cwd=str(self.tmp),
                                stdout=subprocess.DEVNULL, stderr=self.log, preexec_fn=no_core_dumps)
        self.procs.append(proc)
        return proc

    def record_stop(self, **env):
        proc = subprocess.run([sys.executable, "-m", "gateway.cli", "record-stop", "--config", str(self.config)],
                              env=dict(os.environ, **env), capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr

    def last_stops(self):
        """``{boot: last_stop record name}`` over every batch delivered so far."""
        found = {}
        for path in glob.glob(str(self.spool / "*.cose")):
            with open(path, "rb") as f:
                batch = verify(f.read(), self.trust)
            for rec in batch.records:
                if "/health/last_stop." in rec["n"]:
                    assert rec["v"] == 1
                    found[batch.boot] = rec["n"].split("/health/", 1)[1]
        return found

    def run_until_reported(self, fault="", **env):
        """Start the agent and wait until its first batch, with its last_stop record, is delivered."""
        before = set(self.last_stops())
        proc = self.start(fault, **env)
        new = wait_until(lambda: set(self.last_stops()) - before or proc.poll() is not None, 20,
                         "the new run's last_stop record")
        assert new is not True and proc.poll() is None, (self.tmp / "agent.log").read_text()[-2000:]
        (boot,) = new
        return proc, self.last_stops()[boot]

    def stop(self, proc, sig=signal.SIGTERM):
        proc.send_signal(sig)
        return proc.wait(20)

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.log.close()


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(tmp_path)
    yield gw
    gw.close()


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket the agent sends ``KEY=VALUE`` messages to."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}

    def next(self, timeout):
        """The next message, or None when none came within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return None

    def expect(self, message, timeout=15.0):
        """Wait for ``message``; return the others seen before it."""
        deadline, seen = time.monotonic() + timeout, []
        while True:
            got = self.next(max(0.01, deadline - time.monotonic()))
            if got == message:
                return seen
            assert got is not None, "no %s within %.0f s; saw %s" % (message, timeout, seen)
            seen.append(got)

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("kind", ["abstract", "path"])
def test_ready_keepalives_stall_and_stopping(gateway, kind, tmp_path):
    address = "@edge-gateway-test-%d-%s" % (os.getpid(), kind) if kind == "abstract" else str(tmp_path / "notify")
    notify = NotifySocket(address)
    try:
        proc = gateway.start("stall", TEST_STALL_S="4.0", **notify.env)
        assert notify.expect("READY=1") == []  # nothing before readiness
        started = time.monotonic()
        for _ in range(10):  # every 0.1 s: ten take about 1 s (the bound leaves room for a loaded machine)
            assert notify.expect("WATCHDOG=1", timeout=2.0) == []
        assert time.monotonic() - started >= 0.8  # paced at half WATCHDOG_USEC, not a burst
        proc.send_signal(signal.SIGUSR2)
        notify.expect("X-TEST-STALL=1", timeout=5.0)  # keep-alives already on their way may come before it
        # The loop is blocked: no keep-alive for 1 s, five times WatchdogSec: systemd would kill it here.
        assert notify.next(1.0) is None
        # The stall ends (4 s): the keep-alives come back, so it was the loop, not the socket.
        notify.expect("WATCHDOG=1", timeout=8.0)
        assert gateway.stop(proc) == 0
        seen = notify.expect("STOPPING=1", timeout=5.0)
        assert set(seen) <= {"WATCHDOG=1"}
    finally:
        notify.close()


def test_without_notify_socket_the_agent_runs_as_before(gateway):
    """No NOTIFY_SOCKET (a shell, the demo), even with WATCHDOG_USEC set: nothing to notify, and it runs and stops."""
    proc, reason = gateway.run_until_reported(WATCHDOG_USEC=str(WATCHDOG_USEC))
    assert reason == "last_stop.first"
    assert gateway.stop(proc) == 0
    assert b"sd_notify" not in (gateway.tmp / "agent.log").read_bytes()  # no failed send was logged


def test_each_restart_reason_is_found_and_reported(gateway):
    """first -> clean (SIGTERM) -> power loss (SIGKILL) -> crash (ValueError) -> watchdog (stall, SIGABRT, the
    ExecStopPost record), each reported in the next run's first batch and logged."""
    proc, reason = gateway.run_until_reported()
    assert reason == "last_stop.first"
    assert gateway.stop(proc) == 0

    proc, reason = gateway.run_until_reported()
    assert reason == "last_stop.clean"
    assert gateway.stop(proc, signal.SIGKILL) == -signal.SIGKILL

    proc, reason = gateway.run_until_reported()
    assert reason == "last_stop.power_loss"
    assert gateway.stop(proc) == 0

    crashing = gateway.start("crash")
    assert crashing.wait(20) == 1  # the ValueError's traceback, exit status 1: Restart=on-failure restarts it
    assert "ValueError: injected by the test" in (gateway.tmp / "agent.log").read_text()

    notify = NotifySocket("@edge-gateway-test-%d-reasons" % os.getpid())
    try:
        proc, reason = gateway.run_until_reported("stall", TEST_STALL_S="30", **notify.env)
        assert reason == "last_stop.crash.ValueError"
        notify.expect("READY=1")
        proc.send_signal(signal.SIGUSR2)
        notify.expect("X-TEST-STALL=1", timeout=5.0)
        assert notify.next(1.0) is None  # past WatchdogSec: what systemd does now, the test does
    finally:
        notify.close()
    assert gateway.stop(proc, signal.SIGABRT) == -signal.SIGABRT
    gateway.record_stop(SERVICE_RESULT="watchdog", EXIT_CODE="dumped", EXIT_STATUS="ABRT")

    proc, reason = gateway.run_until_reported()
    assert reason == "last_stop.watchdog"
    assert gateway.stop(proc) == 0
    log = (gateway.tmp / "agent.log").read_text()
    for words in ("previous run ended: first start", "previous run ended: clean",
                  "WARNING gateway.app.service: previous run ended: power loss or kill -9",
                  "previous run ended: crash (ValueError)", "previous run ended: watchdog (event loop stalled)"):
        assert words in log
    assert json.loads((gateway.state / "run-marker.json").read_text()) == {
        "state": "clean", "counts": {"clean": 2, "crash": 1, "power_loss": 1, "watchdog": 1}}  # each stop counted
