"""The console through a real terminal client: picocom at 115200 8N1, running in a detached tmux.

Two pseudo-terminals stand for the two ends of the USB-serial cable: the console opens the slave of one (as it
opens /dev/ttyGS0), picocom opens the slave of the other (as it opens /dev/ttyUSB0 on the laptop), and a relay
thread copies bytes between the two masters (the cable). tmux gives picocom a real screen, which we read back.
"""

import os
import select
import shutil
import subprocess
import threading
import time
import tty

import pytest

from tests.support.console import Rig, config_path, receiver  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not shutil.which("picocom") or not shutil.which("tmux"),
                                 reason="needs the Debian packages picocom and tmux")]


class Cable:
    """Copies bytes both ways between two pty masters until stopped."""

    def __init__(self, a, b):
        self.a, self.b = a, b
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        peer = {self.a: self.b, self.b: self.a}
        while not self.stopped.is_set():
            ready, _, _ = select.select([self.a, self.b], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                    os.write(peer[fd], data)
                except OSError:
                    continue  # an end not opened yet (EIO): nothing to carry

    def stop(self):
        self.stopped.set()
        self.thread.join(5)


def tmux(sock, *args):
    return subprocess.run(["tmux", "-S", sock] + list(args), capture_output=True, text=True, timeout=10,
                          check=True).stdout


def screen_until(sock, text, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        shown = tmux(sock, "capture-pane", "-p", "-J", "-S", "-200")
        if text in shown:
            return shown
        if time.monotonic() > deadline:
            raise AssertionError("%r not on screen:\n%s" % (text, shown))
        time.sleep(0.1)


def test_help_and_status_through_picocom(config_path, tmp_path):  # noqa: F811
    gw_master, gw_slave = os.openpty()
    laptop_master, laptop_slave = os.openpty()
    tty.setraw(laptop_slave)  # an unplugged cable end does not echo (a cooked pty would echo the prompt back)
    cable = Cable(gw_master, laptop_master)
    rig = Rig(config_path, os.ttyname(gw_slave))
    sock = str(tmp_path / "tmux.sock")
    env = dict(os.environ, TERM="xterm")
    try:
        subprocess.run(["tmux", "-S", sock, "new-session", "-d", "-x", "100", "-y", "50",
                        "picocom -b 115200 -d 8 -p 1 -y n -f n --noreset --nolock %s" % os.ttyname(laptop_slave)],
                       env=env, check=True, timeout=10)
        screen_until(sock, "Terminal ready")
        tmux(sock, "send-keys", "", "Enter")
        screen_until(sock, "gw-console> ")
        tmux(sock, "send-keys", "help", "Enter")
        shown = screen_until(sock, "Ctrl-C abandons")
        assert "Commands anyone at the cable may use:" in shown
        assert "uplink test" in shown and "After 'unlock' (technician PIN):" in shown
        tmux(sock, "send-keys", "status", "Enter")
        shown = screen_until(sock, "readings  ")
        assert "gateway   gw-console  (edge-gateway 0.1.0, boot %d, kid %s)" % (rig.agent.boot, rig.agent.kid) in shown
        assert "uplink    " in shown and "queue     " in shown
        for line in shown.splitlines():
            assert len(line.rstrip()) <= 80
        assert "\x1b" not in shown
        (tmp_path / "screen.txt").write_text(shown)
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True, timeout=10)
        rig.stop()
        cable.stop()
        for fd in (gw_master, gw_slave, laptop_master, laptop_slave):
            os.close(fd)


def test_up_arrow_recalls_through_picocom(config_path, tmp_path):  # noqa: F811
    """tmux sends the terminal's real Up key (ESC [ A, or ESC O A in application mode) through picocom."""
    gw_master, gw_slave = os.openpty()
    laptop_master, laptop_slave = os.openpty()
    tty.setraw(laptop_slave)
    cable = Cable(gw_master, laptop_master)
    rig = Rig(config_path, os.ttyname(gw_slave))
    sock = str(tmp_path / "tmux.sock")
    env = dict(os.environ, TERM="xterm")
    try:
        subprocess.run(["tmux", "-S", sock, "new-session", "-d", "-x", "80", "-y", "30",
                        "picocom -b 115200 -d 8 -p 1 -y n -f n --noreset --nolock %s" % os.ttyname(laptop_slave)],
                       env=env, check=True, timeout=10)
        screen_until(sock, "Terminal ready")
        tmux(sock, "send-keys", "", "Enter")
        screen_until(sock, "gw-console> ")
        tmux(sock, "send-keys", "VERSION", "Enter")
        screen_until(sock, "edge-gateway 0.1.0\n")
        tmux(sock, "send-keys", "Up")
        deadline = time.monotonic() + 10
        while rig.server.discipline.pending != "VERSION":
            assert time.monotonic() < deadline, rig.server.discipline.pending
            time.sleep(0.05)
        tmux(sock, "send-keys", "Enter")
        deadline = time.monotonic() + 10
        while True:
            shown = tmux(sock, "capture-pane", "-p", "-J", "-S", "-200")
            if shown.count("edge-gateway 0.1.0\n") >= 2:
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.1)
        assert "[A" not in shown and "OA" not in shown
        for line in shown.splitlines():
            assert len(line.rstrip()) <= 80
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True, timeout=10)
        rig.stop()
        cable.stop()
        for fd in (gw_master, gw_slave, laptop_master, laptop_slave):
            os.close(fd)
