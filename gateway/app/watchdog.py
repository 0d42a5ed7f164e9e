"""systemd readiness and watchdog over ``sd_notify``, spoken directly (no dependency).

The protocol is one unix datagram per message to the socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract
socket when it starts with ``@``). The agent sends:

* ``READY=1`` once the store is open and the event loop runs the agent (``Type=notify`` waits for it);
* ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` from a task *on the event loop*, so the keep-alives stop when the
  loop stalls (a blocking call, a deadlock) and systemd kills and restarts the agent after ``WatchdogSec=``;
* ``STOPPING=1`` when a stop was asked for (SIGTERM, the console's ``restart``).

Without ``$NOTIFY_SOCKET`` (a shell, the tests, the demo) nothing is sent. ``$WATCHDOG_PID``, when set, must be
our pid, as ``sd_watchdog_enabled(3)`` requires.

There is no stall switch in the product: ``tests/system/test_watchdog.py`` starts the agent through a launcher that
adds one (SIGUSR2 blocks the loop) and watches the keep-alives stop.
"""

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """``sd_notify`` to ``address`` (None: every message is dropped)."""

    def __init__(self, address=None, watchdog_usec=0):
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock = None
        self._failing = False  # a failed send is logged once, until one succeeds again

    @classmethod
    def from_env(cls, environ=None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        elif address and not address.startswith("/"):
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket: not notifying systemd", address)
            address = None
        usec = 0
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
            pid = env.get("WATCHDOG_PID")
            if pid and int(pid) != os.getpid():
                usec = 0  # the watchdog is meant for another process
        except ValueError:
            log.warning("WATCHDOG_USEC/WATCHDOG_PID are not numbers: no watchdog keep-alives")
            usec = 0
        return cls(address, max(usec, 0))

    @property
    def enabled(self):
        return self.address is not None

    @property
    def interval(self):
        """Seconds between keep-alives (half the watchdog timeout), or None when systemd set no watchdog."""
        return self.watchdog_usec / 2e6 if self.enabled and self.watchdog_usec else None

    def notify(self, message):
        """Send one ``KEY=VALUE`` datagram; a failure is logged (systemd may be restarting), never raised."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode("ascii"), self.address)
        except OSError as exc:
            if not self._failing:
                log.warning("sd_notify %s to NOTIFY_SOCKET failed: %s (logged once until it works again)",
                            message, exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def supervise(notifier, stop):
    """``READY=1`` now, ``WATCHDOG=1`` every ``notifier.interval`` until cancelled, ``STOPPING=1`` once ``stop``
    is set. Run as a task beside the agent: the keep-alives come from the event loop itself."""
    notifier.notify("READY=1")
    interval = notifier.interval
    stopping = False
    while True:
        if not stopping and stop.is_set():
            stopping = True
            notifier.notify("STOPPING=1")
            if not interval:
                return
        if interval:
            notifier.notify("WATCHDOG=1")
        if stopping:
            await asyncio.sleep(interval)  # keep-alives while the agent flushes and closes
            continue
        try:
            async with asyncio.timeout(interval):  # None: no keep-alives, wait for the stop only
                await stop.wait()
        except TimeoutError:
            pass
