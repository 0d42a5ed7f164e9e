"""race-tracking: GPS trackers on serial NMEA through a relay whose link comes and goes; see docs/scenarios.md.

This one runs in real time: the trackers are real MicroPython ``gps_node`` processes on real ptys at 1 Hz.
"""

import asyncio
import bisect
import os
import time

from drivers.serial.adapter import SerialSource
from drivers.serial.protocols import NmeaProtocol
from tools.sim.harness import PtyNode
from gateway.core.clock import SystemClock
from gateway.app.config import BatchSection
from tools.scenarios.runner import Env, checks, rule_engine

DOOR_DEG = 0.00002   # swinging-door bound on lat/lon, about 2 m
HEARTBEAT_S = 3.0    # a held position is forced out after 3 s: the live map lags by little more than that
UP_S, DOWN_S = 4.0, 2.5
MAX_LAG_S = 6.0
RULES = [
    {"match": {"name": "lat"}, "swinging_door": DOOR_DEG, "heartbeat": HEARTBEAT_S, "deadband": 0},
    {"match": {"name": "lon"}, "swinging_door": DOOR_DEG, "heartbeat": HEARTBEAT_S, "deadband": 0},
    {"match": {"name": "speed"}, "deadband": 0.5, "heartbeat": 10.0},
    {"match": {"name": "course"}, "deadband": 5.0, "heartbeat": 10.0},
    {"match": {"sensor": "*"}, "deadband_pct": 5.0, "heartbeat": 30.0},
]


async def run(args, workdir):
    n = 3 if args.quick else 8
    seconds = 16.0 if args.quick else 120.0
    env = Env("race-tracking", workdir)
    clock = SystemClock("synced")
    nodes, sources = [], []
    for i in range(n):
        node = PtyNode("gps_node", ["--rate", 1, "--seed", args.seed + i, "--sentences", "GGA,VTG"],
                       link=os.path.join(workdir, "tty-tracker-%d" % i))
        nodes.append(node.start())
        sources.append(SerialSource("tracker-%d" % i, node.path, NmeaProtocol(["GGA", "VTG"]), clock, baud=9600))
    rules = rule_engine(RULES)
    agent = env.agent(clock, sources, rules, BatchSection(max_readings=200, max_age_s=0.5, time_quantum_s=0.01),
                      backoff=(0.1, 0.5), seed=args.seed)
    positions = {}   # tracker -> [(mono t, lat, lon)] as the agent got them
    agent.observers = [lambda r: r.name in ("lat", "lon") and positions.setdefault(
        (r.sensor, r.name), []).append((r.t, r.value))]
    lags = []
    link = {"cycles": 0}

    async def drive():
        started = time.monotonic()
        up_since = started
        while time.monotonic() - started < seconds:
            phase = (time.monotonic() - started) % (UP_S + DOWN_S)
            up = phase < UP_S
            if up != env.relay.up:
                env.relay.set_up(up)
                link["cycles"] += not up
                up_since = time.monotonic()
            if up and time.monotonic() - up_since > 1.5:   # measured after the backlog of the outage drained
                now = time.time()
                newest = env.receiver.query("SELECT n, MAX(t) FROM records WHERE n LIKE ? GROUP BY n",
                                            (env.gw + "/%/lat",))
                if len(newest) == n:
                    lags.append(max(now - t for _, t in newest))
            await asyncio.sleep(0.25)
        env.relay.set_up(True)

    try:
        await env.run(agent, drive)
        summary = _outcome(env, agent, positions, lags, link, clock)
        summary.update(trackers=n, seconds=seconds, interpreter=os.path.basename(nodes[0].python))
        return summary
    finally:
        for node in nodes:
            node.stop()
        env.close()


def _outcome(env, agent, positions, lags, link, clock):
    offset = clock.wall() - clock.monotonic()
    in_order = True
    worst_err = 0.0
    uncovered = 0
    sent_positions = 0
    for (tracker, quantity), got in positions.items():
        rows = [(t, v) for s, name, t, v, vs in env.records(tracker + "/" + quantity)]
        sent_positions += len(rows) if quantity == "lat" else 0
        times = [t for t, _ in rows]
        if any(b <= a for a, b in zip(times, times[1:])):
            in_order = False
        for t_mono, v in got:  # every position the tracker sent is on the backend's line within the door bound
            t = t_mono + offset
            i = bisect.bisect_left(times, t - 0.02)
            if i < len(times) and abs(times[i] - t) <= 0.02:
                est = rows[i][1]
            elif i == len(times) and rows:
                est = rows[-1][1]  # after the last point sent: held by the deadband, so equal to it
            elif 0 < i < len(times):
                (ta, va), (tb, vb) = rows[i - 1], rows[i]
                est = va + (vb - va) * (t - ta) / (tb - ta)
            else:
                uncovered += 1
                continue
            worst_err = max(worst_err, abs(est - v))
    positions_in = sum(len(v) for (_, q), v in positions.items() if q == "lat")
    delivery = env.delivery()
    summary = {
        "positions_in": positions_in, "positions_sent": sent_positions, "readings_in": agent.counters["readings_in"],
        "readings_sent": agent.counters["readings_sent"],
        "reduction_pct": round(100.0 * (1 - agent.counters["readings_sent"] / max(1, agent.counters["readings_in"])), 1),
        "positions_uncovered": uncovered, "worst_position_error_deg": round(worst_err, 7),
        "in_order": in_order, "link_cuts": link["cycles"], "relay": dict(env.relay.counters),
        "uplink_failures": agent.counters["uplink_failures"],
        "max_lag_up_s": round(max(lags), 2) if lags else None, "lag_samples": len(lags),
        "delivery": delivery,
    }
    return checks(summary, [
        ("positions from every tracker", len(positions) == 2 * summary_n(positions) and positions_in >= 10),
        ("in order per tracker", in_order),
        ("every position on the line within the door bound", uncovered == 0 and worst_err <= DOOR_DEG + 1e-6),
        ("the link really went down", link["cycles"] >= 1 and agent.counters["uplink_failures"] > 0),
        ("fresh while the link is up", bool(lags) and max(lags) <= MAX_LAG_S),
        ("compression reported", sent_positions < positions_in),
        ("every batch delivered once", delivery["batches_missing"] == 0 and delivery["batches_unexpected"] == 0
         and delivery["records_stored"] == delivery["records_committed"]),
    ])


def summary_n(positions):
    return len({tracker for tracker, _ in positions})


def lines(s):
    return [
        "race-tracking: %d GPS trackers (%s gps_node on ptys, NMEA GGA+VTG at 1 Hz), %.0f s, link cut %d times"
        % (s["trackers"], s["interpreter"], s["seconds"], s["link_cuts"]),
        "  positions in %d -> sent %d; all readings in %d -> sent %d (%.1f%% less)"
        % (s["positions_in"], s["positions_sent"], s["readings_in"], s["readings_sent"], s["reduction_pct"]),
        "  in order per tracker: %s; worst position error %.7f deg (bound %.5f); uncovered %d"
        % (s["in_order"], s["worst_position_error_deg"], DOOR_DEG, s["positions_uncovered"]),
        "  newest position lag while the link was up: max %s s over %d samples" % (s["max_lag_up_s"],
                                                                                  s["lag_samples"]),
        "  delivery %s" % s["delivery"],
    ]
