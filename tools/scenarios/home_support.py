"""home-support: mixed-vendor BLE sensors and a serial board in a home; batteries run down, a sensor dies.
See docs/scenarios.md."""

import os

from drivers.serial.adapter import SerialSource
from drivers.serial.protocols import LinesProtocol
from firmware_sim import ble_nodes
from tools.sim.harness import PtyNode
from tools.sim.radio import BluezRadio, SimulatedRadio
from gateway.core.clock import FakeClock
from gateway.app.config import BatchSection
from tools.scenarios.runner import Env, checks, rule_engine

ADVERT_S = 60.0
STALE_S = 600.0
COARSE_GATE_S, FINE_GATE_S = 1800.0, 60.0
BATTERY_LOW = 15
RULES = [
    {"match": {"sensor": "meter*"}, "stale_after": 1800.0, "deadband": 0.5, "heartbeat": 1800.0},
    {"match": {"name": "batt"}, "battery_low": BATTERY_LOW, "battery_hysteresis": 3, "deadband": 1},
    {"match": {"name": "temp"}, "deadband": 0.2, "heartbeat": 1800.0},
    {"match": {"sensor": "*"}, "stale_after": STALE_S, "deadband_pct": 3.0, "heartbeat": 1800.0},
]

# name, vendor, MAC, battery % at start, battery % lost per hour, dies at (h) or when the battery is below 3 %
DEVICES = (
    ("living", "bthome", "A4:C1:38:00:00:01", 40.0, 10.0, None),       # runs down and dies
    ("bedroom", "pvvx", "A4:C1:38:00:00:04", 30.0, 5.0, None),         # runs low, keeps working
    ("bathroom", "bthome", "A4:C1:38:00:00:02", 80.0, 0.5, 2.0),       # dies suddenly (water), no warning
    ("kitchen-fridge", "ruuvi", "C9:00:00:00:00:03", None, 0.0, None),  # healthy
)


def _advert(vendor, mac, k, temp, batt):
    raw = bytes.fromhex(mac.replace(":", ""))
    if vendor == "bthome":
        return {"service_data": {ble_nodes.BTHOME_UUID: ble_nodes.bthome_adv(k, temp, 50.0, int(batt))}}
    if vendor == "pvvx":
        return {"service_data": {ble_nodes.ENV_SENSING_UUID: ble_nodes.pvvx_adv(
            raw, temp, 50.0, 2000 + int(batt) * 10, int(batt), k)}}
    return {"manufacturer_data": {ble_nodes.RUUVI_COMPANY_ID: ble_nodes.ruuvi_adv(
        raw, temp_c=temp, hum_pct=40.0, batt_mv=2950, seq=k)}}


def _alive(dev, t):
    name, vendor, mac, batt0, drain, dies = dev
    batt = None if batt0 is None else batt0 - drain * t / 3600.0
    dead = (dies is not None and t >= dies * 3600.0) or (batt is not None and batt < 3)
    return not dead, batt


async def run(args, workdir):
    hours = 4.0 if args.quick else 24.0
    env = Env("home-support", workdir)
    clock = FakeClock(mono=1000.0, wall=1_750_000_000.0)
    t0 = clock.monotonic()
    # Through bleak and a mocked BlueZ when the test tools are installed; else the simulated radio.
    radio_class = BluezRadio if BluezRadio.available() else SimulatedRadio
    radio = radio_class("ble", clock, [(d[2], d[0]) for d in DEVICES], rssi_interval_s=None)
    node = PtyNode("line_node", ["--sensors", 1, "--rate", 20, "--seed", args.seed, "--prefix", "meter"],
                   link=os.path.join(workdir, "tty-meter"))
    node.start()
    meter = SerialSource("meter", node.path, LinesProtocol(units={"temp": "Cel", "hum": "%RH"}), clock, baud=115200)
    rules = rule_engine(RULES)
    agent = env.agent(clock, [radio, meter], rules, BatchSection(max_readings=500, max_age_s=300.0,
                                                                time_quantum_s=1.0), seed=args.seed)
    last_heard = {}
    truth = {}

    async def drive():
        steps = int(hours * 3600 / ADVERT_S)
        next_gate = 0.0
        for k in range(steps):
            t = k * ADVERT_S
            clock.mono = t0 + t
            for i, dev in enumerate(DEVICES):
                alive, batt = _alive(dev, t)
                if not alive:
                    continue
                temp = 20.0 + i + 0.5 * ((k + 7 * i) % 5) / 4
                radio.hear(dev[2], rssi=-65, **_advert(dev[1], dev[2], k & 0xFF, temp, batt if batt else 0))
                last_heard[dev[0]] = t
                if batt is not None and batt < BATTERY_LOW and dev[0] not in truth:
                    truth[dev[0]] = t  # first advert with a battery under the limit
            await radio.settle()  # stamped at this simulated time: let the scanner see them before time moves
            near_stale = any(STALE_S - 2 * FINE_GATE_S <= t - h <= STALE_S + 5 * FINE_GATE_S
                             for h in last_heard.values())
            if t >= next_gate or near_stale:
                next_gate = t + COARSE_GATE_S
                await clock.parked()
        clock.mono = t0 + steps * ADVERT_S
        await clock.parked()

    try:
        await env.run(agent, drive, ready=[radio.running])
        summary = _outcome(env, agent, clock.offset + t0, last_heard, truth, meter)
        summary.update(simulated_hours=hours, ble_path=radio.path, serial_interpreter=os.path.basename(
            node.python))
        return summary
    finally:
        node.stop()
        radio.close()
        env.close()


def _outcome(env, agent, wall0, last_heard, truth, meter):
    def events(kind):
        return {n.split("/")[0]: t - wall0 for s, n, t, v, vs in env.records("%/" + kind)
                if vs.startswith("raised")}

    batt_low, silent = events("battery_low"), events("silent")
    last_stored = {}
    for s, n, t, v, vs in env.records("%"):
        name = n.split("/")[0]
        if v is not None and not n.endswith(("/silent", "/battery_low")):
            last_stored[name] = max(last_stored.get(name, 0.0), t - wall0)
    warn_lead = {k: round((last_stored.get(k, 0) - t) / 60.0, 1) for k, t in batt_low.items()}
    silent_delay = {k: round(t - last_heard[k]) for k, t in silent.items() if k in last_heard}
    delivery = env.delivery()
    summary = {
        "battery_low": sorted(batt_low), "silent": sorted(silent),
        "battery_warning_lead_min": warn_lead, "silent_after_last_reading_s": silent_delay,
        "battery_low_delay_s": {k: round(batt_low[k] - truth[k]) for k in batt_low if k in truth},
        "meter_readings": meter.counters.get("records", 0), "readings_in": agent.counters["readings_in"],
        "delivery": delivery,
    }
    dead = {"living", "bathroom"}
    return checks(summary, [
        ("battery_low for both draining sensors, no other", summary["battery_low"] == ["bedroom", "living"]),
        ("battery_low arrived while the sensor still reported", all(v > 0 for v in warn_lead.values())
         and warn_lead.get("living", 0) >= 30),
        ("battery_low on the first low advert", all(v == 0 for v in summary["battery_low_delay_s"].values())),
        ("silent for exactly the dead sensors", set(silent) == dead),
        ("silent within stale_after (+1 min tick) of the last reading",
         all(STALE_S <= v <= STALE_S + FINE_GATE_S + ADVERT_S for v in silent_delay.values())
         and set(silent_delay) == dead),
        ("the serial meter kept reporting", summary["meter_readings"] > 20 and "meter0" not in silent),
        ("every batch delivered once", delivery["batches_missing"] == 0 and delivery["batches_unexpected"] == 0
         and delivery["records_stored"] == delivery["records_committed"]),
    ])


def lines(s):
    return [
        "home-support: BTHome, pvvx and Ruuvi sensors + a serial board (%s on a pty), %.0f simulated hours, path %s"
        % (s["serial_interpreter"], s["simulated_hours"], s["ble_path"]),
        "  battery_low: %s, lead before the last reading (min): %s" % (s["battery_low"],
                                                                       s["battery_warning_lead_min"]),
        "  silent: %s, after the last reading (s): %s" % (s["silent"], s["silent_after_last_reading_s"]),
        "  serial board lines decoded: %d; delivery %s" % (s["meter_readings"], s["delivery"]),
    ]
