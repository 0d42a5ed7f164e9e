"""The line-protocol feed of the kill-window tests (``tests/system/test_loss_window.py``,
``tests/system/test_journal_kill.py``): a pty the test writes ``id=board-1 n=<k>`` lines to, noting when each
write returned, and the agent config and receiver queries that go with it."""

import fcntl
import os
import sqlite3
import struct
import termios
import threading
import time
import tty

from tests.support.faults import GW, killpg


class Feed:
    """Writes ``id=board-1 n=<k>`` lines to a pty at ``rate`` while ``counting``; a slow ``board-0`` probe else."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # the test keeps the slave open: settings and buffer survive agent restarts
        self.path = os.ttyname(self.slave)
        self.rate = 50
        self.counting = False
        self.written = []  # (k, monotonic time the write returned), for counted lines
        self.n = 0
        self.probe = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        next_at = time.monotonic()
        while not self.stop.is_set():
            if not self.counting:
                self.probe += 1
                os.write(self.master, b"id=board-0 n=%d\n" % self.probe)
                self.stop.wait(0.05)
                next_at = time.monotonic()
                continue
            os.write(self.master, b"id=board-1 n=%d\n" % self.n)
            self.written.append((self.n, time.monotonic()))
            self.n += 1
            next_at += 1.0 / self.rate
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)

    def start(self):
        self.thread.start()
        return self

    def drained(self):
        """True when nothing written is left unread on the pty: the agent reads it."""
        return struct.unpack("i", fcntl.ioctl(self.slave, termios.FIONREAD, b"\0\0\0\0"))[0] == 0

    def close(self):
        self.stop.set()
        self.thread.join(5)
        os.close(self.master)
        os.close(self.slave)


def write_config(state_dir, feed_path, uplink_toml, extra=""):
    path = os.path.join(state_dir, "config.toml")
    with open(path, "w") as f:
        f.write('[gateway]\nid = "%s"\nstate_dir = "%s"\nlog_level = "warning"\n%s\n%s\n[clock]\nmode = "synced"\n'
                '[[sources]]\ntype = "serial"\nname = "lw"\nport = "%s"\nbaud = 115200\n'
                % (GW, state_dir, uplink_toml, extra, feed_path))
    return path


def query(db, sql, *args):
    """Rows from a SQLite file another process writes (read-only; [] while it has no tables yet)."""
    if not os.path.exists(db):
        return []
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def received_counter(db):
    """The ``n`` values of ``board-1`` the receiver holds."""
    return {int(v) for (v,) in query(db, "SELECT v FROM records WHERE gw = ? AND n LIKE '%board-1/n'", GW)}


def stop_all(feed, log, proc, receiver):
    """The end of a kill-cycle run: the feed, the agent's log, the agent (if still running), the receiver."""
    feed.close()
    log.close()
    if proc is not None:
        killpg(proc)
    receiver.stop()
