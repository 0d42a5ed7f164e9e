# A custom sensor board speaking the line protocol: one "id=<sensor> temp=<C> hum=<%>" line per sensor and tick.
#
# Written to MicroPython's subset: it runs unchanged under the MicroPython unix port and under CPython.
# Usage: line_node.py [--sensors N] [--rate HZ] [--count N] [--seed S] [--prefix NAME] [--start-temp C]
#                     [--deadband C] [--heartbeat S]
# With --deadband the node reports by exception: it runs the gateway's own rules engine (gateway/rules, pure and
# MicroPython-compatible) and prints a sensor's line only when its temperature moved by more than the deadband
# since the last line it printed, or when --heartbeat seconds passed without one.
# Output goes to stdout as raw bytes (the harness puts a pseudo-terminal there). It exits after --count ticks
# (0 = run until killed). Values are deterministic for a seed; readings are numbered by a "n" field so a test
# can count exactly what was produced.
import sys
import time


def lcg(state):
    return (state * 1103515245 + 12345) & 0x7FFFFFFF


def args(argv):
    opts = {"sensors": 3, "rate": 1.0, "count": 0, "seed": 1, "prefix": "board", "start-temp": 4.0,
            "deadband": 0.0, "heartbeat": 0.0}
    i = 1
    while i < len(argv):
        key = argv[i][2:]
        if key in opts and i + 1 < len(argv):
            val = argv[i + 1]
            opts[key] = val if key == "prefix" else float(val)
            i += 2
        else:
            i += 1
    return opts


def line(sensor, n, temp, hum):
    # Fixed-point formatting by hand: MicroPython's float formatting differs in the last digit.
    t = int(round(temp * 100))
    sign = "-" if t < 0 else ""
    t = abs(t)
    return "id=%s n=%d temp=%s%d.%02d hum=%d.%d\n" % (sensor, n, sign, t // 100, t % 100, hum // 10, hum % 10)


class Sample:
    """A duck-typed reading for the rules engine."""

    def __init__(self, sensor, name, value, t):
        self.sensor = sensor
        self.name = name
        self.value = value
        self.t = t


def rules_engine(deadband, heartbeat):
    try:
        from gateway.rules import RuleEngine
    except ImportError:  # on a node flashed with only the rules package
        from rules import RuleEngine
    rule = {"match": {"name": "temp"}, "deadband": deadband}
    if heartbeat > 0:
        rule["heartbeat"] = heartbeat
    return RuleEngine([rule])


def main():
    o = args(sys.argv)
    sensors = int(o["sensors"])
    period = 1.0 / o["rate"] if o["rate"] > 0 else 0
    count = int(o["count"])
    state = int(o["seed"]) or 1
    temps = [o["start-temp"] + 0.5 * k for k in range(sensors)]
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
    engine = rules_engine(o["deadband"], o["heartbeat"]) if o["deadband"] > 0 else None
    tick = 0
    start = time.time()
    while count == 0 or tick < count:
        for k in range(sensors):
            state = lcg(state)
            temps[k] += ((state >> 8) % 21 - 10) / 100.0
            state = lcg(state)
            hum = 450 + (state >> 8) % 100
            sensor = "%s-%d" % (o["prefix"], k + 1)
            if engine is not None:
                t = tick * period if period else float(tick)
                if not engine.process(Sample(sensor, "temp", round(temps[k], 2), t)).send:
                    continue  # report by exception: nothing new worth the airtime
            out.write(line(sensor, tick, temps[k], hum).encode())
        if hasattr(out, "flush"):
            out.flush()
        tick += 1
        if period:
            delay = start + tick * period - time.time()
            if delay > 0:
                time.sleep(delay)


main()
