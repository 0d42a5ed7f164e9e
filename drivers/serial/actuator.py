"""The gateway's side of an actuator board (docs/operations.md, "Actuator boards"): it opens the board's serial
port (through ``drivers/serial/adapter.py``, the one module that imports pyserial), sends ``SET`` commands and a
``PING`` keep-alive in the line protocol of ``gateway/core/actuator_link.py``, and waits for each reply.

One command is outstanding at a time (stop and wait). A command with no reply within ``ack_timeout_s`` is sent
again with the same ``seq`` (the board answers a repeat from memory), ``retries`` times; then it is given up:
``error.no_ack`` is counted, and the board is **dead** (an ``actuator_dead`` event raised, in the alarm lane) until
a reply comes again (``actuator_dead`` cleared). A port that cannot be opened or goes away (EIO: the USB adapter
pulled out, the board's process killed) makes the board dead at once; the port is opened again with backoff.
After a board comes back, announces ``BOOT`` or ``SAFE`` (its keep-alive ran out and it switched everything off),
every channel is sent its wanted state again.

The link runs on the event loop's real time (a serial line does), whatever clock stamps the events.
"""

import asyncio
import collections
import logging

from drivers.serial.adapter import PortGone, open_port, read_port, write_port
from gateway.core.actuator_link import COMMAND, MAX_SEQ, NOTICE, REPLY, LinkFramer, encode
from gateway.core.backoff import Backoff
from gateway.core.model import Event

log = logging.getLogger(__name__)

DEAD, NO_ACK, NAK = "actuator_dead", "actuator_no_ack", "actuator_nak"


class ActuatorBoard:
    """One board. ``set(channel, on)`` returns at once; ``run()`` is the task that talks to the board.

    ``emit(event)`` receives the board's events (the agent's ``emit``); ``stamp()`` gives their time (the agent's
    monotonic clock). ``history`` keeps the last commands: ``{channel, on, queued, sent, acked, tries}`` with
    loop times, ``acked`` None for a command given up.
    """

    def __init__(self, config, emit=None, stamp=None, opener=None, backoff=(0.2, 5.0), rng=None):
        self.config = config
        self.name = config.name
        self.port = config.port
        self.emit = emit or (lambda event: None)
        self.stamp = stamp or (lambda: 0.0)
        self.opener = opener or (lambda: open_port(config.port, baudrate=config.baud))
        self.backoff = Backoff(backoff[0], backoff[1], rng)
        self.counters = collections.Counter()
        self.wanted = {}  # channel -> bool: what the gateway wants the board to show
        self.states = {}  # channel -> 0/1: what the board said in its last ACK
        self.history = collections.deque(maxlen=64)
        self.alive = None  # None: not heard yet; True; False: dead (reported)
        self.last_ack = None  # stamp() of the board's last reply (a command's or a keep-alive's)
        self.connected = False
        self._queue = collections.deque()  # channels whose wanted state is to be sent
        self._queued_at = {}
        self._seq = 0
        self._framer = LinkFramer()
        self._expect = None  # (seq, future) of the outstanding command
        self._wake = None

    # -- what the actions runner calls ------------------------------------------------------------------------
    def set(self, channel, on):
        """Want ``channel`` on or off; the command goes out as soon as the line is free."""
        if channel not in self.config.channels:
            raise ValueError("board %s has no channel %r" % (self.name, channel))
        self.wanted[channel] = bool(on)
        self._enqueue(channel)

    def status(self):
        return {"name": self.name, "port": self.port, "connected": self.connected,
                "state": {None: "unknown", True: "alive", False: "dead"}[self.alive], "last_ack": self.last_ack,
                "channels": list(self.config.channels), "wanted": dict(self.wanted), "board": dict(self.states),
                "counters": dict(self.counters)}

    # -- the task ---------------------------------------------------------------------------------------------
    async def run(self):
        self._wake = asyncio.Event()
        while True:
            try:
                ser = self.opener()
            except (OSError, ValueError) as exc:
                self.counters["open_failed"] += 1
                self._dead("cannot open %s: %s" % (self.port, exc))
                await asyncio.sleep(self.backoff.next())
                continue
            self.connected = True
            log.info("actuator %s: opened %s", self.name, self.port)
            try:
                await self._session(ser)
            except PortGone as exc:
                self.counters["reopen"] += 1
                self._dead("%s went away (%s)" % (self.port, exc))
            finally:
                self.connected = False
                self._expect = None
                try:
                    ser.close()
                except OSError:
                    pass
            await asyncio.sleep(self.backoff.next())

    async def _session(self, ser):
        loop = asyncio.get_running_loop()
        fd = ser.fileno()
        gone = loop.create_future()

        def readable():
            try:
                data = read_port(fd)
            except PortGone as exc:
                loop.remove_reader(fd)
                if not gone.done():
                    gone.set_exception(exc)
                return
            if data:
                self._receive(data)
        loop.add_reader(fd, readable)
        self._resync()  # a fresh port: the board may have rebooted meanwhile
        sender = asyncio.ensure_future(self._send_loop(ser))
        try:
            await asyncio.wait((gone, sender), return_when=asyncio.FIRST_COMPLETED)
            if gone.done():
                gone.result()  # raises PortGone
            sender.result()
        finally:
            loop.remove_reader(fd)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            if not gone.done():
                gone.cancel()

    async def _send_loop(self, ser):
        keepalive = self.config.keepalive_s
        while True:
            if not self._queue:
                self._wake.clear()
                try:
                    async with asyncio.timeout(keepalive):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            if self._queue:
                channel = self._queue.popleft()
                await self._command(ser, channel)
            else:
                await self._transact(ser, "PING", ())

    async def _command(self, ser, channel):
        on = self.wanted[channel]
        entry = {"channel": channel, "on": on, "queued": self._queued_at.pop(channel, None), "sent": None,
                 "acked": None, "tries": 0}
        self.history.append(entry)
        reply = await self._transact(ser, "SET", (channel, "1" if on else "0"), entry)
        if reply is None:
            self.emit(Event(self.name, NO_ACK, "info", "SET %s %d not acknowledged after %d tries" % (
                channel, on, entry["tries"]), self.stamp()))
        elif reply.verb == "NAK":
            self.counters["error.nak"] += 1
            reason = " ".join(reply.args) or "no reason"
            log.error("actuator %s: SET %s %d refused: %s", self.name, channel, on, reason)
            self.emit(Event(self.name, NAK, "info", "SET %s %d refused: %s" % (channel, on, reason), self.stamp()))

    async def _transact(self, ser, verb, args, entry=None):
        """Send one command and wait for its reply, retrying; the reply ``Frame`` or None (given up)."""
        loop = asyncio.get_running_loop()
        seq = self._seq
        self._seq = (seq + 1) % MAX_SEQ
        frame = encode(COMMAND, seq, verb, args)
        for attempt in range(self.config.retries + 1):
            future = loop.create_future()
            self._expect = (seq, future)
            if attempt:
                self.counters["error.retry"] += 1
            write_port(ser, frame)
            self.counters["sent"] += 1
            if entry is not None:
                entry["tries"] = attempt + 1
                entry["sent"] = entry["sent"] or loop.time()
            try:
                async with asyncio.timeout(self.config.ack_timeout_s):
                    reply = await future
            except TimeoutError:
                continue
            finally:
                self._expect = None
            self.counters["acked"] += 1
            self.last_ack = self.stamp()
            if entry is not None:
                entry["acked"] = loop.time()
            self._alive()
            return reply
        self.counters["error.no_ack"] += 1
        log.error("actuator %s: %s: no reply after %d tries", self.name, " ".join((verb,) + tuple(args)),
                  self.config.retries + 1)
        self._dead("no reply to %s after %d tries" % (verb, self.config.retries + 1))
        return None

    # -- what the board says ----------------------------------------------------------------------------------
    def _receive(self, data):
        for frame in self._framer.feed(data):
            if frame.lead == REPLY:
                expect = self._expect
                if expect is not None and frame.seq == expect[0] and not expect[1].done():
                    states = frame.states()
                    self.states.update(states)
                    expect[1].set_result(frame)
                else:
                    self.counters["late_replies"] += 1  # the answer to a try we gave up on
            elif frame.lead == NOTICE:
                self.counters["notice." + frame.verb.lower()] += 1
                if frame.verb in ("BOOT", "SAFE"):
                    log.warning("actuator %s: board says %s %s; sending every channel's state again", self.name,
                                frame.verb, " ".join(frame.args))
                    self.states = {c: 0 for c in self.config.channels}
                    self._resync()
        for reason, n in self._framer.errors.items():
            self.counters["error." + reason] = n

    # -- state ------------------------------------------------------------------------------------------------
    def _enqueue(self, channel):
        if channel not in self._queue:
            self._queue.append(channel)
            self._queued_at[channel] = asyncio.get_running_loop().time()
        if self._wake is not None:
            self._wake.set()

    def _resync(self):
        for channel in self.wanted:
            self._enqueue(channel)

    def _alive(self):
        if self.alive is False:
            self.emit(Event(self.name, DEAD, "cleared", "%s answers again" % self.port, self.stamp(), alarm=True))
            log.warning("actuator %s: answers again", self.name)
            self.alive = True
            self._resync()
        self.alive = True
        self.backoff.reset()

    def _dead(self, why):
        if self.alive is not False:
            self.counters["error.dead"] += 1
            log.error("actuator %s: dead: %s", self.name, why)
            self.emit(Event(self.name, DEAD, "raised", why, self.stamp(), alarm=True))
        self.alive = False
