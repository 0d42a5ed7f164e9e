# A custom sensor board speaking the line protocol: one "id=<sensor> n=<tick> temp=<C> hum=<%>" line per sensor and
# tick (without "n=<tick>" with --tick 0).
#
# Written to MicroPython's subset: it runs unchanged under the MicroPython unix port and under CPython.
# Usage: line_node.py [--sensors N] [--rate HZ] [--count N] [--seed S] [--prefix NAME] [--start-temp C]
#                     [--checksum 1] [--deadband C] [--heartbeat S] [--tick 0|1] [--fault KIND[:ARG]@TICK ...]
# Output goes to stdout as raw bytes (the harness puts a pseudo-terminal there). It exits after --count ticks
# (0 = run until killed). Values are deterministic for a seed; the "n" field numbers the ticks, so a test can count
# exactly what was produced. It is a test aid, not a measurement: --tick 0 leaves it out (the demo does, unless
# asked for it with --tick-counter), so it does not travel upstream as a reading.
#
# --checksum 1 ends every line with "*HH" (the XOR of the bytes before the '*', as in NMEA).
# With --deadband the node reports by exception: it runs the gateway's own rules engine (gateway/rules, pure and
# MicroPython-compatible) and prints a sensor's line only when its temperature moved by more than the deadband
# since the last line it printed, or when --heartbeat seconds passed without one.
# Faults on demand, as for every node (firmware_sim/faults.py): scheduled with --fault KIND[:ARG]@TICK, or sent as a
# control line on stdin: "!noise 16", "!badsum", "!silence 5", "!burst 200", "!disconnect".
import sys

try:
    from faults import parse_args, run_paced
except ImportError:  # imported as firmware_sim.line_node under CPython
    from firmware_sim.faults import parse_args, run_paced

OPTIONS = {"sensors": 3, "rate": 1.0, "count": 0, "seed": 1, "prefix": "board", "start_temp": 4.0,
           "checksum": 0, "deadband": 0.0, "heartbeat": 0.0, "tick": 1}


def lcg(state):
    return (state * 1103515245 + 12345) & 0x7FFFFFFF


def line(sensor, n, temp, hum, checksum=False, bad=False):
    """One line; ``n`` None leaves the tick counter out."""
    # Fixed-point formatting by hand: MicroPython's float formatting differs in the last digit.
    t = int(round(temp * 100))
    sign = "-" if t < 0 else ""
    t = abs(t)
    tick = "" if n is None else " n=%d" % n
    body = "id=%s%s temp=%s%d.%02d hum=%d.%d" % (sensor, tick, sign, t // 100, t % 100, hum // 10, hum % 10)
    if checksum or bad:
        x = 0
        for c in body.encode():
            x ^= c
        body += "*%02X" % (x ^ 0x5A if bad else x)
    return (body + "\n").encode()


class Sample:
    """A duck-typed reading for the rules engine."""

    def __init__(self, sensor, name, value, t):
        self.sensor = sensor
        self.name = name
        self.value = value
        self.t = t


def rules_engine(deadband, heartbeat):
    try:
        from gateway.core.rules import RuleEngine
    except ImportError:  # on a node flashed with only the rules package
        from rules import RuleEngine
    rule = {"match": {"name": "temp"}, "deadband": deadband}
    if heartbeat > 0:
        rule["heartbeat"] = heartbeat
    return RuleEngine([rule])


class Board:
    def __init__(self, o):
        self.o = o
        self.state = int(o["seed"]) or 1
        self.temps = [o["start_temp"] + 0.5 * k for k in range(int(o["sensors"]))]
        self.period = 1.0 / o["rate"] if o["rate"] > 0 else 0
        self.engine = rules_engine(o["deadband"], o["heartbeat"]) if o["deadband"] > 0 else None

    def tick(self, tick, bad=False):
        """The bytes of one tick: one line per sensor (fewer when reporting by exception)."""
        out = b""
        for k in range(len(self.temps)):
            self.state = lcg(self.state)
            self.temps[k] += ((self.state >> 8) % 21 - 10) / 100.0
            self.state = lcg(self.state)
            hum = 450 + (self.state >> 8) % 100
            sensor = "%s-%d" % (self.o["prefix"], k + 1)
            if self.engine is not None:
                t = tick * self.period if self.period else float(tick)
                if not self.engine.process(Sample(sensor, "temp", round(self.temps[k], 2), t)).send:
                    continue  # report by exception: nothing new worth the airtime
            out += line(sensor, tick if self.o["tick"] else None, self.temps[k], hum, self.o["checksum"], bad and not out)
        return out


def main(argv):
    o, schedule = parse_args(argv, OPTIONS)
    board = Board(o)
    count = o["count"] if o["count"] > 0 else -1  # 0: until killed
    run_paced(board.tick, o["rate"], count, schedule, o["seed"], (0x0A, 0x0D))


if __name__ == "__main__":
    main(sys.argv[1:])
