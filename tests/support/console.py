"""The console rig shared by the pty and picocom tests: a real agent + store + console in a thread, a receiver.

``receiver`` and ``config_path`` are pytest fixtures; a test module imports them by name to use them.
"""

import asyncio
import os
import re
import select
import threading
import time

import pytest

from drivers.base import Source
from gateway.adapters import keys
from gateway.app.config import load, to_toml
from gateway.app.console.auth import hash_pin
from gateway.app.console.serve import serve_console
from gateway.core.model import Reading
from backend.receiver import Receiver, ReceiverServer
from gateway.app.service import build_agent

PIN = "246800"


class TankSource(Source):
    """Emits temp, rssi and batt for sensor 'tank' every 50 ms; temp climbs past the alarm threshold."""

    name = "tank-feed"

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.sent = []

    async def run(self, emit):
        n = 0
        while True:
            t = self.clock.monotonic()
            for name, value, unit in (("temp", 4.0 + n * 0.5, "Cel"), ("rssi", -60 - n % 5, "dBm"),
                                      ("batt", 3.1, "V")):
                r = Reading("tank", name, value, unit, t)
                self.sent.append(r)
                emit(r)
            n += 1
            self.count("ticks")
            await asyncio.sleep(0.05)  # the source's rate: a reading set every 50 ms


class Rig:
    """A real agent + store + console, from a config file, on an event loop in a thread."""

    def __init__(self, config_path, port, **console_options):
        self.cfg = load(config_path)
        self.agent = build_agent(self.cfg)
        self.source = TankSource(self.agent.clock)
        self.agent.sources.append(self.source)
        self.restarted = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.stop_event = None
        self.task = None
        self.thread = threading.Thread(target=self._main, args=(config_path, port, console_options), daemon=True)
        ready = threading.Event()
        self._ready = ready
        self.thread.start()
        assert ready.wait(10)

    def _main(self, config_path, port, options):
        asyncio.set_event_loop(self.loop)

        async def main():
            self.stop_event = asyncio.Event()

            def restart():
                self.restarted.set()
                self.loop.call_soon_threadsafe(self.stop_event.set)
            self.task = serve_console(self.agent, port, config_path, request_restart=restart, **options)
            self._ready.set()
            try:
                await self.agent.run(self.stop_event)
            finally:
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)
                self.agent.store.close()
        self.loop.run_until_complete(main())
        self.loop.close()

    @property
    def server(self):
        return self.task.server

    def stop(self):
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(20)
        assert not self.thread.is_alive()


@pytest.fixture
def receiver(tmp_path, signing_key):
    key_path = tmp_path / "state" / "key.pem"
    key_path.parent.mkdir()
    keys.write_private(str(key_path), signing_key)
    trust = keys.TrustStore({"keys": [signing_key.jwk("gw-console")]})
    server = ReceiverServer(Receiver(str(tmp_path / "receiver.sqlite"), trust)).start()
    yield server, trust
    server.stop()
    server.receiver.close()


@pytest.fixture
def config_path(tmp_path, receiver):
    server, _ = receiver
    raw = {"gateway": {"id": "gw-console", "state_dir": str(tmp_path / "state")},
           "batch": {"max_age_s": 0.2, "time_quantum_s": 0.1},
           "uplink": {"url": server.url, "backoff_min_s": 0.1, "backoff_max_s": 0.5, "timeout_s": 2.0},
           "console": {"pin_hash": hash_pin(PIN), "idle_lock_s": 60.0},
           "rules": [{"match": {"sensor": "tank", "name": "temp"}, "high": 6.0}]}
    path = tmp_path / "config.toml"
    path.write_text(to_toml(raw))
    return str(path)


PROMPT = re.compile(rb"gw-console[>#] $")


class Term:
    """The technician's side: the pty master."""

    def __init__(self, fd):
        self.fd = fd
        self.screen = bytearray()  # everything ever received, for the transcript

    def send(self, data, byte_at_a_time=False):
        if byte_at_a_time:
            for b in data:
                os.write(self.fd, bytes([b]))
                time.sleep(0.002)  # the behaviour under test: a typist, one byte at a time
        else:
            os.write(self.fd, data)

    def read_until(self, pattern, timeout=10.0):
        """Read until ``pattern`` (regex bytes) matches the bytes received since the call; return them."""
        start = len(self.screen)
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, bytes(self.screen[start:]))
            if m:
                return bytes(self.screen[start:])
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for %r; got %r" % (pattern, bytes(self.screen[start:])[-600:]))
            r, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if r:
                try:
                    self.screen += os.read(self.fd, 65536)
                except OSError:
                    raise AssertionError("pty closed")

    def drain(self, quiet=0.2):
        while select.select([self.fd], [], [], quiet)[0]:
            self.screen += os.read(self.fd, 65536)

    def cmd(self, line, timeout=10.0, **kw):
        """Type ``line`` and Enter; return the reply lines (between the echo and the next prompt)."""
        self.send(line.encode() + b"\r", **kw)
        out = self.read_until(rb"\r\n(gw-console[>#] |PIN: )$", timeout)
        text = out.decode("ascii")
        body = text.split("\r\n")
        return body[1:-1]  # drop the echoed line and the prompt


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    yield master, os.ttyname(slave)
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def start(config_path, pty_pair, **options):
    master, path = pty_pair
    rig = Rig(config_path, path, **options)
    term = Term(master)
    term.read_until(PROMPT)
    return rig, term


@pytest.fixture
def spare_tty():
    """A serial device nobody uses yet (a pty slave), for ``sensor add``; its master stays open."""
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)
