"""cold-chain (smart hospital): fridges, freezers and blood-bag coolers on BLE; see docs/scenarios.md.

The ward has a buzzer board (firmware_sim/actuator_board.py under MicroPython, on a pty): a local action sounds it
while a fridge's high alarm is raised, with the uplink up or down, and the board's death is reported upstream.
"""

import asyncio
import os
import time

from firmware_sim import ble_nodes
from firmware_sim.fridge import XorShift32, samples
from tools.sim.harness import PtyNode
from tools.sim.radio import SimulatedRadio
from gateway.core.actions import parse_actions
from gateway.core.clock import FakeClock
from gateway.app.actions import ActionRunner
from gateway.app.config import BatchSection
from drivers.serial.actuator import DEAD, ActuatorBoard
from tools.scenarios.runner import Env, checks, rule_engine

ADVERT_S = 30.0          # each sensor advertises every 30 simulated seconds
GEN_DT = 10.0            # the fridge model integrates in 10 s steps
GATE_S = 900.0           # the agent's rules tick at least every 15 simulated minutes ...
GATE_FINE_S = 300.0      # ... and every 5 minutes around the outage
HIGH, DELAY_ON, RISE = 8.0, 900.0, 0.25 / 60  # fridge limit (degC), alarm delay (s), failure rise (degC/s)
OUTAGE = (165 * 60.0, 195 * 60.0)   # the uplink is cut for 30 simulated minutes in the middle
HOURS = 6.0
REPAIR_AFTER, COOL_BACK = (110 * 60.0, OUTAGE[1] + 5 * 60.0), 1.0 / 60  # compressors repaired; degC/s back down
KILL_BOARD = 5 * 3600.0  # the buzzer board dies (its process killed) 5 simulated hours in
BUZZER_BOARD = {"name": "ward-buzzer", "keepalive_s": 0.5, "ack_timeout_s": 0.3, "retries": 2}
BUZZER_ACTION = {"name": "fridge-buzzer", "on": "alarm", "match": {"sensor": "fridge-*", "quantity": "temp",
                 "level": "high*"}, "actuator": "ward-buzzer", "channel": "buzzer", "min_interval_s": 1.0}

RULES = [
    {"match": {"sensor": "cooler-*", "name": "temp"}, "low": 2.0, "high": 6.0, "hysteresis": 0.3,
     "delay_on": DELAY_ON},
    {"match": {"sensor": "cooler-*"}, "stale_after": 4 * 3600.0},
    {"match": {"sensor": "freezer-*", "name": "temp"}, "low": -30.0, "high": HIGH - 24, "hysteresis": 0.5,
     "delay_on": DELAY_ON},
    {"match": {"sensor": "fridge-*", "name": "temp"}, "low": 2.0, "high": HIGH, "hysteresis": 0.5,
     "delay_on": DELAY_ON},
    {"match": {"name": "temp"}, "deadband": 0.2, "heartbeat": 900.0},
    {"match": {"sensor": "*"}, "stale_after": 3600.0, "deadband_pct": 2.0, "heartbeat": 3600.0},
]

# coolers: (name, leaves at, comes back at, temperature when back)
COOLERS = (("cooler-A", 60 * 60.0, 180 * 60.0, None),     # away 2 h, in range: no event
           ("cooler-B", 45 * 60.0, 315 * 60.0, None),     # away 4.5 h: "silent" after 4 h
           ("cooler-C", 90 * 60.0, 200 * 60.0, 9.0))      # back after 1.8 h but warm: alarm.high


def _mac(kind, i):
    return bytes((0xA4 if kind == "bthome" else 0xC9, 0xC1, 0x38, kind == "bthome", i >> 8, i & 0xFF))


def _series(seed, n):
    """Advert-time values of one fridge (degC), from firmware_sim.fridge at 10 s steps."""
    step = int(ADVERT_S / GEN_DT)
    return [v for k, (_, v) in enumerate(samples(seed, n * ADVERT_S, GEN_DT)) if k % step == 0]


def _fail(series, t_fail, t_repair):
    """A compressor failure at ``t_fail``: a steady rise of RISE degC/s towards the room; repaired at ``t_repair``,
    it cools back at COOL_BACK degC/s until the thermostat's own series takes over again."""
    k0, kr = int(t_fail / ADVERT_S), int(t_repair / ADVERT_S)
    v0 = series[k0]
    for k in range(k0, len(series)):
        if k < kr:
            series[k] = round(min(21.0, v0 + RISE * (k - k0) * ADVERT_S), 2)
        else:
            series[k] = round(max(series[k], series[kr - 1] - COOL_BACK * (k - kr + 1) * ADVERT_S), 2)
    return series


def _alarm_due(series, high):
    """Ground truth: (crossing time, the earliest time the delayed alarm may be raised)."""
    start = None
    for k, v in enumerate(series):
        if v > high:
            if start is None:
                start = k * ADVERT_S
            if k * ADVERT_S - start >= DELAY_ON:
                return start, k * ADVERT_S
        else:
            start = None
    return None, None


def _build(n_sensors, seed, steps):
    """The sensors with their whole series, decided before the run (deterministic for the seed)."""
    rng = XorShift32(seed * 7919 + 1)
    n_freezers = n_sensors // 5
    n_fridges = n_sensors - n_freezers - len(COOLERS)
    sensors = []
    for i in range(n_fridges):
        sensors.append({"name": "fridge-%03d" % i, "fmt": "bthome", "mac": _mac("bthome", i),
                        "values": _series(seed * 1000 + i, steps), "offset": 0.0})
    for i in range(n_freezers):
        sensors.append({"name": "freezer-%03d" % i, "fmt": "ruuvi", "mac": _mac("ruuvi", i),
                        "values": _series(seed * 1000 + 500 + i, steps), "offset": -24.0})
    for j, (name, leave, back, warm) in enumerate(COOLERS):
        vals = [round(4.0 + rng.uniform(-0.3, 0.3), 2) for _ in range(steps)]
        if warm is not None:  # comes back warm, then cools at 0.1 degC/min in the fridge
            kb = int(back / ADVERT_S)
            for k in range(kb, steps):
                vals[k] = round(max(vals[k], warm - 0.1 / 60 * (k - kb) * ADVERT_S), 2)
        sensors.append({"name": name, "fmt": "bthome", "mac": _mac("bthome", 0x800 + j), "values": vals,
                        "offset": 0.0, "away": (leave, back)})
    # two compressor failures: one while the link is up, one whose alarm falls inside the outage
    first, second = sensors[1], sensors[2]
    _fail(first["values"], 60 * 60.0, REPAIR_AFTER[0])
    target = OUTAGE[0] + 20 * 60.0   # the second alarm lands 20 minutes into the outage
    candidates = [target - DELAY_ON - k * ADVERT_S for k in range(1, 120)]
    t_fail = min((c for c in candidates if c > ADVERT_S), key=lambda c: abs(
        c + (HIGH - second["values"][int(c / ADVERT_S)]) / RISE + DELAY_ON - target))
    _fail(second["values"], t_fail, REPAIR_AFTER[1])
    first["failed"], second["failed"] = 60 * 60.0, t_fail
    return sensors


def _advert(s, k, value):
    if s["fmt"] == "bthome":
        return {"service_data": {ble_nodes.BTHOME_UUID: ble_nodes.bthome_adv(k & 0xFF, value, 45.0, 90)}}
    return {"manufacturer_data": {ble_nodes.RUUVI_COMPANY_ID: ble_nodes.ruuvi_adv(
        s["mac"], temp_c=value, hum_pct=30.0, batt_mv=2900, seq=k)}}


async def run(args, workdir):
    n_sensors = 60 if args.quick else 700
    hours = HOURS if args.quick else 12.0
    steps = int(hours * 3600 / ADVERT_S)
    sensors = _build(n_sensors, args.seed, steps)
    env = Env("cold-chain", workdir)
    clock = FakeClock(mono=1000.0, wall=1_750_000_000.0)
    t0 = clock.monotonic()
    radio = SimulatedRadio("ble", clock, [(":".join("%02X" % b for b in s["mac"]), s["name"]) for s in sensors])
    rules = rule_engine(RULES)
    node = PtyNode("actuator_board", ["--log", os.path.join(workdir, "buzzer.log"), "--timeout-ms", "5000"],
                   link=os.path.join(workdir, "ttyACM-buzzer")).start()
    boards, actions = parse_actions([dict(BUZZER_BOARD, port=node.link)], [BUZZER_ACTION])
    board = ActuatorBoard(boards[0], stamp=clock.monotonic, backoff=(0.1, 1.0))
    runner = ActionRunner(actions, [board], clock, env.gw)
    agent = env.agent(clock, [radio], rules, BatchSection(max_readings=1000, max_age_s=300.0, time_quantum_s=1.0),
                      seed=args.seed, actions=runner)
    marks = {}
    excursions = {}

    async def drive():
        next_gate = 0.0
        for k in range(steps):
            t = k * ADVERT_S
            if t >= OUTAGE[0] and "down" not in marks:
                await clock.parked()
                env.relay.set_up(False)
                marks["down"] = time.time()
            if t >= OUTAGE[1] and "up" not in marks:
                await clock.parked()
                # 30 simulated minutes can pass in a few real milliseconds: before the link returns, give the agent
                # the real time to find it dead (a send refused), bounded, so the lane check sees a real backlog
                # and to commit the alarm batch cut in the outage (sent from memory first, it is written when that
                # send fails), so the lane check has an outage alarm to look at
                waited = time.monotonic()
                while (agent.counters["uplink_failures"] == 0 or not any(
                        b["prio"] and b["t_commit"] >= marks["down"] for b in env.ledger.batches.values())) \
                        and time.monotonic() - waited < 5.0:
                    await asyncio.sleep(0.02)
                env.relay.set_up(True)
                marks["up"] = time.time()
            if t >= KILL_BOARD and "board_killed" not in marks:
                await clock.parked()
                node.proc.kill()  # the buzzer board dies; the agent must notice with no help from the clock
                marks["board_killed"] = time.monotonic()
                while board.alive is not False and time.monotonic() - marks["board_killed"] < 10.0:
                    await asyncio.sleep(0.05)
                marks["board_dead_after_s"] = time.monotonic() - marks["board_killed"]
            clock.mono = t0 + t
            for s in sensors:
                away = s.get("away")
                if away and away[0] <= t < away[1]:
                    continue
                value = s["values"][k] + s["offset"]
                if value > HIGH + s["offset"] and "failed" not in s and not away:
                    excursions.setdefault(s["name"], set()).add(int(t // 3600))  # door opening over the limit
                radio.hear(":".join("%02X" % b for b in s["mac"]), rssi=-70, **_advert(s, k, value))
            if t >= next_gate:
                fine = OUTAGE[0] - 1200 <= t <= OUTAGE[1] + 1200
                next_gate = t + (GATE_FINE_S if fine else GATE_S)
                await clock.parked()
        clock.mono = t0 + steps * ADVERT_S
        await clock.parked()

    try:
        await env.run(agent, drive, ready=[radio.running])
        buzzer = _buzzer(env, runner, board, sensors, marks, t0, os.path.join(workdir, "buzzer.log"))
        summary = _outcome(env, agent, radio, sensors, marks, excursions, t0, clock, buzzer.pop("checks"))
        summary.update(sensors=n_sensors, simulated_hours=hours, ble_path="simulated-radio", buzzer=buzzer)
        return summary
    finally:
        node.stop()
        env.close()


def _buzzer(env, runner, board, sensors, marks, t0, log_path):
    """The buzzer's story: each order (scenario clock), the board's ack (real time), the board's own log, the dead
    board's event as the backend stored it."""
    failed = [s["name"] for s in sensors if "failed" in s]
    orders = [(real, o) for real, o in runner.orders if o.board == board.name]
    story = []
    for real, o in orders:
        acked = next((e["acked"] - real for e in board.history if e["channel"] == o.channel and e["on"] == o.on
                      and e["queued"] is not None and e["queued"] >= real and e["acked"]), None)
        story.append({"on": o.on, "sensor": o.event.sensor, "state": o.event.state, "sim_t": o.t - t0,
                      "after_event_sim_s": o.t - o.event.t, "ack_real_s": None if acked is None else round(acked, 3)})
    with open(log_path) as f:
        board_log = [line.split()[1] for line in f]
    dead = [(n, vs) for _, n, _, _, vs in env.records(board.name + "/" + DEAD)]
    during_outage = [x for x in story if x["on"] and OUTAGE[0] <= x["sim_t"] <= OUTAGE[1]]
    out = {"orders": story, "board_log": board_log, "dead_records": dead,
           "dead_detected_real_s": round(marks.get("board_dead_after_s", -1), 2),
           "board_counters": dict(board.counters)}
    out["checks"] = [
        ("buzzer on at each fridge alarm, off when it cleared",
         [(x["on"], x["sensor"], x["state"]) for x in story] == [(True, failed[0], "raised"), (False, failed[0],
          "cleared"), (True, failed[1], "raised"), (False, failed[1], "cleared")]),
        ("buzzer switched within 1 s of the event (scenario clock), acknowledged within 5 s (real)",
         bool(story) and all(0 <= x["after_event_sim_s"] <= 1.0 and x["ack_real_s"] is not None
                             and x["ack_real_s"] < 5.0 for x in story)),
        ("buzzer sounded with the uplink down", len(during_outage) == 1 and during_outage[0]["sensor"] == failed[1]),
        ("the board's own log agrees", board_log == ["buzzer=1", "buzzer=0", "buzzer=1", "buzzer=0"]),
        ("the dead board reported upstream", 0 <= out["dead_detected_real_s"] < 10.0
         and any(vs.startswith("raised") for _, vs in dead)),
    ]
    return out


def _outcome(env, agent, radio, sensors, marks, excursions, t0, clock, more_checks=()):
    wall0 = clock.offset + t0  # wire time of simulated t = 0
    events = env.records("%/alarm.%") + env.records("%/silent")
    raised = [(n.split("/")[0], n.split("/")[1], t - wall0) for s, n, t, v, vs in events
              if vs and vs.startswith("raised")]
    expected_alarm = {s["name"] for s in sensors if "failed" in s} | {"cooler-C"}
    false_alarms = [r for r in raised if r[1].startswith("alarm.") and r[0] not in expected_alarm]
    # alarm latency in simulated time: raised at most one advert after crossing + delay_on
    latencies = {}
    for s in sensors:
        if "failed" in s:
            crossing, due = _alarm_due(s["values"], HIGH)
            got = [t for name, ev, t in raised if name == s["name"] and ev == "alarm.high"]
            latencies[s["name"]] = None if not got or due is None else got[0] - due
    # the alarm lane after the outage: alarm batches cut during the outage are stored before older backlog
    stored = {seq: rec for seq, rec in env.stored_batches()}
    led = {seq: b for (_, seq), b in env.ledger.batches.items()}
    outage_alarms = [seq for seq, b in led.items() if b["prio"] and marks["down"] <= b["t_commit"] <= marks["up"]]
    overtaken = violations = 0
    for a in outage_alarms:
        for seq, b in led.items():
            if not b["prio"] and seq < a and seq in stored and stored[seq] >= marks["up"]:
                if stored[seq] > stored.get(a, float("inf")):
                    overtaken += 1
                else:
                    violations += 1
    up_alarms = [seq for seq, b in led.items() if b["prio"] and b["t_commit"] < marks["down"] and seq in stored]
    delivery_ms = [round((stored[s] - led[s]["t_commit"]) * 1000, 1) for s in up_alarms]
    silent = [(n, t) for n, ev, t in raised if ev == "silent"]
    cooler_b = next(s for s in sensors if s["name"] == "cooler-B")
    silent_after = [t - cooler_b["away"][0] for n, t in silent if n == "cooler-B"]
    delivery = env.delivery()
    summary = {
        "adverts_heard": radio.counters.get("adverts", 0), "readings_in": agent.counters["readings_in"],
        "readings_sent": agent.counters["readings_sent"], "records_stored": delivery["records_stored"],
        "alarms_raised": len([r for r in raised if r[1].startswith("alarm.")]),
        "alarm_sensors": sorted({r[0] for r in raised if r[1].startswith("alarm.")}),
        "false_alarms": len(false_alarms), "door_excursions_over_limit": sum(map(len, excursions.values())),
        "alarm_latency_sim_s": latencies, "alarm_delivery_ms_link_up": delivery_ms,
        "outage_alarm_batches": len(outage_alarms), "backlog_batches_overtaken": overtaken,
        "alarm_lane_violations": violations, "silent_events": sorted(n for n, _ in silent),
        "cooler_B_silent_after_s": silent_after, "relay": dict(env.relay.counters),
        "uplink_failures": agent.counters["uplink_failures"], "delivery": delivery,
        "receiver": env.receiver.stats(),
    }
    return checks(summary, [
        ("every expected alarm raised", summary["alarm_sensors"] == sorted(expected_alarm)),
        ("alarms within one advert of crossing + delay_on",
         all(v is not None and 0 <= v <= ADVERT_S for v in latencies.values())),
        ("no false alarm from door openings", not false_alarms and summary["door_excursions_over_limit"] > 0),
        ("link-up alarms delivered within 2 s", bool(delivery_ms) and max(delivery_ms) < 2000),
        ("alarm lane first after the outage", outage_alarms and overtaken > 0 and violations == 0),
        ("the outage really failed sends", summary["uplink_failures"] > 0),
        ("cooler-B silent within stale_after + one gate", len(silent_after) == 1
         and 4 * 3600 <= silent_after[0] <= 4 * 3600 + GATE_S + ADVERT_S and summary["silent_events"] == ["cooler-B"]),
        ("no reading lost, none twice", delivery["batches_missing"] == 0 and delivery["batches_unexpected"] == 0
         and delivery["batches_wrong_count"] == 0 and delivery["records_stored"] == delivery["records_committed"]),
    ] + list(more_checks))


def lines(s):
    return [
        "cold-chain: %d BLE sensors (fridges, freezers, 3 blood-bag coolers), %.0f simulated hours, path %s"
        % (s["sensors"], s["simulated_hours"], s["ble_path"]),
        "  adverts heard %d -> readings %d -> sent %d (deadband, heartbeat); records stored %d"
        % (s["adverts_heard"], s["readings_in"], s["readings_sent"], s["records_stored"]),
        "  alarms raised %d on %s; false alarms %d (door openings over the limit: %d)"
        % (s["alarms_raised"], ", ".join(s["alarm_sensors"]), s["false_alarms"], s["door_excursions_over_limit"]),
        "  alarm latency after crossing + delay_on (simulated s): %s" % s["alarm_latency_sim_s"],
        "  alarm delivery while the link was up (real ms): %s" % s["alarm_delivery_ms_link_up"],
        "  30 min outage: %d alarm batch(es) cut during it overtook %d older backlog batches; lane violations %d"
        % (s["outage_alarm_batches"], s["backlog_batches_overtaken"], s["alarm_lane_violations"]),
        "  silent events: %s (cooler-B after %s s away)" % (s["silent_events"], s["cooler_B_silent_after_s"]),
        "  delivery: %(batches_committed)d batches committed, %(batches_stored)d stored, %(batches_missing)d missing, "
        "%(records_committed)d records committed = %(records_stored)d stored" % s["delivery"],
        "  buzzer board: %s; orders %s; dead board detected after %.2f real s, reported: %s"
        % (" ".join(s["buzzer"]["board_log"]), ["%s %s %.0f s after, ack %s s" % (
            "on" if o["on"] else "off", o["sensor"], o["after_event_sim_s"], o["ack_real_s"])
            for o in s["buzzer"]["orders"]], s["buzzer"]["dead_detected_real_s"], s["buzzer"]["dead_records"]),
    ]
