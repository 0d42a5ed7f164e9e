"""The unit tier: pure tests. No processes, no sockets, no real sleeps (drive a FakeClock instead).

The fixture below holds every test here to that: starting a process, binding or connecting a socket, or sleeping
on the real clock fails the test with the reason. A test that needs one of those belongs in tests/integration.
"""

import socket
import subprocess
import time

import pytest


def _refuse(what):
    def refused(*args, **kwargs):
        raise AssertionError("a unit test may not %s: move it to tests/integration" % what)
    return refused


@pytest.fixture(autouse=True)
def _pure(monkeypatch):
    real_sleep = time.sleep

    def sleep(seconds):
        if seconds > 0:
            _refuse("sleep on the real clock (%r s)" % seconds)()
        real_sleep(0)
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start a process"))
    monkeypatch.setattr(socket.socket, "connect", _refuse("connect a socket"))
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse("connect a socket"))
    monkeypatch.setattr(socket.socket, "bind", _refuse("bind a socket"))
    monkeypatch.setattr(time, "sleep", sleep)
