"""gateway/app/watchdog.py's Notifier against real unix datagram sockets: a path and an abstract name, and a socket
that is gone (systemd restarting): the agent goes on, and says so once."""

import logging
import os
import socket

from gateway.app.watchdog import Notifier


def test_sends_to_a_path_and_to_an_abstract_socket(tmp_path):
    for address, bound in ((str(tmp_path / "notify"), str(tmp_path / "notify")),
                           ("@edge-gateway-notify-%d" % os.getpid(), "\0edge-gateway-notify-%d" % os.getpid())):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(bound)
            server.settimeout(5)
            notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
            try:
                assert notifier.notify("READY=1") and notifier.notify("STOPPING=1")
                assert [server.recv(64), server.recv(64)] == [b"READY=1", b"STOPPING=1"]
            finally:
                notifier.close()


def test_a_missing_socket_is_logged_once_and_never_raised(tmp_path, caplog):
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "1000000"})
    with caplog.at_level(logging.WARNING, logger="gateway.app.watchdog"):
        assert [notifier.notify("WATCHDOG=1") for _ in range(3)] == [False] * 3
    notifier.close()
    assert len(caplog.records) == 1 and "sd_notify WATCHDOG=1" in caplog.records[0].getMessage()
