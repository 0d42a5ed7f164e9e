"""The serial protocols (lines, NMEA, Modbus master) as pure objects: byte vectors in, (sensor, measurements) and
counted errors out, fed whole and one byte at a time; the Modbus master driven on a fake time line against the
simulated meter's own register code; config errors; and the real ``edge-gateway decode`` CLI."""

import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

from drivers.serial import modbus
from drivers.serial.protocols import (PROTOCOLS, LinesProtocol, ModbusProtocol, NmeaProtocol, char_time,
                                      make_protocol)
from firmware_sim import modbus_node
from gateway.core.errors import ConfigError

VECTORS = ROOT / "tests" / "vectors"
GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"  # gpsd "NMEA Revealed"
RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"
TXT = b"$GNTXT,01,01,02,ROM BASE 2.01 (75331) Oct 29 2013 13:28:17*44\r\n"  # pynmea2: not decoded, ignored
BAD = GGA.replace(b"*47", b"*46")

from tests.support.serial import METER_MAP  # noqa: E402


def feed_whole_and_bytewise(make, data, now=0.0):
    """Feed ``data`` to one fresh protocol whole and to another byte by byte; both must agree."""
    whole, single = make(), make()
    got_whole = whole.feed(data, now)
    got_single = [pair for i in range(len(data)) for pair in single.feed(data[i:i + 1], now)]
    assert got_whole == got_single
    assert whole.errors == single.errors
    return got_whole, whole


# --- lines ----------------------------------------------------------------------------------------------------

def test_lines_protocol_from_spec_whole_and_bytewise():
    spec = {"protocol": "lines", "units": {"temp": "Cel"}, "max_line": 40}
    data = b"id=a temp=4.25 hum=50.1\r\n\x00\xffjunk\nid=b temp=-1.5*00\n" + b"x" * 60 + b"\nid=c temp=7\n"
    out, proto = feed_whole_and_bytewise(lambda: make_protocol(spec), data)
    assert [(s, [(m.name, m.value, m.unit) for m in ms]) for s, ms in out] == [
        ("a", [("temp", 4.25, "Cel"), ("hum", 50.1, None)]), ("c", [("temp", 7, "Cel")])]
    assert proto.errors == {"not_ascii": 1, "bad_checksum": 1, "overlong": 1}
    assert isinstance(proto, LinesProtocol) and proto.poll(0.0) is None


# --- NMEA -----------------------------------------------------------------------------------------------------

def test_nmea_protocol_decodes_and_counts_whole_and_bytewise():
    data = GGA + b"\x13\x37noise" + RMC + BAD + TXT + b"$GPGGA,1235" + GGA
    out, proto = feed_whole_and_bytewise(lambda: make_protocol({"protocol": "nmea", "name": "gps1"}), data)
    assert [s for s, _ in out] == [None, None, None]  # the source's name becomes the sensor
    gga = {m.name: m.value for m in out[0][1]}
    assert gga["lat"] == pytest.approx(48.1173) and gga["lon"] == pytest.approx(11 + 31 / 60)
    assert gga["alt"] == 545.4 and gga["sats"] == 8 and gga["fix"] == 1
    rmc = {m.name: (m.value, m.unit) for m in out[1][1]}
    assert rmc["speed"][0] == pytest.approx(22.4 * 1852 / 3600) and rmc["speed"][1] == "m/s"
    assert rmc["course"][1] == "rad"
    assert out[2] == out[0]
    # "ignored" (a TXT sentence) is normal traffic, not an error
    assert proto.errors == {"garbage": 7, "bad_checksum": 1, "truncated": 1}
    assert proto.ignored == 1
    assert str(proto.utc) == "1994-03-23 12:35:19+00:00"
    assert proto.poll(1.0) is None


def test_nmea_protocol_sentence_filter_and_no_fix():
    proto = NmeaProtocol.from_spec({"sentences": ["rmc"]})
    out = proto.feed(GGA + RMC)
    assert len(out) == 1 and {m.name for m in out[0][1]} == {"lat", "lon", "speed", "course"}
    no_fix = (VECTORS / "nmea" / "deltares_gga_no_fix.json")
    sentence = json.loads(no_fix.read_text())["input"].encode() + b"\r\n"
    got = NmeaProtocol().feed(sentence)
    assert [m.name for m in got[0][1]] == ["fix", "sats"]  # no fix: no position, never zeros
    with pytest.raises(ConfigError, match="GSV"):
        make_protocol({"protocol": "nmea", "name": "gps1", "sentences": ["GSV"]})


# --- Modbus: fixed byte vectors ------------------------------------------------------------------------------

def _vector(name):
    return json.loads((VECTORS / "modbus" / name).read_text())


def test_modbus_protocol_request_and_response_bytes_from_published_example():
    case = _vector("simplymodbus_fc03.json")  # slave 17, holding 107..109
    spec = {"protocol": "modbus", "name": "m", "poll_s": 10, "slaves": [{"id": 17, "name": "dev17", "registers": [
        {"name": "r%d" % i, "address": case["address"] + i} for i in range(case["count"])]}]}
    response = bytes.fromhex(case["response"])
    for chunks in ([response], [response[i:i + 1] for i in range(len(response))]):
        proto = make_protocol(spec)
        assert proto.poll(0.0) == bytes.fromhex(case["request"])
        assert proto.poll(0.01) is None  # one request outstanding at a time
        got = [pair for c in chunks for pair in proto.feed(c, 0.02)]
        assert got == [("dev17", [modbus.Measurement("r%d" % i, v) for i, v in enumerate(case["registers"])])]
        assert proto.errors == {}
        assert proto.poll(0.03) is None  # answered, and not due again before poll_s
        assert proto.poll(10.03) == bytes.fromhex(case["request"])


def test_modbus_exception_response_is_a_per_slave_error_with_backoff():
    case = _vector("spec_exception_2.json")
    spec = {"protocol": "modbus", "name": "m", "poll_s": 1, "backoff_s": 4, "backoff_max_s": 8, "slaves": [
        {"id": 1, "registers": [{"name": "a", "address": 4000, "type": "uint32"}]}]}
    proto = make_protocol(spec)
    assert proto.poll(0.0) == bytes.fromhex(case["request"])
    assert proto.feed(bytes.fromhex(case["response"]), 0.05) == []
    assert proto.errors == {"exception_2": 1, "slave1.exception_2": 1}
    assert proto.poll(3.9) is None and proto.poll(4.06) is not None  # backed off 4 s, not poll_s


# --- Modbus: against the simulated meter's register code -------------------------------------------------------

class Bus:
    """Drives a ModbusProtocol on a fake time line; ``live`` slave ids answer with modbus_node's own frames."""

    def __init__(self, proto, live=(1,), step=0.01, bytewise=False, mangle=None):
        self.proto, self.live, self.step, self.bytewise, self.mangle = proto, set(live), step, bytewise, mangle
        self.t = 0.0
        self.sent = []  # (t, slave, request bytes)
        self.out = []  # (t, sensor, {name: value})
        self.n = {}

    def run(self, seconds):
        end = self.t + seconds
        while self.t < end:
            req = self.proto.poll(self.t)
            if req:
                assert not any(s for s in self.sent if s[0] == self.t), "two requests at once"
                self.sent.append((self.t, req[0], req))
                if req[0] in self.live:
                    n = self.n.get(req[0], 0)
                    self.n[req[0]] = n + 1
                    answer = modbus_node.with_crc(modbus_node.answer(req[0], req, n))
                    if self.mangle:
                        answer = self.mangle(n, answer)
                    chunks = [answer[i:i + 1] for i in range(len(answer))] if self.bytewise else [answer]
                    for c in chunks:
                        for sensor, ms in self.proto.feed(c, self.t + 0.005):
                            self.out.append((self.t, sensor, {m.name: m.value for m in ms}))
            self.t = round(self.t + self.step, 6)
        return self

    def polls_of(self, slave):
        return [t for t, s, _ in self.sent if s == slave]


def _meters(extra=(), **kw):
    spec = {"protocol": "modbus", "name": "meters", "baud": 19200, "parity": "E", "poll_s": 0.5,
            "backoff_s": 1.0, "backoff_max_s": 4.0,
            "slaves": [{"id": 1, "name": "meter1", "registers": METER_MAP}] + list(extra)}
    spec.update(kw)
    return make_protocol(spec)


@pytest.mark.parametrize("bytewise", [False, True])
def test_modbus_meter_values_match_node_register_map(bytewise):
    bus = Bus(_meters(), bytewise=bytewise).run(2.0)
    reads = [v for _, s, v in bus.out if s == "meter1" and "voltage" in v]
    assert len(reads) >= 4
    for v in reads:
        assert set(v) == {"voltage", "current", "power", "energy", "frequency", "pf", "export"}
        n = v["energy"] - 1234567
        want = modbus_node.values(n)
        assert v["voltage"] == want["voltage"] and v["current"] == want["current"]
        assert v["power"] == pytest.approx(want["power"], rel=1e-6)  # float32 on the wire
        assert v["export"] == want["export"] and v["frequency"] == pytest.approx(50.0)
        assert v["pf"] == pytest.approx(-0.95)
    assert {v["serial"] for _, s, v in bus.out if "serial" in v} == {20240601}
    assert bus.proto.errors == {}
    # one cycle = the holding and the input block, every poll_s
    starts = bus.polls_of(1)[::2]
    assert all(0.5 <= b - a <= 0.6 for a, b in zip(starts, starts[1:]))


def test_modbus_dead_slave_backs_off_and_never_stops_the_healthy_one():
    dead = {"id": 2, "name": "ghost", "registers": [{"name": "x", "address": 0}]}
    bus = Bus(_meters([dead])).run(12.0)
    healthy = bus.polls_of(1)
    ghost = bus.polls_of(2)
    assert len(healthy) >= 2 * 20  # still every 0.5 s (plus one timeout now and then)
    gaps = [b - a for a, b in zip(ghost, ghost[1:])]
    assert gaps[0] < gaps[-1] and max(gaps) <= 4.0 + 1.0  # exponential, capped at backoff_max_s
    assert bus.proto.errors == {"timeout": len(ghost) - (bus.proto._current is not None),
                                "slave2.timeout": len(ghost) - (bus.proto._current is not None)}
    assert bus.proto.scheduler.states[2].failures >= 3 and bus.proto.scheduler.states[1].failures == 0
    # one outstanding request at a time: every request follows the previous answer or timeout
    times = [t for t, _, _ in bus.sent]
    assert times == sorted(set(times))


def test_modbus_timeout_defaults_from_baud_and_can_be_set():
    slow = _meters(baud=1200, parity="N")
    fast = _meters(baud=115200)
    set_ = _meters(timeout_s=0.05)
    poll = slow.slaves[1].polls[0]
    assert char_time(1200, 8, "N", 1) == pytest.approx(10 / 1200)
    assert slow.response_timeout(poll) > fast.response_timeout(poll) >= 0.25
    # 8 + (5 + 2 * count) characters on the wire, then 50 characters of turnaround at 1200 baud
    assert slow.response_timeout(poll) == pytest.approx((13 + 2 * poll.count + 50) * 10 / 1200)
    assert set_.response_timeout(poll) == 0.05


@pytest.mark.parametrize("bytewise", [False, True])
def test_modbus_noise_bad_crc_and_silence_are_counted_per_slave(bytewise):
    def mangle(n, frame):
        if n == 2:
            return b"\x00\x55\xaa\x99" + frame  # noise, never the slave id
        if n == 4:
            return frame[:-1] + bytes((frame[-1] ^ 0xFF,))  # bad CRC
        if n == 6:
            return frame[:5]  # cut short
        return frame

    bus = Bus(_meters(), bytewise=bytewise, mangle=mangle).run(8.0)
    errors = bus.proto.errors
    # garbage: the 4 noise bytes, then 8 of the 9 bytes of the bad-CRC answer (skipped while hunting for a good
    # frame; the last byte could still start one when the timeout ends the transaction)
    assert errors == {"garbage": 4 + 8, "bad_crc": 1, "slave1.bad_crc": 1, "truncated": 1, "slave1.truncated": 1}
    # the answers after the faults still arrive and decode to the node's values
    last_fault = bus.polls_of(1)[6]
    after = [v for t, _, v in bus.out if t > last_fault and "energy" in v]
    assert len(after) >= 3
    for v in after:
        assert v["export"] == modbus_node.values(v["energy"] - 1234567)["export"]


def test_modbus_reset_forgets_the_outstanding_request_without_blaming_the_slave():
    proto = _meters()
    assert proto.poll(0.0) is not None
    proto.reset()
    assert proto.poll(5.0)[0] == 1 and proto.errors == {}


def test_modbus_late_answer_is_unexpected_not_data():
    proto = _meters(timeout_s=0.1)
    req = proto.poll(0.0)
    assert proto.poll(0.2) is None  # timed out; quiet gap
    late = modbus_node.with_crc(modbus_node.answer(1, req, 0))
    assert proto.feed(late, 0.21) == []
    assert proto.errors["unexpected"] == len(late) and proto.errors["slave1.timeout"] == 1


@pytest.mark.parametrize("spec, key", [
    ({}, "slaves"),
    ({"slaves": []}, "slaves"),
    ({"slaves": [{"id": 0, "registers": [{"name": "a", "address": 0}]}]}, "slaves[0].id"),
    ({"slaves": [{"id": 1, "registers": [{"name": "a", "address": 0}]},
                 {"id": 1, "registers": [{"name": "a", "address": 0}]}]}, "slaves[1].id"),
    ({"slaves": [{"id": 1, "registers": []}]}, "slaves[0].registers"),
    ({"slaves": [{"id": 1, "registers": [{"name": "a", "address": 0, "type": "float64"}]}]},
     "slaves[0].registers.a"),
    ({"slaves": [{"id": 1, "registers": [{"name": "a", "address": 0}, {"name": "a", "address": 1}]}]},
     "slaves[0].registers"),
    ({"poll_s": 0, "slaves": [{"id": 1, "registers": [{"name": "a", "address": 0}]}]}, "poll_s"),
    ({"timeout_s": "fast", "slaves": [{"id": 1, "registers": [{"name": "a", "address": 0}]}]}, "timeout_s"),
])
def test_modbus_config_errors_name_the_key(spec, key):
    with pytest.raises(ConfigError) as info:
        make_protocol(dict(spec, protocol="modbus", name="meters"))
    assert info.value.key == key
    from drivers.sources import parse_source
    with pytest.raises(ConfigError) as info:
        parse_source(dict(spec, type="serial", port="/dev/null", protocol="modbus", name="meters"), 3, "gw.toml")
    assert info.value.key == "sources[3]." + key and info.value.file == "gw.toml"


def test_unknown_protocol_and_table():
    assert set(PROTOCOLS) == {"lines", "nmea", "modbus"}
    with pytest.raises(ConfigError, match="known: lines, modbus, nmea"):
        make_protocol({"protocol": "dlms", "name": "x"})


def test_build_source_makes_a_serial_source_per_protocol():
    from drivers.sources import build_source
    from gateway.core.clock import FakeClock
    src = build_source({"type": "serial", "name": "meters", "port": "/dev/null", "baud": 19200, "parity": "E",
                        "protocol": "modbus", "slaves": [{"id": 3, "registers": METER_MAP}]}, FakeClock())
    assert isinstance(src.protocol, ModbusProtocol) and src.settings["baudrate"] == 19200
    assert src.protocol.slaves[3].name == "meters-slave3"
    assert src.protocol.char_time == pytest.approx(11 / 19200)  # start, 8 data, even parity, stop
    with pytest.raises(ConfigError, match=r"^sources\[0\]\.slaves: "):
        build_source({"type": "serial", "name": "meters", "port": "/dev/null", "protocol": "modbus"}, FakeClock())
