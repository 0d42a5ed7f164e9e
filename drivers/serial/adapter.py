"""The serial adapter: the only module that imports pyserial (house style, habit 3).

It opens a port by path (stable names such as ``/dev/serial/by-id/...`` are symlinks and work as they are), reads
whatever arrives through the event loop (``add_reader``, no thread per port), and hands the bytes to a pure
protocol. When the device goes away (a USB adapter pulled out, a pty closed), reads fail; the adapter closes,
counts ``reopen`` and opens again with exponential backoff, forever, until cancelled. It never hangs on a dead
port: a silent port is only counted (``silent``).
"""

import asyncio
import logging
import os
import select

import serial

from drivers.base import Source
from drivers.serial.protocols import make_protocol
from gateway.core.backoff import Backoff
from gateway.core.model import Reading

log = logging.getLogger(__name__)

PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class PortGone(Exception):
    pass


def open_port(port, **settings):
    """Open ``port`` non-blocking and exclusive (pyserial's settings: ``baudrate``, ``bytesize``, ...); the
    sources and the actuator boards (``drivers/serial/actuator.py``) open their ports here. Raises ``OSError``
    (pyserial's ``SerialException`` is one) or ``ValueError`` for a setting the port refuses."""
    return serial.Serial(port, timeout=0, write_timeout=0, exclusive=True, **settings)


def write_port(ser, data):
    """Write ``data``; ``PortGone`` when the device went away or does not drain its buffer."""
    try:
        ser.write(data)
    except serial.SerialTimeoutException as exc:
        raise PortGone("write timed out") from exc
    except (serial.SerialException, OSError) as exc:
        raise PortGone(exc) from exc


def read_port(fd):
    """Bytes that arrived, None after a spurious wake-up, ``PortGone`` when the device went away.

    pyserial opened the fd non-blocking; reading it directly tells a spurious wake-up (EAGAIN) from a device
    that went away (EIO or end of file). A raw tty with VMIN=0 also reads 0 bytes when nothing is there, and
    the loop's reader callback can fire after we drained it, so gone means: readable, yet empty twice.
    """
    for attempt in (1, 2):
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise PortGone(exc) from exc
        if data:
            return data
        if attempt == 1 and not select.select([fd], [], [], 0)[0]:
            return None
    raise PortGone("end of file")


class SerialSource(Source):
    #: after reading bytes, let the next ones gather this long before reading again: at 1,000 lines/s this cut the
    #: agent's CPU per reading by a third (docs/performance.md, "CPU"); it adds at most this much latency
    COALESCE_S = 0.005

    def __init__(self, name, port, protocol, clock, baud=9600, bytesize=8, parity="N", stopbits=1,
                 backoff_min=0.2, backoff_max=30.0, silent_after=60.0, opener=None, rng=None):
        super().__init__()
        if parity not in PARITIES:
            raise ValueError("parity must be N, E or O")
        self.name = name
        self.port = port
        self.protocol = protocol
        self.clock = clock
        self.settings = dict(baudrate=baud, bytesize=bytesize, parity=PARITIES[parity], stopbits=stopbits)
        self.backoff = Backoff(backoff_min, backoff_max, rng)
        self.silent_after = silent_after
        self.opener = opener or self._open
        self.connected = False
        self.last_data = None

    def _open(self):
        return open_port(self.port, **self.settings)

    async def run(self, emit):
        while True:
            try:
                ser = self.opener()
            except (serial.SerialException, OSError, ValueError) as exc:
                self.count("open_failed")
                delay = self.backoff.next()
                log.warning("%s: cannot open %s: %s; retrying in %.1f s", self.name, self.port, exc, delay)
                await asyncio.sleep(delay)
                continue
            self.count("opened")
            self.connected = True
            log.info("%s: opened %s", self.name, self.port)
            try:
                await self._pump(ser, emit)
                self.backoff.reset()
            except PortGone as exc:
                self.count("reopen")
                log.warning("%s: %s went away (%s); reopening", self.name, self.port, exc)
            finally:
                self.connected = False
                try:
                    ser.close()
                except (serial.SerialException, OSError):
                    pass
            await asyncio.sleep(self.backoff.next())

    async def _pump(self, ser, emit):
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        fd = ser.fileno()
        loop.add_reader(fd, ready.set)
        interval = getattr(self.protocol, "poll_interval", 0.5)
        if hasattr(self.protocol, "reset"):
            self.protocol.reset()  # a fresh port: no transaction is outstanding on it
        try:
            while True:
                # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a cancellation that arrives in
                # the loop iteration where the awaited event fires (bytes on the port), and the source then runs on
                # after the agent cancelled it, which hung the demo's Ctrl-C (the node writes as it dies).
                try:
                    async with asyncio.timeout(interval):
                        await ready.wait()
                except TimeoutError:
                    pass
                now = self.clock.monotonic()
                if ready.is_set():
                    ready.clear()
                    data = self._read(fd)
                    if data is None:
                        continue
                    self.count("bytes", len(data))
                    self.last_data = now
                    self._deliver(self.protocol.feed(data, now), now, emit)
                    if self.COALESCE_S:
                        # Let the next bytes gather: a busy port is read in chunks of a few ms, not once per write.
                        # The reader is off meanwhile (it is level-triggered: left on, the loop would spin).
                        loop.remove_reader(fd)
                        try:
                            await asyncio.sleep(self.COALESCE_S)
                        finally:
                            loop.add_reader(fd, ready.set)
                        ready.set()
                elif self.last_data is not None and now - self.last_data > self.silent_after:
                    self.count("silent")
                    self.last_data = now
                out = self.protocol.poll(now)
                if out:
                    try:
                        ser.write(out)
                    except (serial.SerialException, OSError) as exc:
                        raise PortGone(exc) from exc
                    except serial.SerialTimeoutException:
                        self.count("write_timeout")
                for reason, n in self.protocol.errors.items():
                    self.counters["error." + reason] = n
        finally:
            loop.remove_reader(fd)

    @staticmethod
    def _read(fd):
        return read_port(fd)

    def _deliver(self, decoded, now, emit):
        for sensor, measurements in decoded:
            sensor = sensor or self.name
            for m in measurements:
                emit(Reading(sensor, m.name, m.value, m.unit, now, m.resolution))
            self.count("records")

    def status(self):
        s = super().status()
        s.update(port=self.port, connected=self.connected)
        return s


def build_serial_source(config, clock, name, state_dir=None):
    """A ``SerialSource`` from its typed config (``drivers/serial/config.py``)."""
    return SerialSource(name, config.port, make_protocol(config.protocol_spec()), clock, baud=config.baud,
                        bytesize=config.bytesize, parity=config.parity, stopbits=config.stopbits)
