"""What the three test tiers share: condition waits, servers on port 0, the MicroPython lookup, the repo's paths.

Import it as ``from tests.support import wait_until`` (setup.cfg's ``pythonpath = .`` and the checkout .pth that
``bootstrap.sh`` writes put the repository root on the path). The rest of the package: ``tests.support.mosquitto``
(a real broker), ``tests.support.wire_vectors`` (the committed COSE vectors), ``tests.support.rules_mpy_cases``
(rules cases that also run under MicroPython). No test module imports another test module; shared pieces live here.
"""

import asyncio
import os
import pathlib
import shutil
import socket
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
SUPPORT = TESTS / "support"
VECTORS = TESTS / "vectors"


# -- waiting on a condition, never on the clock -------------------------------------------------------------------
def wait_until(predicate, timeout=10.0, what="the condition", interval=0.01):
    """Poll ``predicate()`` until it returns something truthy and return that; fail naming ``what`` at the deadline.

    The poll interval is not a fixed sleep standing for "long enough": the test goes on as soon as the thing it
    waits for has happened, and fails with a message when it never does."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)


async def async_wait_until(predicate, timeout=10.0, what="the condition", interval=0.01):
    """``wait_until`` for a test running on an event loop: yields to the loop between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        await asyncio.sleep(interval)


def wait_for_port(port, host="127.0.0.1", timeout=10.0, what=None, alive=None):
    """Wait until something accepts connections on ``host:port``; ``alive()`` false (a child died) fails at once."""
    def accepting():
        if alive is not None:
            assert alive(), "%s exited before it listened" % (what or "the server")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            return False
    return wait_until(accepting, timeout, what or "a listener on %s:%d" % (host, port), interval=0.05)


# -- servers on port 0 --------------------------------------------------------------------------------------------
def receiver_server(db_path, trust, **kw):
    """The reference receiver (``backend.receiver``) on its own thread, bound to port 0: ``server.url`` holds the
    port the kernel chose (read back, never guessed). Test HTTP servers do the same: bind ``("127.0.0.1", 0)``."""
    from backend.receiver import Receiver, ReceiverServer
    return ReceiverServer(Receiver(os.fspath(db_path), trust, **kw)).start()


def http_get(base, path, headers=None, timeout=5):
    """``GET path`` from the server at ``base`` (any URL of it): ``(status, headers, body bytes)``."""
    import http.client
    import urllib.parse
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def post_batch(url, body, ctype=None, timeout=5):
    """``POST`` one body to ``url`` (a batch, by default with the wire format's media type):
    ``(status, JSON body or {}, Retry-After or None)``."""
    import http.client
    import json
    import urllib.parse
    from gateway.core import wire
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("POST", u.path, body=body, headers={"Content-Type": ctype or wire.HTTP_CONTENT_TYPE})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}"), resp.getheader("Retry-After")
    finally:
        conn.close()


def load_vectors(directory):
    """``[(file name, parsed JSON), ...]`` of the ``.json`` test vectors in ``directory``, by name."""
    import json
    out = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as f:
                out.append((name, json.load(f)))
    return out


def get_json(base, path, headers=None):
    """``GET path`` answered in JSON: ``(status, body)`` (an empty body is ``{}``)."""
    import json
    status, _, body = http_get(base, path, headers)
    return status, json.loads(body or b"{}")


def reserve_port(host="127.0.0.1"):
    """A free loopback port for a server that runs as a separate process and must come back on the SAME port after
    a SIGKILL (``edge-gateway receive`` in the fault tests, Mosquitto). Such a process cannot hand a kernel-chosen
    port back to the test, so this is the one place a port is bound and released; in-process servers bind port 0
    (``receiver_server``)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def closed_port(host="127.0.0.1"):
    """A loopback port nothing listens on, for tests of a refused connection (not for starting a server on)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- tools ------------------------------------------------------------------------------------------------------
def find_micropython():
    """The ``micropython`` unix port: on PATH, beside this interpreter (the venv's bin), or in the checkout's .venv."""
    path = os.pathsep.join([os.path.dirname(sys.executable), str(ROOT / ".venv" / "bin"), os.environ.get("PATH", "")])
    return shutil.which("micropython", path=path)


MICROPYTHON = find_micropython()


def run_agent(agent, driver):
    """Run ``agent`` on a fresh event loop until the coroutine function ``driver`` returns, then stop it (bounded)."""
    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await driver()
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
    asyncio.run(main())


def write_agent_config(tmp_path, port, url, extra="", gw="gw-run"):
    """``tmp_path/config.toml`` for ``edge-gateway run``: a new key in ``tmp_path/state``, a 0.5 s batch age, the
    HTTP uplink ``url``, a synced clock and one line-protocol serial source on ``port`` (``temp`` in Cel, ``hum``
    in %RH); ``extra`` TOML is appended. Returns ``(path, signing key)``."""
    from gateway.adapters import keys
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    key = keys.SigningKey.generate()
    keys.write_private(str(state / "key.pem"), key)
    cfg = tmp_path / "config.toml"
    cfg.write_text("""
[gateway]
id = "%s"
state_dir = "%s"
[batch]
max_age_s = 0.5
[uplink]
url = "%s"
backoff_min_s = 0.1
backoff_max_s = 1
[clock]
mode = "synced"
[[sources]]
type = "serial"
name = "board"
port = "%s"
baud = 115200
protocol = "lines"
units = {temp = "Cel", hum = "%%RH"}
%s""" % (gw, state, url, port, extra))
    return str(cfg), key
