"""Issue 13 ("Nothing lost, nobody in"), drivers layer: radio and serial input from anyone in range.

One test (or more) per finding, each failing on the code before the fix:

* bounds at the source: out-of-range numbers are a counted ``out_of_range`` DecodeError, never a Reading;
* crashes: long NMEA sentences, ``decode`` CLI input errors, BTHome decoding that grew faster than linear;
* BTHome replay state that lived only in memory, and counter resets that locked a device out;
* BTHome adverts with an unknown or truncated object kept nothing; NMEA GLL was not decoded.
"""

import asyncio
import json
import pathlib
import sys

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

ROOT = pathlib.Path(__file__).resolve().parents[2]

from drivers.ble import bthome  # noqa: E402
from drivers.ble.adverts import AdvertDecoder  # noqa: E402
from drivers.ble.selection import Selection, SensorSpec  # noqa: E402
from drivers.formats import FORMATS, cli_decoder  # noqa: E402
from drivers.serial import lines, modbus, nmea  # noqa: E402
from drivers.serial.protocols import LinesProtocol, NmeaProtocol  # noqa: E402
from gateway import cli  # noqa: E402
from gateway.core.errors import ConfigError, DecodeError  # noqa: E402
from gateway.core.model import Event, Reading  # noqa: E402

VECTORS = ROOT / "tests" / "vectors"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")  # bthome.io/encryption example bindkey
MAC = "54:48:E6:8F:80:A5"
TEMP_HUM = bytes.fromhex("02ca0903bf13")  # bthome.io/format example objects: 25.06 Cel, 50.55 %RH
INT64_MAX = (1 << 63) - 1


def seal(counter, plain=TEMP_HUM, info=0x41):
    """An encrypted BTHome v2 advert (bthome.io/encryption layout) with ``counter``, sealed with ``KEY``."""
    ctr = counter.to_bytes(4, "little")
    nonce = bytes.fromhex(MAC.replace(":", "")) + b"\xd2\xfc" + bytes((info,)) + ctr
    sealed = AESCCM(KEY, tag_length=4).encrypt(nonce, plain, None)
    return bytes((info,)) + sealed[:-4] + ctr + sealed[-4:]


# -- finding 2 of the review: bounds at the source -----------------------------------------------------------------

def test_line_integer_beyond_int64_is_a_counted_error_not_a_reading():
    proto = LinesProtocol()
    assert proto.feed(b"id=s1 temp=123456789012345678901234567890\n") == []
    assert proto.errors == {"out_of_range": 1}
    dec = lines.LineDecoder()
    assert dec.decode(b"a=%d b=%d" % (INT64_MAX, -INT64_MAX - 1))[1][0].value == INT64_MAX
    for line in (b"a=%d" % (INT64_MAX + 1), b"a=%d" % (-INT64_MAX - 2), b"a=1e999", b"a=-1e999"):
        with pytest.raises(DecodeError) as info:
            dec.decode(line)
        assert info.value.reason == "out_of_range", line
    for word in (b"a=nan", b"a=inf", b"a=-Infinity"):
        with pytest.raises(DecodeError) as info:
            dec.decode(word)
        assert info.value.reason == "bad_value", word


def test_nmea_integer_fields_beyond_int64_are_counted_not_decoded():
    body = b"GPGGA,123519,4807.038,N,01131.000,E,1,123456789012345678901234567890,0.9,545.4,M,46.9,M,,"
    reader = nmea.NmeaReader(max_len=200)
    assert reader.feed(nmea.with_checksum(body)) == []
    assert reader.counters == {"out_of_range": 1}


def test_modbus_scaled_values_beyond_int64_or_infinite_are_out_of_range():
    big = modbus.RegisterEntry.from_dict({"name": "e", "address": 0, "type": "int32", "scale": 1 << 40})
    with pytest.raises(DecodeError) as info:
        modbus.decode_registers([big], 0, (0x7FFF, 0xFFFF))
    assert info.value.reason == "out_of_range"
    huge = modbus.RegisterEntry.from_dict({"name": "p", "address": 0, "type": "float32", "scale": 1e300})
    with pytest.raises(DecodeError) as info:
        modbus.decode_registers([huge], 0, (0x7F7F, 0xFFFF))  # float32 max times 1e300 is inf
    assert info.value.reason == "out_of_range"
    with pytest.raises(ConfigError):
        modbus.RegisterEntry.from_dict({"name": "x", "address": 0, "scale": float("inf")})


def test_every_decoded_vector_value_fits_the_bounds():
    """Every measurement any decoder returns for the published vectors is an int64, a finite float or text."""
    for fmt in ("bthome", "ruuvi", "atc", "ess", "lines", "nmea"):
        for path in sorted((VECTORS / fmt).glob("*.json")):
            case = json.loads(path.read_text())
            text = case.get("input")
            if text is None or "error" in case:
                continue
            try:
                got = cli_decoder(fmt)(text, mac=case.get("mac"), key=case.get("key"))
            except DecodeError:
                continue
            for m in got:
                v = m.value
                assert isinstance(v, (bool, str, bytes)) or (isinstance(v, int) and abs(v) <= INT64_MAX + 1) or (
                    isinstance(v, float) and v == v and abs(v) != float("inf")), (path.name, m)


# -- finding 12: crashes -------------------------------------------------------------------------------------------

def test_nmea_checksum_works_for_any_length():
    for n in (0, 1, 2, 127, 256, 257, 258, 259, 400, 1000, 4097):
        body = bytes((32 + (i * 7) % 90 for i in range(n)))
        x = 0
        for c in body:
            x ^= c
        assert nmea.checksum(body) == x, n


def test_nmea_sentence_over_257_bytes_with_max_len_400_is_decoded_whole_and_bytewise():
    body = b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,," + b"," * 250
    data = b"garbage" + nmea.with_checksum(body) + nmea.with_checksum(b"GPTXT," + b"A" * 300)
    assert len(body) > 257
    whole = NmeaProtocol(max_len=400)
    out = whole.feed(data)
    bytewise = NmeaProtocol(max_len=400)
    out_b = [pair for i in range(len(data)) for pair in bytewise.feed(data[i:i + 1])]
    assert out == out_b and len(out) == 1
    assert [m.name for m in out[0][1]] == ["lat", "lon", "fix", "alt", "hdop", "sats"]
    assert whole.errors == bytewise.errors == {"garbage": 7}
    assert whole.ignored == 1


BAD_CLI_INPUT = ("zz", "", "0x", "\udcff", "ff" * 300, "$GPGGA," + "9" * 500, ":", "2a6e:", "id=a t=1e999",
                 "$GPGLL,4916.45,N,12311.12,W,225444,A,*1C", "01830", "00 03 02 00 01 00 00", "4002ca09" + "02" * 300)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_cli_decode_input_errors_are_one_line_and_an_exit_code(fmt, capsys):
    for data in BAD_CLI_INPUT:
        for extra in ([], ["--json"], ["--key", "00" * 16, "--mac", MAC], ["--mac", "nonsense", "--key", "00"]):
            rc = cli.main(["decode", fmt, data] + extra)  # an escaping exception fails the test
            out, err = capsys.readouterr()
            assert rc in (0, 1, 2), (fmt, data, extra)
            if rc:
                assert err.startswith("edge-gateway: ") and "Traceback" not in err, (fmt, data, err)


def test_bthome_payload_longer_than_one_advert_is_refused():
    obj = bytes.fromhex("2e23")  # humidity 35 %, one byte: bthome.io/format example
    fits = b"\x40" + obj * 127  # 255 bytes
    assert len(bthome.decode(fits)) == 127
    with pytest.raises(DecodeError) as info:
        bthome.decode(fits + obj)
    assert info.value.reason == "too_long"
    with pytest.raises(DecodeError) as info:
        bthome.BTHomeDecoder().decode(b"\x40" + obj * 800)
    assert info.value.reason == "too_long"


def _lines_executed(fn, *args):
    """Python line events inside ``drivers/ble/bthome.py`` while ``fn(*args)`` runs: a clock-free cost measure."""
    count = 0
    target = bthome.__file__

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != target:
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn(*args)
    finally:
        sys.settrace(None)
    return count


def test_bthome_decoding_work_grows_linearly_with_repeated_objects():
    """Doubling the objects of one name doubles the work (a quadratic name search would quadruple it)."""
    obj = bytes.fromhex("2e23")
    small = _lines_executed(bthome.decode, b"\x40" + obj * 60)
    large = _lines_executed(bthome.decode, b"\x40" + obj * 120)
    assert large <= 2.3 * small, (small, large)
    names = [m.name for m in bthome.decode(b"\x40" + obj * 120)]
    assert names[:3] == ["hum", "hum_2", "hum_3"] and names[-1] == "hum_120" and len(set(names)) == 120


# -- finding 13: BTHome replay state -------------------------------------------------------------------------------

def test_replay_state_restored_after_restart_refuses_a_captured_advert():
    first = bthome.BTHomeDecoder({MAC: KEY})
    captured = seal(1000)
    first.decode(captured, MAC)
    first.decode(seal(1001), MAC)
    assert first.dirty
    saved = json.loads(json.dumps(first.state()))  # what goes to disk
    assert not first.dirty and saved == {MAC: 1001}
    restarted = bthome.BTHomeDecoder({MAC: KEY})
    assert restarted.restore(saved) == 1
    with pytest.raises(DecodeError) as info:
        restarted.decode(captured, MAC)
    assert info.value.reason == "replay"
    assert restarted.decode(seal(1002), MAC)
    # junk in the file never loosens the state
    assert restarted.restore({MAC: 5, "nonsense": 7, "A4:C1:38:00:00:01": 9, MAC.lower(): "x"}) == 1
    assert restarted.last_counter(MAC) == 1002


def test_counter_reset_is_accepted_after_a_sustained_run_and_counted():
    dec = bthome.BTHomeDecoder({MAC: KEY}, reset_adverts=3, reset_gap_s=60.0)
    dec.decode(seal(500_000), MAC, now=0.0)
    for counter, now in ((1, 100.0), (2, 130.0)):  # battery changed: the device starts again at 1
        with pytest.raises(DecodeError) as info:
            dec.decode(seal(counter), MAC, now=now)
        assert info.value.reason == "replay"
    assert dec.resets == 0
    assert len(dec.decode(seal(3), MAC, now=160.0)) == 2  # third advert, 60 s after the first of the run
    assert dec.resets == 1 and dec.last_reset == (MAC, 500_000, 3) and dec.last_counter(MAC) == 3
    with pytest.raises(DecodeError):  # and the old counters stay refused
        dec.decode(seal(2), MAC, now=170.0)


def test_counter_reset_needs_the_gap_and_is_cancelled_by_the_real_device():
    dec = bthome.BTHomeDecoder({MAC: KEY}, reset_adverts=3, reset_gap_s=60.0)
    dec.decode(seal(1000), MAC, now=0.0)
    for counter, now in ((10, 1.0), (11, 2.0), (12, 3.0), (13, 4.0)):  # a quick burst of captured adverts
        with pytest.raises(DecodeError):
            dec.decode(seal(counter), MAC, now=now)
    dec.decode(seal(1001), MAC, now=5.0)  # the real device is still heard: the run is void
    for counter, now in ((14, 70.0), (15, 80.0)):
        with pytest.raises(DecodeError):
            dec.decode(seal(counter), MAC, now=now)
    assert dec.resets == 0 and dec.last_counter(MAC) == 1001
    # one captured advert replayed over and over never completes a run, nor does the last one accepted
    for now in range(100, 400, 30):
        for counter in (999, 1001):
            with pytest.raises(DecodeError):
                dec.decode(seal(counter), MAC, now=float(now))
    assert dec.resets == 0
    with pytest.raises(ValueError):
        bthome.BTHomeDecoder({MAC: KEY}, reset_adverts=1)


def test_advert_path_reports_a_counter_reset_as_a_counted_event():
    adverts = AdvertDecoder(Selection([SensorSpec(MAC, "bthome", KEY.hex(), "cellar")]), rssi_interval_s=None,
                            dedup_window_s=0, reset_adverts=2, reset_gap_s=10.0)
    adverts.readings(MAC, {0xFCD2: seal(9000)}, {}, -60, 0.0)
    assert adverts.readings(MAC, {0xFCD2: seal(1)}, {}, -60, 1.0) == []
    out = adverts.readings(MAC, {0xFCD2: seal(2)}, {}, -60, 11.0)
    events = [e for e in out if isinstance(e, Event)]
    assert [(e.sensor, e.name) for e in events] == [("cellar", "counter_reset")]
    assert [r.name for r in out if isinstance(r, Reading)] == ["temp", "hum"]
    assert adverts.counters["counter_reset"] == 1 and adverts.counters["error.replay"] == 1


class _Clock:
    def monotonic(self):
        return 0.0


def _ble_source(state_dir, **extra):
    from drivers.ble.adapter import build_ble_source
    spec = {"type": "ble", "name": "ble", "dedup_window_s": 0, "rssi_interval_s": False,
            "sensors": [{"mac": MAC, "format": "bthome", "key": KEY.hex(), "alias": "cellar"}]}
    spec.update(extra)
    return build_ble_source(spec, _Clock(), "ble", state_dir=str(state_dir))


def _run_and_stop(source):
    """Run the source with its scan loop replaced by a wait, then stop it as the agent does (cancel)."""
    async def idle(emit):
        await asyncio.Event().wait()
    source._scan_forever = idle

    async def main():
        task = asyncio.create_task(source.run(lambda item: None))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    asyncio.run(main())


def test_ble_source_keeps_counters_across_a_restart(tmp_path):
    source = _ble_source(tmp_path)
    captured = seal(70)
    for counter in range(60, 80):  # many accepted adverts: nothing is written per advert
        source.adverts.readings(MAC, {0xFCD2: seal(counter)}, {}, -60, 0.0)
    files = list(tmp_path.iterdir())
    assert files == []
    _run_and_stop(source)  # the stop writes the state
    [state] = list(tmp_path.iterdir())
    assert state.name == "bthome-counters-ble.json"
    assert json.loads(state.read_text())["counters"] == {MAC: 79}
    assert source.counters["state_writes"] == 1
    restarted = _ble_source(tmp_path)
    assert restarted.load_replay_state() == 1
    assert restarted.adverts.readings(MAC, {0xFCD2: captured}, {}, -60, 0.0) == []
    assert restarted.counters["error.replay"] == 1
    assert restarted.save_replay_state() is False  # nothing moved: no write


def test_ble_source_with_a_corrupt_state_file_starts_and_counts_it(tmp_path):
    (tmp_path / "bthome-counters-ble.json").write_text("{not json")
    source = _ble_source(tmp_path)
    assert source.load_replay_state() == 0
    assert source.counters["state_corrupt"] == 1
    assert source.adverts.readings(MAC, {0xFCD2: seal(5)}, {}, -60, 0.0)
    assert source.save_replay_state() is True
    assert json.loads((tmp_path / "bthome-counters-ble.json").read_text())["counters"] == {MAC: 5}


def test_ble_source_without_keys_keeps_no_state_file(tmp_path):
    from drivers.ble.adapter import build_ble_source
    source = build_ble_source({"type": "ble", "name": "open"}, _Clock(), "open", state_dir=str(tmp_path))
    _run_and_stop(source)
    assert list(tmp_path.iterdir()) == []


# -- finding 5: decoders that disagree with independent implementations ---------------------------------------------

def test_bthome_unknown_object_keeps_the_measurements_before_it():
    # bthome-ble tests/test_parser_v2.py test_bthome_battery_wrong_object_id_humidity: battery 93 %, then 0xFE
    with pytest.raises(DecodeError) as info:
        bthome.decode(bytes.fromhex("40015dfe5d0903b718"))
    assert info.value.reason == "unknown_object"
    assert [(m.name, m.value) for m in info.value.measurements] == [("batt", 93)]
    adverts = AdvertDecoder(Selection([SensorSpec(MAC, "bthome", None, "hall")]), rssi_interval_s=None)
    # an object id newer than our table (0x65 and up) after a temperature: the temperature is kept
    out = adverts.readings(MAC, {0xFCD2: bytes.fromhex("4002ca09650102")}, {}, -60, 0.0)
    assert [(r.sensor, r.name, r.value) for r in out] == [("hall", "temp", 25.06)]
    assert adverts.counters["error.unknown_object"] == 1 and adverts.counters["partial"] == 1


def test_bthome_truncated_object_keeps_the_measurements_before_it():
    with pytest.raises(DecodeError) as info:
        bthome.decode(bytes.fromhex("4002ca0903bf"))  # bthome.io/format example cut inside the humidity
    assert info.value.reason == "too_short"
    assert [(m.name, m.value) for m in info.value.measurements] == [("temp", 25.06)]
    with pytest.raises(DecodeError) as info:  # nothing before the fault: a plain error, no partial list
        bthome.decode(bytes.fromhex("4003bf"))
    assert not hasattr(info.value, "measurements")


def test_encrypted_partial_advert_moves_the_counter():
    dec = bthome.BTHomeDecoder({MAC: KEY})
    with pytest.raises(DecodeError) as info:
        dec.decode(seal(42, TEMP_HUM + b"\xfe\x01"), MAC)
    assert [m.name for m in info.value.measurements] == ["temp", "hum"]
    assert dec.last_counter(MAC) == 42


def test_nmea_gll_is_decoded_when_asked_for():
    proto = NmeaProtocol(sentences=["GLL"])
    out = proto.feed(b"$GPGLL,4916.45,N,12311.12,W,225444,A,*1D\r\n$GPGLL,,,,,,V,N*64\r\n")
    assert [[m.name for m in ms] for _, ms in out] == [["lat", "lon"]]
    assert proto.errors == {}
    assert "GLL" not in NmeaProtocol().sentences  # GLL repeats the GGA position: opt in
    for bad, reason in ((b"GPGLL,4916.45,N,12311.12,W,225444,X,A", "bad_field"),
                        (b"GPGLL,4916.45,N,12311.12,W,225444,A,AA", "bad_field"),
                        (b"GPGLL,4916.45,N,12311.12", "malformed")):
        with pytest.raises(DecodeError) as info:
            nmea.decode_sentence(bad)
        assert info.value.reason == reason, bad


def test_ble_source_writes_behind_only_when_a_counter_moved(tmp_path):
    """Each write-behind step (one per ``replay_flush_s``) writes only when a counter moved since the last write."""
    source = _ble_source(tmp_path)

    async def steps():
        written = []
        source.adverts.readings(MAC, {0xFCD2: seal(1)}, {}, -60, 0.0)
        for _ in range(3):
            written.append(await source.flush_replay_state())
        source.adverts.readings(MAC, {0xFCD2: seal(2)}, {}, -60, 0.0)
        source.adverts.readings(MAC, {0xFCD2: seal(3)}, {}, -60, 0.0)
        written.append(await source.flush_replay_state())
        return written
    assert asyncio.run(steps()) == [True, False, False, True]
    assert source.counters["state_writes"] == 2
    assert json.loads((tmp_path / "bthome-counters-ble.json").read_text())["counters"] == {MAC: 3}
    (tmp_path / "bthome-counters-ble.json").unlink()
    tmp_path.rmdir()  # the directory is gone: the write fails, is counted, and is tried again next time
    source.adverts.readings(MAC, {0xFCD2: seal(4)}, {}, -60, 0.0)
    assert asyncio.run(source.flush_replay_state()) is False
    assert source.counters["state_write_failed"] == 1 and source.adverts.bthome.dirty


def test_serial_frame_limits_are_bounded_in_the_config():
    from drivers.serial.protocols import MAX_FRAME, make_protocol
    assert make_protocol({"protocol": "nmea", "max_len": 400}).reader.framer.max_len == 400
    for spec in ({"protocol": "nmea", "max_len": MAX_FRAME + 1}, {"protocol": "lines", "max_line": 10 ** 9},
                 {"protocol": "lines", "max_line": "big"}):
        with pytest.raises(ConfigError) as info:
            make_protocol(spec)
        assert "max_l" in str(info.value)
