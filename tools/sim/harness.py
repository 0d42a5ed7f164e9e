"""Links simulated sensor firmware to the gateway through real pseudo-terminals.

Each node runs as its own process, under the real MicroPython unix port when ``micropython`` is on PATH (CPython
otherwise: the nodes are written to the common subset). The node's stdin and stdout are the master side of a pty;
the gateway opens the slave side by path with pyserial, exactly as it opens ``/dev/ttyUSB0``. A stable symlink
(like ``/dev/serial/by-id/...``) points at the current slave, so ``unplug()``/``replug()`` can simulate a USB
adapter coming and going: the old pty disappears, a new one appears under the same stable name.

This module runs on the host (CPython) only; the node scripts beside it are the firmware.
"""

import os
import shutil
import signal
import subprocess
import sys
import tty

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIRMWARE = os.path.join(ROOT, "firmware_sim")  # the node firmware this harness runs


def interpreter(prefer="micropython"):
    """The MicroPython binary if installed (the venv's bin first), else this CPython."""
    if prefer == "micropython":
        venv_bin = os.path.join(os.path.dirname(sys.executable), "micropython")
        for candidate in (venv_bin, shutil.which("micropython")):
            if candidate and os.access(candidate, os.X_OK):
                return candidate
    return sys.executable


def _die_with_parent(argv):
    """Prefix ``argv`` so the node gets SIGKILL when the gateway that spawned it dies (kill -9 included).

    util-linux's ``setpriv --pdeathsig`` sets PR_SET_PDEATHSIG and execs the node. A ``preexec_fn`` would do the
    same from Python, but it runs between fork and exec of a threaded parent, where it can deadlock.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] + argv if setpriv else argv


def node_script(name):
    return os.path.join(FIRMWARE, name if name.endswith(".py") else name + ".py")


class PtyNode:
    """One firmware node on a pty. ``link`` is the stable path the gateway should open."""

    def __init__(self, script, args=(), link=None, python=None):
        self.script = node_script(script)
        self.args = [str(a) for a in args]
        self.python = python or interpreter()
        self.link = link
        self.proc = None
        self.master = None
        self.slave = None
        self.slave_path = None
        self.plugs = 0

    def start(self):
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR/LF translation: a serial line carries bytes as they are
        self.master, self.slave = master, slave
        self.slave_path = os.ttyname(slave)
        if self.link:
            tmp = self.link + ".new"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(self.slave_path, tmp)
            os.replace(tmp, self.link)
        # nodes may import the gateway's pure modules (gateway.core.rules)
        env = dict(os.environ, MICROPYPATH=ROOT + ":.frozen",
                   PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
        self.proc = subprocess.Popen(_die_with_parent([self.python, self.script] + self.args), stdin=master,
                                     stdout=master,
                                     stderr=subprocess.DEVNULL, close_fds=True, env=env,
                                     cwd=ROOT)
        self.plugs += 1
        return self

    @property
    def path(self):
        return self.link or self.slave_path

    def unplug(self):
        """Kill the node and tear down its pty, as when a USB adapter is pulled out."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        for fd in (self.master, self.slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.master = self.slave = None

    def replug(self):
        self.unplug()
        return self.start()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        self.unplug()
        if self.link and os.path.lexists(self.link):
            os.unlink(self.link)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
