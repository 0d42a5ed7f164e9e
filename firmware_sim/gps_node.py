"""A GPS tracker node: NMEA 0183 GGA, RMC, VTG and GSA on stdout, along a fixed circuit. MicroPython subset.

Run: ``micropython firmware_sim/gps_node.py [--rate 1.0] [--count -1] [--seed 1] [--sentences GGA,RMC,VTG,GSA]
[--fault KIND[:ARG]@EPOCH ...]`` (CPython works too). One epoch every 1/rate seconds; ``--count N`` stops after N
epochs. The route is a closed five-leg circuit (about 1.1 km) near 48.1173 N 11.5167 E, driven at 12 m/s, starting
2024-06-01 12:00:00 UTC; epoch k is at t = k / rate seconds. ``fix(t)`` gives the true position for tests.

Faults (see ``faults.py``): ``--fault noise:16@3`` or the control line ``!noise 16`` writes 16 noise bytes (never
``$``, CR or LF); ``badsum`` corrupts the checksum of the next epoch's first sentence; ``silence:S`` skips the
epochs of the next S seconds; ``burst:N`` writes the next N epochs at once, faster than the baud rate allows;
``disconnect`` exits. Anything else arriving on stdin is ignored, as a receiver ignores unknown input.
"""

import math
import sys

try:
    from faults import parse_args, run_paced
except ImportError:  # imported as firmware_sim.gps_node under CPython
    from firmware_sim.faults import parse_args, run_paced

LAT0 = 48.1173
LON0 = 11.5167
SPEED = 12.0  # m/s
# the circuit, metres east and north of (LAT0, LON0), closed back to the first point
WAYPOINTS = ((0.0, 0.0), (300.0, 0.0), (300.0, 150.0), (150.0, 250.0), (0.0, 150.0))
START_DAYS = 19875  # 2024-06-01 as days since 1970-01-01
START_SECONDS = 12 * 3600
M_PER_DEG = 111320.0
OPTIONS = {"rate": 1.0, "count": -1, "seed": 1, "sentences": "GGA,RMC,VTG,GSA"}


def _legs():
    legs = []
    for i in range(len(WAYPOINTS)):
        a = WAYPOINTS[i]
        b = WAYPOINTS[(i + 1) % len(WAYPOINTS)]
        legs.append((a, b, math.sqrt((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2)))
    return legs


LEGS = _legs()
PERIMETER = sum(leg[2] for leg in LEGS)


def fix(t):
    """True (lat, lon, course in degrees, speed in m/s) at t seconds after the start."""
    d = (SPEED * t) % PERIMETER
    for a, b, length in LEGS:
        if d <= length:
            break
        d -= length
    f = d / length
    east = a[0] + (b[0] - a[0]) * f
    north = a[1] + (b[1] - a[1]) * f
    course = math.degrees(math.atan2(b[0] - a[0], b[1] - a[1])) % 360.0
    lat = LAT0 + north / M_PER_DEG
    lon = LON0 + east / (M_PER_DEG * math.cos(math.radians(LAT0)))
    return lat, lon, course, SPEED


def civil(days):
    """(year, month, day) from days since 1970-01-01 (Howard Hinnant's algorithm)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if m <= 2 else 0), m, d


def _ddmm(value, deg_digits):
    value = abs(value)
    deg = int(value)
    minutes = (value - deg) * 60.0
    if round(minutes, 4) >= 60.0:
        deg += 1
        minutes = 0.0
    return ("%0" + str(deg_digits) + "d%07.4f") % (deg, minutes)


def checksum(body):
    x = 0
    for b in body:
        x ^= b
    return x


def frame(body, bad=False):
    body = body.encode()
    cs = checksum(body) ^ (0x5A if bad else 0)
    return b"$" + body + ("*%02X\r\n" % cs).encode()


def epoch_bodies(k, rate, kinds):
    """The sentence bodies (text, no ``$``/checksum) of epoch k."""
    t = k / rate
    lat, lon, course, speed = fix(t)
    total = START_SECONDS + t
    days = START_DAYS + int(total // 86400)
    sod = total - (total // 86400) * 86400
    hh = int(sod // 3600)
    mm = int(sod % 3600 // 60)
    ss = sod - hh * 3600 - mm * 60
    hms = "%02d%02d%05.2f" % (hh, mm, ss)
    y, mo, d = civil(days)
    ns = "N" if lat >= 0 else "S"
    ew = "E" if lon >= 0 else "W"
    la = _ddmm(lat, 2)
    lo = _ddmm(lon, 3)
    knots = speed * 3600.0 / 1852.0
    alt = 520.0 + (k % 10) * 0.5
    out = []
    for kind in kinds:
        if kind == "GGA":
            out.append("GPGGA,%s,%s,%s,%s,%s,1,08,0.9,%.1f,M,47.0,M,," % (hms, la, ns, lo, ew, alt))
        elif kind == "RMC":
            out.append("GPRMC,%s,A,%s,%s,%s,%s,%.2f,%.2f,%02d%02d%02d,,,A"
                       % (hms, la, ns, lo, ew, knots, course, d, mo, y % 100))
        elif kind == "VTG":
            out.append("GPVTG,%.2f,T,,M,%.2f,N,%.2f,K,A" % (course, knots, speed * 3.6))
        elif kind == "GSA":
            out.append("GPGSA,A,3,04,05,09,12,24,25,29,31,,,,,1.8,0.9,1.5")
    return out


def epoch_bytes(k, rate, kinds, bad=False):
    bodies = epoch_bodies(k, rate, kinds)
    return b"".join(frame(b, bad and i == 0) for i, b in enumerate(bodies))


def main(argv):
    opts, schedule = parse_args(argv, OPTIONS)
    rate = opts["rate"]
    kinds = [s.strip().upper() for s in opts["sentences"].split(",") if s.strip()]
    run_paced(lambda k, bad: epoch_bytes(k, rate, kinds, bad), rate, opts["count"], schedule, opts["seed"],
              (0x24, 0x0D, 0x0A))


if __name__ == "__main__":
    main(sys.argv[1:])
