"""The console's serial adapter: open the tty, pump bytes through the line discipline and the commands.

It uses ``os`` and ``termios`` directly, not pyserial: pyserial stays confined to ``drivers/serial/adapter.py``
(house style, habit 3), and the console needs exactly the few things termios gives plainly: raw 8N1 at a fixed
speed, ``TIOCEXCL`` (so a getty or a second console cannot open the same port), ``HUPCL``, and a file descriptor
the event loop watches with ``add_reader`` (no thread per port).

Disconnect: a read error (``EIO``, as when a USB-serial adapter or a pty master goes away) or an end-of-file
(hangup, with ``modem_control`` and a DCD line) ends the session. The console locks at once and the adapter
reopens the port with backoff (0.2 s up to 5 s), forever, until cancelled. A plain 3-wire cable gives no sign when
the laptop walks away, which is why the console also locks when idle.

Commands run one at a time, in order; a command's blocking part (``Work``) runs in a worker thread so the agent's
loop never waits for a PIN check, a file write or an uplink round trip. Output is bounded (``max_output``); input
lines arriving while a command runs are queued (``max_queued``) and counted when dropped.
"""

import asyncio
import collections
import errno
import fcntl
import logging
import os
import termios
from concurrent.futures import ThreadPoolExecutor

from gateway.app.console.commands import Reply, Work
from gateway.app.console.protocol import LineDiscipline

log = logging.getLogger(__name__)


def open_tty(path, baud=115200, modem_control=False):
    """Open ``path`` raw 8N1 at ``baud``, non-blocking, exclusive. Raises ``OSError`` (with the path)."""
    speed = getattr(termios, "B%d" % baud, None)
    if speed is None:
        raise OSError(errno.EINVAL, "unsupported baud rate %d" % baud, path)
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, termios.TIOCEXCL)
        iflag, oflag, cflag, lflag, _, _, cc = termios.tcgetattr(fd)
        iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR |
                   termios.IGNCR | termios.ICRNL | termios.IXON | termios.IXOFF | termios.INPCK)
        oflag &= ~termios.OPOST
        lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
        cflag &= ~(termios.CSIZE | termios.PARENB | termios.CSTOPB | getattr(termios, "CRTSCTS", 0))
        cflag |= termios.CS8 | termios.CREAD | termios.HUPCL
        cflag = cflag & ~termios.CLOCAL if modem_control else cflag | termios.CLOCAL
        cc[termios.VMIN], cc[termios.VTIME] = 1, 0
        termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, speed, speed, cc])
        termios.tcflush(fd, termios.TCIFLUSH)  # whatever noise arrived while nobody listened
    except termios.error as exc:
        os.close(fd)
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else errno.ENOTTY
        raise OSError(code, "not a usable terminal: %s" % (exc.args[-1],), path) from exc
    except OSError:
        os.close(fd)
        raise
    return fd


class ConsoleServer:
    def __init__(self, port, console, *, baud=115200, max_line=160, modem_control=False, reopen_min=0.2,
                 reopen_max=5.0, idle_poll_s=1.0, max_output=64 << 10, max_queued=32, executor=None):
        self.port = port
        self.console = console
        self.baud = baud
        self.max_line = max_line
        self.modem_control = modem_control
        self.reopen_min, self.reopen_max = reopen_min, reopen_max
        self.idle_poll_s = idle_poll_s
        self.max_output = max_output
        self.max_queued = max_queued
        self.executor = executor or ThreadPoolExecutor(1, "console")
        self.counters = collections.Counter()
        self.connected = asyncio.Event()
        self.discipline = None

    async def run(self):
        """Serve the port until cancelled, reopening it after every disconnect."""
        delay = self.reopen_min
        try:
            while True:
                try:
                    fd = open_tty(self.port, self.baud, self.modem_control)
                except OSError as exc:
                    self.counters["open_failed"] += 1
                    if self.counters["open_failed"] == 1 or delay >= self.reopen_max:
                        log.warning("console: cannot open %s: %s; retrying", self.port, exc.strerror or exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.reopen_max)
                    continue
                delay = self.reopen_min
                self.counters["sessions"] += 1
                try:
                    reason = await self._session(fd)
                finally:
                    os.close(fd)
                    self.connected.clear()
                self.counters["disconnects"] += 1
                self.console.disconnected()
                log.info("console: %s disconnected (%s); locked", self.port, reason)
                await asyncio.sleep(self.reopen_min)
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def _session(self, fd):
        """Serve one connection on ``fd`` until it hangs up; returns the reason."""
        self.discipline = LineDiscipline(self.max_line)
        return await _Session(self, fd, self.discipline).run()

    async def _execute(self, line):
        """Run one line through the commands, resolving blocking steps in the worker thread."""
        loop = asyncio.get_running_loop()
        self.counters["commands"] += 1
        try:
            result = self.console.handle(line)
            while isinstance(result, Work):
                value = await loop.run_in_executor(self.executor, result.call)
                result = result.finish(value)
        except Exception as exc:  # the console must survive any bug behind a command; it is logged as ERROR
            self.counters["internal_errors"] += 1
            log.exception("console: command %r failed", getattr(line, "text", line)[:40])
            return Reply(("internal error (%s); details are in the log" % type(exc).__name__,))
        return result


class _Session:
    """One connection: the read loop (``readable``) feeds the line discipline (``step``), whose complete lines a
    worker task runs in order; everything shown goes through the write path (``write``/``flush``), bounded and
    non-blocking. ``gone`` resolves with the reason the connection ended."""

    def __init__(self, server, fd, disc):
        self.server = server
        self.console = server.console
        self.counters = server.counters
        self.fd = fd
        self.disc = disc
        self.loop = asyncio.get_running_loop()
        self.gone = self.loop.create_future()
        self.queue = collections.deque()
        self.wake = asyncio.Event()
        self.out = bytearray()
        self.writing = False

    async def run(self):
        self.loop.add_reader(self.fd, self.readable)
        # A fresh line first: the technician's screen may still show the last session's prompt (a reopen).
        self.write(b"\r\n" + self.console.banner().render() + self.prompt())
        self.server.connected.set()
        tasks = [asyncio.create_task(self.worker(), name="console-worker"),
                 asyncio.create_task(self.idle(), name="console-idle")]
        try:
            done, _ = await asyncio.wait([self.gone] + tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task in done and task.exception() is not None:
                    raise task.exception()
            return self.gone.result() if self.gone.done() else "stopped"
        finally:
            self.loop.remove_reader(self.fd)
            if self.writing:
                self.loop.remove_writer(self.fd)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def hangup(self, reason):
        if not self.gone.done():
            self.gone.set_result(reason)

    # -- the read loop and the line discipline step -------------------------------------------------------------
    def readable(self):
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self.hangup(exc.strerror or str(exc))
            return
        if not data:
            self.hangup("hangup")
            return
        self.counters["bytes_in"] += len(data)
        self.step(data)

    def step(self, data):
        """Echo what the discipline says and queue the complete lines (bounded; overflow is counted)."""
        echo, lines = self.disc.feed(data)
        self.write(echo)
        for line in lines:
            if len(self.queue) >= self.server.max_queued:
                self.counters["lines_dropped"] += 1
            else:
                self.queue.append(line)
        if lines:
            self.wake.set()

    async def worker(self):
        dropped = 0
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                reply = await self.server._execute(self.queue.popleft())
                self.write(reply.render())
                if self.counters["lines_dropped"] > dropped:
                    self.write(b"(input overrun: %d lines dropped)\r\n" % (self.counters["lines_dropped"] - dropped))
                    dropped = self.counters["lines_dropped"]
                self.write(self.prompt())

    async def idle(self):
        while True:
            await asyncio.sleep(self.server.idle_poll_s)
            note = self.console.idle_check()
            if note is not None:
                self.write(b"\r\n" + note.render() + self.prompt())

    def prompt(self):
        """The prompt and the partial line typed so far (masked while a PIN is being entered)."""
        self.disc.mask = self.console.masked
        self.disc.prompt = self.console.prompt()
        return self.disc.prompt.encode("ascii", "replace") + self.disc.redraw()

    # -- the write path ---------------------------------------------------------------------------------------
    def write(self, data):
        if len(self.out) + len(data) > self.server.max_output:
            self.counters["output_dropped"] += len(data)
            return
        self.out.extend(data)
        self.flush()

    def flush(self):
        out = self.out
        while out:
            try:
                n = os.write(self.fd, out)
            except BlockingIOError:
                if not self.writing:
                    self.loop.add_writer(self.fd, self.flush)
                    self.writing = True
                return
            except OSError as exc:
                out.clear()
                self.hangup(exc.strerror or str(exc))
                return
            del out[:n]
        if self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False
