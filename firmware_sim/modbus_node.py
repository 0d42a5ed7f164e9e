"""A Modbus RTU slave that looks like a small energy meter. MicroPython subset; runs under CPython too.

Run: ``micropython firmware_sim/modbus_node.py [--slave 1] [--seed 1] [--count -1] [--fault KIND[:ARG]@N ...]``.
It reads requests on stdin and answers on stdout. Functions 3 (holding) and 4 (input registers) are served from
the tables below; a range outside a table answers exception 2 (illegal data address), a quantity outside 1..125
exception 3, any other function with a valid 8-byte frame exception 1. Frames for other slaves and noise are
skipped. ``--count N`` exits after N answered requests; it also exits when stdin closes.

Input registers (function 4), values for request number n (``values(n)``):

=======  =========  ==================  ==========================================================
address  type       name                value
=======  =========  ==================  ==========================================================
0-1      float32    voltage (V)         230.0 + 0.5 * (n % 5)
2-3      float32    current (A)         1.25 + 0.25 * (n % 4)
4-5      float32    power (W)           voltage * current
6-7      uint32     energy (Wh)         1234567 + n
8        uint16     frequency x0.01 Hz  5000
9        int16      power factor x0.001 -950
10-11    int32, little word order       export energy (Wh), -70000 - n
=======  =========  ==================  ==========================================================

Holding registers (function 3): 0 slave id, 1 baud rate / 100 (96), 2-3 serial number uint32 (20240601).

Faults (see ``faults.py``), N counting requests addressed to this slave: ``noise`` sends noise bytes (never the
slave id) before the next answer, ``badsum`` corrupts the next answer's CRC, ``silence:S`` ignores requests for S
seconds, ``burst:N`` sends the next answer N times back to back, ``disconnect`` exits. Control lines ``!noise 8``
etc. on stdin work when the slave id is not 33 (0x21, the byte ``!``).
"""

import struct
import sys

try:
    from faults import Line, Rng, parse_args, split_controls, now_ms, elapsed_ms
except ImportError:  # imported as firmware_sim.modbus_node under CPython
    from firmware_sim.faults import Line, Rng, parse_args, split_controls, now_ms, elapsed_ms

OPTIONS = {"slave": 1, "seed": 1, "count": -1}


def crc16(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(frame, bad=False):
    crc = crc16(frame) ^ (0xFFFF if bad else 0)
    return frame + bytes((crc & 0xFF, crc >> 8))


def values(n):
    """The meter's readings at request number n, as the register map names them."""
    voltage = 230.0 + 0.5 * (n % 5)
    current = 1.25 + 0.25 * (n % 4)
    return {
        "voltage": voltage,
        "current": current,
        "power": voltage * current,
        "energy": 1234567 + n,
        "frequency": 50.0,
        "pf": -0.95,
        "export": -70000 - n,
    }


def input_registers(n):
    v = values(n)
    words = struct.unpack(">6H", struct.pack(">fff", v["voltage"], v["current"], v["power"]))
    words += struct.unpack(">2H", struct.pack(">I", v["energy"]))
    words += (5000, 0x10000 - 950)
    hi, lo = struct.unpack(">2H", struct.pack(">i", v["export"]))
    return words + (lo, hi)  # little word order: low word first


def holding_registers(slave):
    serial = 20240601
    return (slave, 96, serial >> 16, serial & 0xFFFF)


def answer(slave, request, n):
    """The response frame (without CRC) to an 8-byte request already checked for slave and CRC."""
    function = request[1]
    address, count = struct.unpack(">HH", request[2:6])
    if function == 4:
        table = input_registers(n)
    elif function == 3:
        table = holding_registers(slave)
    else:
        return bytes((slave, function | 0x80, 1))
    if not 1 <= count <= 125:
        return bytes((slave, function | 0x80, 3))
    if address + count > len(table):
        return bytes((slave, function | 0x80, 2))
    words = table[address:address + count]
    return bytes((slave, function, 2 * count)) + struct.pack(">%dH" % count, *words)


def main(argv):
    opts, schedule = parse_args(argv, OPTIONS)
    slave = opts["slave"]
    rng = Rng(opts["seed"])
    line = Line()
    buf = b""
    n = 0
    silent_until = None
    pending = []
    while opts["count"] < 0 or n < opts["count"]:
        data = line.read(200)
        if not data and not line.open:
            return
        buf += data
        while buf:
            if slave != 0x21 and buf[:1] == b"!":
                new, rest = split_controls(buf)
                pending.extend(new)
                if rest == buf:
                    break  # a control line still arriving
                buf = rest
                continue
            if buf[0] != slave:
                buf = buf[1:]
                continue
            if len(buf) < 8:
                break
            request = buf[:8]
            if crc16(request[:6]) != request[6] | (request[7] << 8):
                buf = buf[1:]
                continue
            buf = buf[8:]
            faults = pending + schedule.pop(n, [])
            pending = []
            noise = b""
            bad = False
            repeat = 1
            for kind, arg in faults:
                if kind == "noise":
                    noise += rng.noise(arg, (slave,))
                elif kind == "badsum":
                    bad = True
                elif kind == "silence":
                    silent_until = (now_ms(), int(arg * 1000))
                elif kind == "burst":
                    repeat = max(1, arg)
                elif kind == "disconnect":
                    sys.exit(0)
            if silent_until is not None:
                if elapsed_ms(silent_until[0]) < silent_until[1]:
                    n += 1
                    continue
                silent_until = None
            line.write(noise + with_crc(answer(slave, request, n), bad) * repeat)
            n += 1


if __name__ == "__main__":
    main(sys.argv[1:])
