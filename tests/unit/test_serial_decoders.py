"""Serial decoders (NMEA 0183, Modbus RTU, line protocol): published vectors stored as data under
tests/vectors/{nmea,modbus,lines}/*.json (each names its source), every framer fed whole and byte by byte, resync
after garbage, and the pure Modbus planner and scheduler."""

import json
import math
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

from drivers.formats import cli_decoder
from drivers.serial import lines, modbus, nmea
from gateway.core.errors import ConfigError, DecodeError
from gateway.core.model import Measurement

VECTORS = ROOT / "tests" / "vectors"


def _cases(fmt):
    return sorted((VECTORS / fmt).glob("*.json"), key=lambda p: p.name)


def _load(path):
    case = json.loads(path.read_text())
    assert case["source"], "every vector names its source"
    return case


def _meas(rows):
    return [Measurement(*row) for row in rows]


def _close(got, want):
    assert [(m.name, m.unit) for m in got] == [(m.name, m.unit) for m in want]
    for g, w in zip(got, want):
        assert g.value == pytest.approx(w.value, rel=1e-12, abs=1e-12), g.name
        assert (g.resolution is None) == (w.resolution is None)
        if w.resolution is not None:
            assert g.resolution == pytest.approx(w.resolution, rel=1e-9)


def _feed_whole_and_bytewise(make, data):
    """Feed ``data`` whole to one framer and byte by byte to another: results and counters must be identical."""
    a, b = make(), make()
    whole = a.feed(data)
    bytewise = []
    for i in range(len(data)):
        bytewise.extend(b.feed(data[i:i + 1]))
    assert whole == bytewise
    return a, b, whole


# --- NMEA --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _cases("nmea"), ids=lambda p: p.stem)
def test_nmea_vector(path):
    case = _load(path)
    data = case["input"].encode() + b"\r\n"
    a, b, out = _feed_whole_and_bytewise(lambda: nmea.NmeaReader(case["max_len"]), data)
    assert a.counters == b.counters
    if "expected" in case:
        exp = case["expected"]
        assert len(out) == 1 and a.counters == {}
        s = out[0]
        assert (s.talker, s.kind) == (exp["talker"], exp["kind"])
        assert (s.time.isoformat() if s.time else None) == exp["time"]
        assert (s.date.isoformat() if s.date else None) == exp["date"]
        for field in ("status", "mode"):
            if field in exp:
                assert getattr(s, field) == exp[field], field
        _close(list(s.measurements), _meas(exp["measurements"]))
    else:
        assert out == [] and a.counters == case["counters"]


def test_nmea_known_values_by_hand():
    """The gpsd GGA/RMC examples, worked out by hand: 4807.038 N = 48 + 7.038/60 degrees, 22.4 knots, 23 March 1994."""
    gga = {m.name: m for m in nmea.cli_decode("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47")}
    assert gga["lat"].value == pytest.approx(48.1173) and gga["lat"].unit == "lat"
    assert gga["lat"].resolution == pytest.approx(0.001 / 60)
    assert gga["lon"].value == pytest.approx(11 + 31.0 / 60) and gga["lon"].unit == "lon"
    assert (gga["alt"].value, gga["alt"].unit, gga["fix"].value, gga["sats"].value) == (545.4, "m", 1, 8)
    reader = nmea.NmeaReader()
    [rmc] = reader.feed(b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n")
    got = {m.name: m for m in rmc.measurements}
    assert got["speed"].value == pytest.approx(22.4 * 1852 / 3600) and got["speed"].unit == "m/s"
    assert got["course"].value == pytest.approx(math.radians(84.4)) and got["course"].unit == "rad"
    assert str(reader.utc) == "1994-03-23 12:35:19+00:00"
    south = {m.name: m.value for m in nmea.cli_decode(
        "$GPGGA,184353.07,1929.045,S,02410.506,E,1,04,2.6,100.00,M,-33.9,M,,0000*6D")}
    assert south["lat"] == pytest.approx(-(19 + 29.045 / 60))


def test_nmea_no_fix_omits_quantities_and_talkers_vary():
    r = nmea.NmeaReader()
    bodies = [b"GNRMC,083559.00,V,,,,,,,010624,,,N", b"GLGGA,083559.00,,,,,0,00,99.99,,,,,,",
              b"GAGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99", b"GNVTG,,T,,M,,N,,K,N"]
    out = r.feed(b"".join(nmea.with_checksum(b) for b in bodies))
    assert [(s.talker, s.kind) for s in out] == [("GN", "RMC"), ("GL", "GGA"), ("GA", "GSA"), ("GN", "VTG")]
    assert [[(m.name, m.value) for m in s.measurements] for s in out] == [
        [], [("fix", 0), ("sats", 0)], [("fix_type", 1)], []]
    assert out[0].date.isoformat() == "2024-06-01" and out[1].time.isoformat() == "08:35:59"
    assert r.counters == {}


def test_nmea_stream_resync_and_counters():
    good = nmea.with_checksum(b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    bad = good.replace(b"*47", b"*46")
    stream = (b"\x00\xffnoise" + good + b"$GPGGA,1235" + good + bad + b"$" + b"X" * 100 + b"\r\n" + good
              + b"$GPZDA,123519,23,03,1994,00,00*" + b"%02X" % nmea.checksum(b"GPZDA,123519,23,03,1994,00,00") + b"\r\n"
              + b"$GPGGA,no checksum\r\n" + good)
    a, b, out = _feed_whole_and_bytewise(nmea.NmeaReader, stream)
    assert len(out) == 4 and all(s.kind == "GGA" for s in out)
    assert a.counters == b.counters == {"garbage": 7, "truncated": 1, "bad_checksum": 1, "overlong": 1,
                                        "ignored": 1, "no_checksum": 1}


def test_nmea_decode_errors_are_typed():
    for body, reason in [(b"GPGGA,123519,9107.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,", "bad_field"),
                         (b"GPGGA,123519,4807.038,X,01131.000,E,1,08,0.9,545.4,M,46.9,M,,", "bad_field"),
                         (b"GPGGA,123519,4807.038,N", "malformed"),
                         (b"GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,320394,003.1,W", "bad_field"),
                         (b"GPGGA,1x3519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,", "malformed"),
                         (b"GPGGA,123519,4807.038,N,01131.000,E,1,08,nan,545.4,M,46.9,M,,", "bad_field"),
                         (b"PUBX,00,123519", "unsupported")]:
        with pytest.raises(DecodeError) as exc:
            nmea.decode_sentence(body)
        assert exc.value.reason == reason, body


def test_nmea_cli_through_format_table():
    out = cli_decoder("nmea")("$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48")
    assert [m.name for m in out] == ["course", "speed"]
    with pytest.raises(DecodeError) as exc:
        cli_decoder("nmea")("$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*49")
    assert exc.value.reason == "bad_checksum"


def test_nmea_checksum_matches_plain_xor():
    for body in (b"", b"A", b"GPGGA,123519", bytes(range(1, 200))):
        x = 0
        for c in body:
            x ^= c
        assert nmea.checksum(body) == x


# --- Modbus ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _cases("modbus"), ids=lambda p: p.stem)
def test_modbus_vector(path):
    case = _load(path)
    if "crc" in case:
        data = bytes.fromhex(case["crc_input"])
        assert modbus.crc16(data) == case["crc"]
        assert modbus.with_crc(data)[-2:] == bytes.fromhex(case["crc_bytes"])
        return
    req = modbus.ReadRequest(case["slave"], case["function"], case["address"], case["count"])
    assert req.encode().hex().upper() == case["request"]
    assert modbus.parse_request(bytes.fromhex(case["request"])) == req
    response = bytes.fromhex(case["response"])
    for chunking in ("whole", "bytewise"):
        framer = modbus.ResponseFramer()
        framer.expect(req)
        pieces = [response] if chunking == "whole" else [response[i:i + 1] for i in range(len(response))]
        results = []
        try:
            for piece in pieces:
                results.append(framer.feed(piece))
        except modbus.ModbusException as exc:
            assert "exception" in case and exc.code == case["exception"]
            assert exc.reason == "exception_%d" % case["exception"] and isinstance(exc, DecodeError)
            assert not framer.pending
            continue
        assert "exception" not in case
        assert results[:-1] == [None] * (len(pieces) - 1)
        assert results[-1] == modbus.ReadResponse(case["slave"], case["function"], tuple(case["registers"]))
        assert not framer.pending


def test_modbus_crc_check_value():
    assert modbus.crc16(b"123456789") == 0x4B37  # CRC-16/MODBUS check value (CRC catalogue)


def test_modbus_framer_hunts_past_noise_and_reports_why():
    req = modbus.read_input(17, 8, 1)
    good = bytes.fromhex("110402000AF8F4")
    framer = modbus.ResponseFramer()
    framer.expect(req)
    assert framer.feed(b"\x00\x11\x99\xfe" + good + b"\x01\x02") == modbus.ReadResponse(17, 4, (10,))
    assert framer.counters == {"skipped": 4, "unexpected": 2}
    # a wrong CRC, then silence: the timeout says bad_crc
    framer.expect(req)
    assert framer.feed(good[:-1] + b"\x00") is None
    assert framer.timeout().reason == "bad_crc" and not framer.pending
    framer.expect(req)
    assert framer.feed(good[:4]) is None
    assert framer.timeout().reason == "truncated"
    framer.expect(req)
    assert framer.timeout().reason == "timeout"
    # a frame for another slave, or with the wrong byte count, is not our answer
    framer.expect(req)
    assert framer.feed(bytes.fromhex("120402000A") + modbus.with_crc(bytes.fromhex("11040400010002"))) is None
    assert framer.timeout().reason == "timeout"


def _entry(**kw):
    return modbus.RegisterEntry.from_dict(kw)


METER = [
    _entry(name="voltage", address=0, type="float32", unit="V", table="input"),
    _entry(name="current", address=2, type="float32", unit="A", table="input"),
    _entry(name="power", address=4, type="float32", unit="W", table="input"),
    _entry(name="energy", address=6, type="uint32", unit="J", scale=3600, table="input"),
    _entry(name="frequency", address=8, type="uint16", unit="Hz", scale=0.01, table="input"),
    _entry(name="pf", address=9, type="int16", scale=0.001, table="input"),
    _entry(name="export", address=10, type="int32", word_order="little", unit="J", scale=3600, table="input"),
]


def test_modbus_register_decode_types_and_word_order():
    regs = (0x4366, 0x8000, 0x3FA0, 0x0000, 0x4390, 0x0000, 0x0012, 0xD687, 5000, 0x10000 - 950, 0xEE90, 0xFFFE)
    got = modbus.decode_registers(METER, 0, regs)
    assert [(m.name, m.unit) for m in got] == [(e.name, e.unit) for e in METER]
    vals = [m.value for m in got]
    assert vals[:3] == [230.5, 1.25, 288.0]
    assert vals[3] == 1234567 * 3600 and got[3].resolution == 3600
    assert vals[4] == pytest.approx(50.0) and got[4].resolution == 0.01
    assert vals[5] == pytest.approx(-0.95)
    assert vals[6] == -70000 * 3600
    nan = modbus.decode_registers(METER[:1], 0, (0x7FC0, 0x0000))
    assert nan == []  # NaN means "not available": omitted
    with pytest.raises(DecodeError) as exc:
        modbus.decode_registers(METER, 0, regs[:5])
    assert exc.value.reason == "short_read"



# An independent encoder for the 32-bit cross-check: pymodbus's own register conversion (its client's
# convert_to_registers, pure), in both word orders, against our decoder.
@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize("kind,value,scale", [
    ("int16", -1234, 1), ("int16", -32768, 0.1), ("uint16", 65535, 1), ("int32", -70000, 1),
    ("int32", -2147483648, 0.001), ("uint32", 4294967295, 1), ("uint32", 1234567, 3600), ("float32", -21.5, 1),
    ("float32", 1.25, 10)])
def test_modbus_values_match_pymodbus_encoding(kind, value, scale, word_order):
    from pymodbus.client.mixin import ModbusClientMixin as M
    words = M.convert_to_registers(value, getattr(M.DATATYPE, kind.upper()), word_order=word_order)
    entry = _entry(name="x", address=7, type=kind, word_order=word_order, scale=scale)
    (got,) = modbus.decode_registers([entry], 7, tuple(words))
    assert got.value == pytest.approx(value * scale, rel=1e-12)
    if kind.startswith("int") and value < 0:
        assert got.value < 0  # signed, not read as unsigned
    if len(words) == 2 and word_order == "little":  # word-swapped ("CDAB") is the low word first
        hi_first = modbus.decode_registers([_entry(name="x", address=7, type=kind, scale=scale)], 7,
                                           tuple(reversed(words)))
        assert hi_first[0].value == pytest.approx(got.value, rel=1e-12)


def test_modbus_coils_and_discrete_inputs_are_booleans():
    coils = [_entry(name="pump", address=20, table="coil"), _entry(name="valve", address=21, table="coil"),
             _entry(name="fan", address=27, table="coil")]
    # the spec's 01 example: coils 20..38 from CD 6B 05 (6.1)
    bits = (1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1)
    got = modbus.decode_registers(coils, 20, bits)
    assert [(m.name, m.value, m.unit, m.resolution) for m in got] == [
        ("pump", True, None, None), ("valve", False, None, None), ("fan", True, None, None)]
    assert all(m.value.__class__ is bool for m in got)  # SenML vb, not a number
    door = [_entry(name="door", address=196, table="discrete"), _entry(name="smoke", address=198, table="discrete")]
    assert [(p.table, p.address, p.count) for p in modbus.plan_polls({1: coils + door})] == [
        ("coil", 20, 2), ("coil", 27, 1), ("discrete", 196, 1), ("discrete", 198, 1)]
    polls = modbus.plan_polls({1: coils + door}, max_gap=6)
    assert [(p.table, p.address, p.count) for p in polls] == [("coil", 20, 8), ("discrete", 196, 3)]
    assert polls[0].request() == modbus.read_coils(1, 20, 8) and polls[1].request() == modbus.read_discrete(1, 196, 3)
    assert polls[0].request().response_length == 6 and modbus.read_coils(1, 0, 9).response_length == 7
    # the bit tables allow 2000 per request (6.1), the register tables 125
    run = [_entry(name="c%d" % i, address=i, table="coil") for i in range(2500)]
    assert [(p.address, p.count) for p in modbus.plan_polls({1: run})] == [(0, 2000), (2000, 500)]
    with pytest.raises(ValueError):
        modbus.read_coils(1, 0, 2001)


@pytest.mark.parametrize("entry,says", [
    ({"name": "x", "address": 1, "type": "bool"}, "only for table"),
    ({"name": "x", "address": 1, "table": "coil", "type": "uint16"}, "only bool"),
    ({"name": "x", "address": 1, "table": "coil", "scale": 2}, "no scale"),
    ({"name": "x", "address": 1, "table": "discrete", "unit": "V"}, "no unit"),
    ({"name": "x", "address": 1, "table": "coils"}, "coil, discrete, holding, input"),
    ({"name": "x", "address": 1, "type": "int32", "word_order": "swapped"}, "big or little"),
])
def test_modbus_bit_table_config_errors(entry, says):
    with pytest.raises(ConfigError, match=says) as exc:
        modbus.RegisterEntry.from_dict(entry, file="gw.toml")
    assert exc.value.key == "registers.x"

def test_modbus_register_map_config_errors():
    with pytest.raises(ConfigError) as exc:
        modbus.RegisterEntry.from_dict({"name": "x", "address": 1, "type": "int64"}, file="gw.toml")
    assert "gw.toml" in str(exc.value) and exc.value.key == "registers.x"
    with pytest.raises(ConfigError):
        modbus.RegisterEntry.from_dict({"name": "x"})


def test_modbus_planner_groups_contiguous_registers():
    holding = [_entry(name="id", address=0), _entry(name="baud", address=1), _entry(name="serial", address=2,
                                                                                         type="uint32")]
    far = [_entry(name="a", address=100), _entry(name="b", address=224), _entry(name="c", address=225)]
    polls = modbus.plan_polls({2: METER + holding, 1: far})
    assert [(p.slave, p.table, p.address, p.count, len(p.entries)) for p in polls] == [
        (1, "holding", 100, 1, 1), (1, "holding", 224, 2, 2),
        (2, "holding", 0, 4, 3), (2, "input", 0, 12, 7)]
    assert polls[3].request() == modbus.read_input(2, 0, 12)
    # the 125-register cap splits a long run
    long_run = [_entry(name="r%d" % i, address=i) for i in range(300)]
    assert [(p.address, p.count) for p in modbus.plan_polls({1: long_run})] == [(0, 125), (125, 125), (250, 50)]
    # a gap is bridged only when allowed
    assert [(p.address, p.count) for p in modbus.plan_polls({1: far[:2]}, max_gap=200)] == [(100, 125)]
    assert [(p.address, p.count) for p in modbus.plan_polls({1: far}, max_gap=200)] == [(100, 125), (225, 1)]


def test_modbus_scheduler_backs_off_one_slave_only():
    s = modbus.PollScheduler([1, 2], interval=1.0, base=2.0, cap=10.0)
    assert s.due(0.0) == [1, 2]
    s.success(1, 0.0)
    assert s.failure(2, 0.0, "timeout") == 2.0
    assert s.due(1.0) == [1] and s.states[2].backing_off
    s.success(1, 1.0)
    assert s.failure(2, 2.0, "exception_2") == 6.0
    assert s.failure(2, 6.0, "timeout") == 14.0
    assert s.failure(2, 14.0, "timeout") == 24.0  # capped at 10 s
    assert s.states[2].last_reason == "timeout" and s.states[2].failures == 4
    assert s.due(2.0) == [1]
    s.success(2, 24.0)
    assert s.states[2] == modbus.SlaveState(0, 25.0, None)


def test_modbus_request_validation():
    for args in ((0, 3, 0, 1), (1, 6, 0, 1), (1, 3, 0, 126), (1, 3, 65535, 2), (1, 1, 0, 2001), (1, 2, 0, 0)):
        with pytest.raises(ValueError):
            modbus.ReadRequest(*args)
    with pytest.raises(DecodeError) as exc:
        modbus.parse_request(bytes.fromhex("1103006B00037688"))
    assert exc.value.reason == "bad_crc"


def test_modbus_cli():
    assert cli_decoder("modbus")("11 04 02 000A F8F4") == [Measurement("reg0", 10)]
    coils = cli_decoder("modbus")("010103CD6B054282")  # the spec's 01 example (tests/vectors/modbus/spec_fc01_pdu)
    assert [m.name for m in coils[:2]] == ["bit0", "bit1"] and [m.value for m in coils[:8]] == [1, 0, 1, 1, 0, 0, 1, 1]
    with pytest.raises(modbus.ModbusException) as exc:
        cli_decoder("modbus")("018302C0F1")
    assert exc.value.reason == "exception_2"


# --- line protocol -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _cases("lines"), ids=lambda p: p.stem)
def test_lines_vector(path):
    case = _load(path)
    data = case["stream"].encode("latin-1")
    a, b, framed = _feed_whole_and_bytewise(lambda: lines.LineFramer(), data)
    decoder = lines.LineDecoder(case["mode"], case.get("columns"), case["units"])
    got, errors = [], []
    for line in framed:
        try:
            sensor, ms = decoder.decode(line)
        except DecodeError as exc:
            errors.append(exc.reason)
            continue
        got.append([sensor, [[m.name, m.value, m.unit, m.resolution] for m in ms]])
    assert errors == case["errors"]
    assert len(got) == len(case["expected"])
    for (s, ms), (ws, wms) in zip(got, case["expected"]):
        assert s == ws
        _close(_meas(ms), _meas(wms))


def test_line_framer_overlong_counted_once_and_resyncs():
    data = b"a=1\n" + b"x" * 40 + b"\r\nb=2\r\n"
    a, b, out = _feed_whole_and_bytewise(lambda: lines.LineFramer(16), data)
    assert out == [b"a=1", b"b=2"] and a.overlong == b.overlong == 1
    f = lines.LineFramer(16)
    assert f.feed(b"y" * 17) == [] and f.feed(b"y" * 100) == [] and f.feed(b"\nc=3\n") == [b"c=3"]
    assert f.overlong == 1 and len(f._buf) == 0


def test_line_decoder_rejections_are_typed():
    d = lines.LineDecoder()
    for line, reason in [(b"temp=abc", "bad_value"), (b"temp=1_0", "bad_value"), (b"temp=nan", "bad_value"),
                         (b"temp", "bad_token"), (b"[Cel]=4", "bad_token"), (b"t[]=4", "bad_token"),
                         (b"id=a", "empty"), (b"   ", "empty"), (b"id= t=1", "bad_token"),
                         (b"t=1*ZZ", "bad_value"), (b"t=\xb0", "not_ascii")]:
        with pytest.raises(DecodeError) as exc:
            d.decode(line)
        assert exc.value.reason == reason, line
    assert d.decode(b"t=+5 u=-2 v=007") == (None, [Measurement("t", 5), Measurement("u", -2), Measurement("v", 7)])
    assert lines.cli_decode("id=a temp[Cel]=4.2") == [Measurement("temp", 4.2, "Cel", 0.1)]
    with pytest.raises(ValueError):
        lines.LineDecoder("csv")


def test_serial_core_does_no_io():
    for mod in (nmea, modbus, lines):
        src = pathlib.Path(mod.__file__).read_text()
        for banned in ("import serial", "import asyncio", "import socket", "import time", "open("):
            assert banned not in src, (mod.__name__, banned)
