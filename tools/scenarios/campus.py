"""campus: badges (BLE beacons) and occupancy sensors in zones -> presence per zone; see docs/scenarios.md.

The presence stage is built from the product's ``[presence]`` table (``presence_config``), as ``edge-gateway run``
builds it: one radio per zone, each naming the badges it hears ``<zone>.<badge>`` (per-source aliases), so a
zone's beacons are the aliases of its own adapter. Mode ``addresses``: the check rebuilds who was where from the
events; ``counts`` would send only the numbers (docs/configuration.md, "Presence")."""

from firmware_sim.fridge import XorShift32
from tools.sim.radio import SimulatedRadio
from gateway.core.clock import FakeClock
from gateway.app.config import BatchSection, parse_presence
from gateway.app.service import presence_stage
from tools.scenarios.runner import Env, checks, rule_engine

ZONES = ("lab", "hall", "meeting-1", "meeting-2", "library")
ADJACENT = {("lab", "hall"), ("hall", "meeting-1"), ("hall", "meeting-2"), ("hall", "library")}
ROOMS_WITH_SENSOR = ("meeting-1", "meeting-2")
ADVERT_S = 2.0       # a badge advertises every 2 s
OCC_S = 10.0         # an occupancy sensor reports every 10 s
GATE_S = 60.0        # the agent's rules (and presence timeouts) tick at least once a simulated minute
TIMEOUT_S = 60.0     # a badge not heard for a minute has left
SETTLE_S = TIMEOUT_S + GATE_S + 30.0  # after a move, the derived presence must agree within this
REPORT_S = 600.0     # every zone's count at least every 10 simulated minutes
RULES = [{"match": {"name": "batt"}, "deadband": 5, "heartbeat": 3600.0, "battery_low": 20},
         {"match": {"name": "rssi"}, "deadband": 10, "heartbeat": 3600.0}]  # the occupancy sensors' signal


def _mac(kind, i):
    return "%02X:C1:38:00:%02X:%02X" % (0xB0 + kind, i >> 8, i & 0xFF)


def _bthome(pid, objects):
    return {0xFCD2: bytes((0x40, 0x00, pid & 0xFF)) + bytes(objects)}


def presence_config(badges):
    """The ``[presence]`` table of this site, as an installer writes it in config.toml."""
    return {"mode": "addresses", "alpha": 0.3, "timeout_s": TIMEOUT_S, "report_s": REPORT_S, "zones": [
        {"name": z, "beacons": ["%s.%s" % (z, b) for b in badges], "enter_dbm": -70.0, "leave_dbm": -80.0,
         **({"sensors": ["occ-" + z]} if z in ROOMS_WITH_SENSOR else {})} for z in ZONES]}


def _schedule(n_badges, seconds, rng):
    """Ground truth: per badge, a list of (start, end, zone or None = off campus)."""
    plan = {}
    for b in range(n_badges):
        t, segs = 0.0, []
        zone = ZONES[rng.next() % len(ZONES)]
        while t < seconds:
            length = rng.uniform(240.0, 720.0)
            segs.append((t, min(seconds, t + length), zone))
            t += length
            zone = None if rng.next() % 6 == 0 else ZONES[rng.next() % len(ZONES)]
        plan["badge-%02d" % b] = segs
    return plan


def _zone_at(segs, t):
    for a, b, z in segs:
        if a <= t < b:
            return z
    return None


def _rssi(radio_zone, zone, rng):
    if zone == radio_zone:
        return int(-55 + rng.uniform(-8, 8))
    if (radio_zone, zone) in ADJACENT or (zone, radio_zone) in ADJACENT:
        return int(-86 + rng.uniform(-8, 8))
    return None  # out of range


async def run(args, workdir):
    n_badges = 12 if args.quick else 60
    seconds = 40 * 60.0 if args.quick else 3 * 3600.0
    rng = XorShift32(args.seed * 31 + 7)
    plan = _schedule(n_badges, seconds, rng)
    guests = {"meeting-2": (seconds * 0.3, seconds * 0.55)}  # a meeting with no badge: only the sensor sees it
    env = Env("campus", workdir)
    clock = FakeClock(mono=1000.0, wall=1_750_000_000.0)
    t0 = clock.monotonic()
    radios = {}
    for zone in ZONES:
        sensors = [(_mac(1, i), "%s.%s" % (zone, badge)) for i, badge in enumerate(sorted(plan))]
        if zone in ROOMS_WITH_SENSOR:
            sensors.append((_mac(2, ZONES.index(zone)), "occ-" + zone))
        radios[zone] = SimulatedRadio("ble-" + zone, clock, sensors, formats=("bthome",), rssi_interval_s=0.0)
    stage = presence_stage(parse_presence(presence_config(sorted(plan)), "campus [presence]"), env.gw,
                           rule_engine(RULES))
    agent = env.agent(clock, list(radios.values()), stage,
                      BatchSection(max_readings=500, max_age_s=30.0, time_quantum_s=1.0), seed=args.seed)
    noise = XorShift32(args.seed * 131 + 3)

    async def drive():
        steps = int(seconds / ADVERT_S)
        next_gate = 0.0
        for k in range(steps):
            t = k * ADVERT_S
            clock.mono = t0 + t
            for i, badge in enumerate(sorted(plan)):
                where = _zone_at(plan[badge], t)
                if where is None:
                    continue
                for zone, radio in radios.items():
                    rssi = _rssi(zone, where, noise)
                    if rssi is not None:
                        radio.hear(_mac(1, i), service_data=_bthome(k, (0x01, 90)), rssi=rssi)
            if k % int(OCC_S / ADVERT_S) == 0:
                for zone in ROOMS_WITH_SENSOR:
                    g = guests.get(zone)
                    occupied = any(_zone_at(plan[b], t) == zone for b in plan) or (g and g[0] <= t < g[1])
                    radios[zone].hear(_mac(2, ZONES.index(zone)), rssi=-60,
                                      service_data=_bthome(k // 5, (0x21, 1 if occupied else 0)))
            if t >= next_gate:
                next_gate = t + GATE_S
                await clock.parked()
        clock.mono = t0 + seconds
        await clock.parked()

    try:
        await env.run(agent, drive, ready=[r.running for r in radios.values()])
        summary = _outcome(env, agent, radios, stage, plan, guests, clock.offset + t0, seconds)
        summary.update(badges=n_badges, zones=len(ZONES), simulated_minutes=seconds / 60, ble_path="simulated-radio")
        return summary
    finally:
        env.close()


def _replay(env, wall0):
    """The receiver's presence events -> per zone, a time-ordered list of (t, who, verb, occupied)."""
    timeline = {z: [] for z in ZONES}
    for seq, n, t, v, vs in sorted(env.records("%/presence"), key=lambda r: (r[2], r[0])):
        zone = n.split("/")[0]
        state, reason = vs.split(": ", 1)
        who, _, rest = reason.partition(" ")
        verb = "in" if rest.startswith("entered") else "out" if rest.startswith(("left", "not heard")) else \
            "occ_on" if rest.startswith("detects occupancy") else "occ_off"
        timeline[zone].append((t - wall0, who.split(".", 1)[-1], verb, state))
    return timeline


def _derived(timeline, zone, t):
    present, occupied = set(), False
    for te, who, verb, state in timeline[zone]:
        if te > t:
            break
        if verb == "in":
            present.add(who)
        elif verb == "out":
            present.discard(who)
        occupied = state != "cleared"
    return present, occupied


def _outcome(env, agent, radios, stage, plan, guests, wall0, seconds):
    timeline = _replay(env, wall0)
    checked = wrong = 0
    mismatches = []
    for badge, segs in plan.items():
        for a, b, zone in segs:
            if b - a < SETTLE_S + 10:
                continue
            t = a + SETTLE_S
            checked += 1
            where = {z for z in ZONES if badge in _derived(timeline, z, t)[0]}
            if where != ({zone} if zone else set()):
                wrong += 1
                mismatches.append((badge, round(t), zone, sorted(where)))
    occ_checked = occ_wrong = 0
    for zone in ROOMS_WITH_SENSOR:
        g = guests.get(zone)
        for t in range(int(SETTLE_S), int(seconds), 30):
            truth = any(_zone_at(plan[b], t) == zone for b in plan) or bool(g and g[0] <= t < g[1])
            recent = any(z == zone and min(abs(t - a), abs(t - b)) < SETTLE_S
                         for segs in plan.values() for a, b, z in segs)
            recent = recent or bool(g and min(abs(t - g[0]), abs(t - g[1])) < SETTLE_S)
            if recent:
                continue
            occ_checked += 1
            if _derived(timeline, zone, t)[1] != truth:
                occ_wrong += 1
    adverts = sum(r.counters.get("adverts", 0) for r in radios.values())
    delivery = env.delivery()
    n_events = sum(len(v) for v in timeline.values())
    summary = {
        "adverts_heard": adverts, "readings_consumed_by_presence": stage.counters["consumed"],
        "records_sent": delivery["records_stored"], "presence_events": n_events,
        "count_records": len(env.records("%/count")),
        "reduction": round(adverts / max(1, delivery["records_stored"]), 1),
        "badge_segments_checked": checked, "badge_segments_wrong": wrong, "mismatches": mismatches[:5],
        "occupancy_checks": occ_checked, "occupancy_wrong": occ_wrong,
        "guest_meeting_seen": any(w == "occ-meeting-2" and verb == "occ_on" for _, w, verb, _s in
                                  timeline["meeting-2"]),
        "delivery": delivery,
    }
    return checks(summary, [
        ("presence matches ground truth", checked >= 10 and wrong == 0),
        ("occupancy matches ground truth", occ_checked >= 5 and occ_wrong == 0),
        ("compact: at least 20 adverts per record sent", summary["reduction"] >= 20),
        ("no badge RSSI sent", not env.records("%.badge-%/rssi")),
        ("nothing of a badge sent but its battery", not [r for r in env.records("%.badge-%") if not r[1].endswith(
            "/batt")]),
        ("a count per presence event, and the periodic counts", summary["count_records"] >= n_events + len(ZONES)),
        ("every batch delivered once", delivery["batches_missing"] == 0 and delivery["batches_unexpected"] == 0
         and delivery["records_stored"] == delivery["records_committed"]),
    ])


def lines(s):
    return [
        "campus: %d badges, %d zones, %.0f simulated minutes, path %s"
        % (s["badges"], s["zones"], s["simulated_minutes"], s["ble_path"]),
        "  adverts heard %d -> records sent %d (%d presence events): %.0fx fewer"
        % (s["adverts_heard"], s["records_sent"], s["presence_events"], s["reduction"]),
        "  badge stays checked against ground truth: %d, wrong %d %s"
        % (s["badge_segments_checked"], s["badge_segments_wrong"], s["mismatches"] or ""),
        "  occupancy checks %d, wrong %d; badge-less meeting seen by the sensor: %s"
        % (s["occupancy_checks"], s["occupancy_wrong"], s["guest_meeting_seen"]),
    ]
