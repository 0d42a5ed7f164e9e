"""Shared helpers for the serial firmware nodes, written to MicroPython's subset (no dataclasses, no typing).

Faults on demand, the same for every node, two ways:

* on the command line, scheduled: ``--fault KIND[:ARG]@N`` (repeatable), where N is the epoch (GPS node) or the
  request number (Modbus node), counting from 0. Example: ``--fault noise:16@2 --fault silence:1.5@5``.
* at run time, a control line on stdin (the serial line's other end): ``!noise 16``, ``!badsum``,
  ``!silence 1.5``, ``!burst 200``, ``!disconnect``, each ended by LF.

Kinds: ``noise [N]`` N random bytes (default 16) that never form a frame, ``badsum`` the next frame gets a wrong
checksum, ``silence [S]`` send nothing for S seconds (default 5), ``burst [N]`` N frames back to back with no
pacing (default 200), ``disconnect`` close the line and exit with status 0.

Randomness is a xorshift32 seeded by ``--seed``, so MicroPython and CPython emit the same bytes.
"""

import argparse
import sys

try:
    import os
    _os_read = os.read
    _os_write = os.write
except (ImportError, AttributeError):  # MicroPython: os has no read/write, the std streams are unbuffered
    _os_read = None
    _os_write = None

try:
    import select
except ImportError:  # pragma: no cover - every port we run on has it
    import uselect as select

import time

KINDS = ("noise", "badsum", "silence", "burst", "disconnect")
DEFAULTS = {"noise": 16, "silence": 5.0, "burst": 200}


try:
    from fridge import XorShift32
except ImportError:  # imported as firmware_sim.faults under CPython
    from firmware_sim.fridge import XorShift32


class Rng(XorShift32):
    """xorshift32 (firmware_sim/fridge.py), seeded through a multiplicative hash so nearby seeds diverge."""

    def __init__(self, seed):
        XorShift32.__init__(self, (seed * 2654435761 + 1) & 0xFFFFFFFF or 1)

    def noise(self, n, forbidden):
        out = bytearray()
        while len(out) < n:
            b = self.next() & 0xFF
            if b not in forbidden:
                out.append(b)
        return bytes(out)


def parse_fault(text):
    """``"silence:1.5"`` or ``"silence 1.5"`` -> ``("silence", 1.5)``; raises ValueError."""
    text = text.strip().replace(":", " ")
    parts = text.split()
    if not parts or parts[0] not in KINDS:
        raise ValueError("unknown fault %r; known: %s" % (text, ", ".join(KINDS)))
    kind = parts[0]
    arg = DEFAULTS.get(kind)
    if len(parts) > 1:
        arg = float(parts[1]) if kind == "silence" else int(parts[1])
    return kind, arg


def parse_args(argv, options):
    """``--name value`` options through argparse (the unix port ships micropython-lib's). ``options`` maps name ->
    default, whose type converts the value (``--start-temp 3.5``: ``start_temp``). Returns (dict, schedule) where
    schedule maps N -> [(kind, arg), ...] from ``--fault KIND[:ARG]@N``. ``--fault`` repeats, which
    micropython-lib's argparse cannot (no ``action="append"``), so it is taken out of ``argv`` first. A bad option
    prints the usage and exits with status 2."""
    schedule = {}
    rest = []
    i = 0
    while i < len(argv):
        if argv[i] == "--fault" and i + 1 < len(argv):
            spec, _, at = argv[i + 1].partition("@")
            schedule.setdefault(int(at or "0"), []).append(parse_fault(spec))
            i += 2
        else:
            rest.append(argv[i])
            i += 1
    parser = argparse.ArgumentParser()
    for name, default in options.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                            help="default %s" % (default,))
    parser.add_argument("--fault", help="KIND[:ARG]@N, repeatable: %s" % ", ".join(KINDS))
    args = parser.parse_args(rest)
    return dict((name, getattr(args, name)) for name in options), schedule


def now_ms():
    return time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.monotonic() * 1000)


def elapsed_ms(start):
    if hasattr(time, "ticks_diff"):
        return time.ticks_diff(time.ticks_ms(), start)
    return now_ms() - start


class Line:
    """The node's serial line: stdin and stdout as raw, unbuffered bytes."""

    def __init__(self):
        self.poller = select.poll()
        self.poller.register(0, select.POLLIN)
        self.open = True  # stdin still open
        self.stdout = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
        self.stdin = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin

    def write(self, data):
        if _os_write is not None:
            view = memoryview(data)
            while len(view):
                view = view[_os_write(1, view):]
        else:
            self.stdout.write(data)

    def read(self, timeout_ms):
        """Bytes available within ``timeout_ms`` (b"" if none); sleeps the whole timeout once stdin is closed."""
        if not self.open:
            if timeout_ms > 0:
                if hasattr(time, "sleep_ms"):
                    time.sleep_ms(int(timeout_ms))
                else:
                    time.sleep(timeout_ms / 1000)
            return b""
        if not self.poller.poll(max(0, int(timeout_ms))):
            return b""
        if _os_read is not None:
            data = _os_read(0, 4096)
        else:  # MicroPython's FileIO.read(n) waits for n bytes, so take one byte at a time while any is ready
            data = self.stdin.read(1)
            while data and len(data) < 4096 and self.poller.poll(0):
                more = self.stdin.read(1)
                if not more:
                    break
                data += more
        if not data:
            self.open = False
            self.poller.unregister(0)
        return data or b""


def split_controls(buf):
    """Take complete ``!...\\n`` control lines off the front of ``buf``: returns (faults, rest).

    Only for nodes whose ordinary input is text or that cannot see ``!`` first (the Modbus node checks its slave
    id is not 0x21 before calling this)."""
    faults = []
    while buf[:1] == b"!":
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) > 64:
                return faults, buf[1:]  # not a control line after all
            break
        try:
            faults.append(parse_fault(buf[1:end].decode()))
        except (ValueError, UnicodeError):
            pass
        buf = buf[end + 1:]
    return faults, buf


def run_paced(make, rate, count, schedule, seed, forbidden):
    """The main loop of a node that sends on a clock (the GPS tracker, the line board), with faults on demand.

    ``make(k, bad)`` returns the bytes of tick ``k`` (``bad``: spoil the first frame's checksum); it is called for
    silent ticks too, so a node's state goes on. ``count`` < 0 runs until killed. ``schedule`` maps a tick to
    faults (``parse_args``); control lines on stdin add faults at run time. ``forbidden`` are bytes noise never
    contains (frame delimiters).
    """
    line = Line()
    rng = Rng(seed)
    period = 1000.0 / rate if rate > 0 else 0.0
    start = now_ms()
    inbox = b""
    k = 0
    silent_until = -1
    bad_next = False
    while count < 0 or k < count:
        faults = schedule.pop(k, [])
        while True:  # wait for tick k, taking control lines as they come
            wait = k * period - elapsed_ms(start)
            data = line.read(wait if wait > 0 else 0)
            if data:
                inbox += data
                new, inbox = split_controls(inbox)
                faults.extend(new)
                if inbox[:1] != b"!":
                    inbox = b""  # ordinary input: these nodes ignore it
            if wait <= 0 or faults:
                break
        burst = 0
        for kind, arg in faults:
            if kind == "noise":
                line.write(rng.noise(arg, forbidden))
            elif kind == "badsum":
                bad_next = True
            elif kind == "silence":
                silent_until = k + int(arg * rate + 0.5)
            elif kind == "burst":
                burst = arg
            elif kind == "disconnect":
                sys.exit(0)
        if k * period > elapsed_ms(start) and not burst:
            continue  # a control line arrived early; go back to waiting for this tick
        if burst:
            line.write(b"".join(make(k + i, False) for i in range(burst)))
            k += burst
            continue
        data = make(k, bad_next)
        if k >= silent_until:
            line.write(data)
            bad_next = False
        k += 1
