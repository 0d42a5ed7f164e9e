"""reserve: a remote gateway on a poor link, with an attacker on the path; see docs/scenarios.md."""

import threading

import cbor2

from firmware_sim.fridge import XorShift32
from tools.sim.radio import SimulatedRadio
from gateway.adapters import keys
from gateway.core import wire
from gateway.core.clock import FakeClock
from gateway.app.config import BatchSection
from tools.scenarios.runner import Env, checks, rule_engine

STEP_S = 30.0
GATE_S = 600.0
RULES = [
    {"match": {"name": "voltage"}, "low": 3000.0, "delay_on": 60.0, "deadband": 100.0, "heartbeat": 1800.0},
    {"match": {"sensor": "*"}, "stale_after": 3600.0},
]


def _mac(kind, i):
    return "%02X:EE:00:00:%02X:%02X" % (0xD0 + kind, i >> 8, i & 0xFF)


class Attacker:
    """The relay's hook: a poor link (drops requests and answers) and an attacker who injects, for every few
    genuine batches it sees, a replay, a forgery (its own key), a flipped signature byte, or a changed payload
    re-signed with its own key under the genuine kid. Injections go straight to the receiver, on the relay."""

    def __init__(self, relay_ref, seed):
        self.relay_ref = relay_ref
        self.key = keys.SigningKey.generate()
        self.rng = XorShift32(seed * 17 + 5)
        self.seen = []
        self.n = 0
        self.counts = {"replays": 0, "forged": 0, "flipped": 0, "resigned": 0, "genuine_forwards": 0}
        self.lock = threading.Lock()

    def __call__(self, body):
        with self.lock:
            self.n += 1
            n = self.n
            self.seen.append(body)
            roll = self.rng.next() % 100
        if n > 1 and roll < 15:
            return "drop_request"
        self._inject(n, body)
        with self.lock:
            self.counts["genuine_forwards"] += 1
        return "drop_response" if roll >= 88 else "forward"

    def _send(self, what, data):
        self.relay_ref().forward(data)
        with self.lock:
            self.counts[what] += 1

    def _inject(self, n, body):
        kind = n % 4
        if kind == 0 and len(self.seen) > 2:
            self._send("replays", self.seen[self.rng.next() % (len(self.seen) - 1)])
        elif kind == 1:
            self._send("flipped", body[:-1] + bytes((body[-1] ^ 0x5A,)))
        tag = cbor2.loads(body)
        protected, _, payload, _ = tag.value
        fields = cbor2.loads(payload)
        fields["seq"] += 1_000_000
        for rec in fields["senml"]:
            if 2 in rec:
                rec[2] = 0  # "fence voltage 0 V" / "no intrusion": what an attacker would like the backend to see
        changed = cbor2.dumps(fields, canonical=True)
        if kind == 2:
            self._send("resigned", wire.sign(changed, self.key, protected))
        elif kind == 3:
            self._send("forged", wire.sign(changed, self.key))


async def run(args, workdir):
    hours = 3.0 if args.quick else 24.0
    rng = XorShift32(args.seed * 101 + 9)
    holder = {}
    attacker = Attacker(lambda: holder["relay"], args.seed)
    env = Env("reserve", workdir, hook=attacker)
    holder["relay"] = env.relay
    clock = FakeClock(mono=1000.0, wall=1_750_000_000.0)
    t0 = clock.monotonic()
    fences = ["fence-%d" % i for i in range(4)]
    pirs = ["pir-%d" % i for i in range(6)]
    radio = SimulatedRadio("ble", clock, [(_mac(1, i), f) for i, f in enumerate(fences)]
                           + [(_mac(2, i), p) for i, p in enumerate(pirs)], formats=("bthome",), rssi_interval_s=None)
    rules = rule_engine(RULES)
    agent = env.agent(clock, [radio], rules, BatchSection(max_readings=200, max_age_s=300.0, time_quantum_s=1.0),
                      backoff=(0.02, 0.2), seed=args.seed)
    truth = {"intrusions": 0, "fence_faults": 0}

    async def drive():
        steps = int(hours * 3600 / STEP_S)
        next_gate = 0.0
        cut_fence = (steps // 3, steps // 3 + 20)  # fence-2 shorted (a branch on the wire) for 10 minutes
        for k in range(steps):
            t = k * STEP_S
            clock.mono = t0 + t
            for i, f in enumerate(fences):
                volts = 6000 + rng.uniform(-300, 300)
                if i == 2 and cut_fence[0] <= k < cut_fence[1]:
                    volts = 1500 + rng.uniform(-200, 200)
                    truth["fence_faults"] += k == cut_fence[0]
                raw = int(volts * 10)  # BTHome 0x4A: voltage in 0.1 V steps, uint16
                radio.hear(_mac(1, i), rssi=-80, service_data={0xFCD2: bytes((0x40, 0x00, k & 0xFF, 0x4A,
                                                                              raw & 0xFF, raw >> 8))})
            for i, p in enumerate(pirs):
                motion = 1 if rng.next() % 400 == 0 else 0
                truth["intrusions"] += motion
                radio.hear(_mac(2, i), rssi=-85, service_data={0xFCD2: bytes((0x40, 0x00, k & 0xFF, 0x21, motion))})
            if t >= next_gate:
                next_gate = t + GATE_S
                await clock.parked()
        clock.mono = t0 + steps * STEP_S
        await clock.parked()

    try:
        await env.run(agent, drive, ready=[radio.running], drain_timeout=30.0)
        summary = _outcome(env, agent, attacker, truth)
        summary.update(simulated_hours=hours, ble_path="simulated-radio")
        return summary
    finally:
        env.close()


def _outcome(env, agent, attacker, truth):
    stats = env.receiver.stats()
    rej = stats["rejections"]
    c = dict(attacker.counts)
    delivery = env.delivery()
    motion_sent = sum(1 for s, n, t, v, vs in env.records("pir-%/motion") if v == 1)
    fence_alarm = [n for s, n, t, v, vs in env.records("%/alarm.low") if vs.startswith("raised")]
    expected_dups = c["genuine_forwards"] + c["replays"] - delivery["batches_stored"]
    summary = {
        "attacks": c, "relay": dict(env.relay.counters), "receiver_rejections": rej,
        "receiver_duplicates": stats["duplicates"], "expected_duplicates": expected_dups,
        "receiver_stored": stats["stored"], "intrusions": truth["intrusions"], "intrusions_stored": motion_sent,
        "fence_alarms": fence_alarm, "quarantined": agent.counters["quarantined"], "delivery": delivery,
    }
    return checks(summary, [
        ("every attack kind tried", all(c[k] > 0 for k in ("replays", "forged", "flipped", "resigned"))),
        ("forgeries rejected as unknown_kid", rej.get("unknown_kid", 0) == c["forged"]),
        ("flipped and re-signed rejected as bad_signature", rej.get("bad_signature", 0) == c["flipped"] + c["resigned"]),
        ("nothing else rejected", sum(rej.values()) == c["forged"] + c["flipped"] + c["resigned"]),
        ("replays and resends counted as duplicates", stats["duplicates"] == expected_dups and c["replays"] > 0),
        ("only genuine batches stored", stats["stored"] == delivery["batches_committed"]
         and delivery["batches_unexpected"] == 0),
        ("no genuine data lost", delivery["batches_missing"] == 0 and delivery["batches_wrong_count"] == 0
         and agent.counters["quarantined"] == 0),
        ("every intrusion arrived", motion_sent == truth["intrusions"] and truth["intrusions"] > 0),
        ("the shorted fence alarmed", fence_alarm == ["fence-2/alarm.low"]),
    ])


def lines(s):
    return [
        "reserve: 4 fence monitors + 6 PIR intrusion sensors, %.0f simulated hours, path %s; attacker on the link"
        % (s["simulated_hours"], s["ble_path"]),
        "  attacker: %s; link: %s" % (s["attacks"], s["relay"]),
        "  receiver: stored %d, rejected %s, duplicates %d (expected %d)"
        % (s["receiver_stored"], s["receiver_rejections"], s["receiver_duplicates"], s["expected_duplicates"]),
        "  intrusions %d, stored %d; fence alarms %s; delivery %s"
        % (s["intrusions"], s["intrusions_stored"], s["fence_alarms"], s["delivery"]),
    ]
