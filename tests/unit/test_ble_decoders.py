"""BLE decoders: real byte vectors stored as data (tests/vectors/<format>/*.json), plus the stateful rules.

Each vector names its source. One parametrised test runs them all through the CLI entry point of the format.
"""

import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from drivers.ble import atc, bthome, ess, ruuvi
from drivers.ble import formats as ble_formats
from drivers.formats import cli_decoder
from gateway.core.errors import DecodeError
from gateway.core.model import Measurement

VECTORS = ROOT / "tests" / "vectors"
FORMATS = tuple(ble_formats.FORMATS)  # every row of the registry has vectors
CASES = sorted((fmt, p) for fmt in FORMATS for p in (VECTORS / fmt).glob("*.json"))
MAC_OF = {"ruuvi": ruuvi.mac_of, "atc": atc.mac_of}

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
MAC = "54:48:E6:8F:80:A5"
# bthome-ble tests/test_parser_v2.py (test_same_service_data, test_increasing/decreasing_encryption_counter,
# test_reset_encryption_counter): counters 0x00112233, +1, -1, 0xFFFFFFFF and 0
ADV_1122867 = bytes.fromhex("41e445f3c9962b332211006c7c4519")
ADV_1122868 = bytes.fromhex("413e932cc7175f34221100553876af")
ADV_1122866 = bytes.fromhex("41723d3035fb88322211009e7414c0")
ADV_MAX = bytes.fromhex("41ba0db07aeef6ffffffff21fd4600")
ADV_ZERO = bytes.fromhex("41de40b50e676600000000d7cb95de")


def _load(path):
    return json.loads(path.read_text())


def _triples(measurements):
    return [(m.name, m.value, m.unit) for m in measurements]


def test_every_format_has_vectors():
    for fmt in FORMATS:
        assert len(list((VECTORS / fmt).glob("*.json"))) >= 4, fmt
    for _, path in CASES:
        assert _load(path)["source"].strip(), path


@pytest.mark.parametrize("fmt,path", CASES, ids=["%s/%s" % (f, p.stem) for f, p in CASES])
def test_vector(fmt, path):
    case = _load(path)
    decode = cli_decoder(fmt)
    if "error" in case:
        with pytest.raises(DecodeError) as info:
            decode(case["input"], mac=case["mac"], key=case["key"])
        assert info.value.reason == case["error"], str(info.value)
        return
    got = decode(case["input"], mac=case["mac"], key=case["key"])
    assert all(isinstance(m, Measurement) for m in got)
    want = [(e["name"], e["value"], e["unit"]) for e in case["expected"]]
    assert _triples(got) == want
    # bool stays bool, int stays int (True == 1 would hide a wrong type)
    assert [type(m.value) for m in got] == [type(v) for _, v, _ in want] or all(
        isinstance(m.value, float) == isinstance(v, float) and isinstance(m.value, bool) == isinstance(v, bool)
        for m, (_, v, _) in zip(got, want))
    if "mac_of" in case:
        assert MAC_OF[fmt](bytes.fromhex(case["input"])) == case["mac_of"]


def _valid_bytes(fmt):
    for _, path in ((f, p) for f, p in CASES if f == fmt):
        case = _load(path)
        if "error" not in case and case["input"]:
            yield case, bytes.fromhex(case["input"].replace(" ", ""))


@pytest.mark.parametrize("fmt,decode", [("ruuvi", ruuvi.decode), ("atc", atc.decode)])
def test_fixed_length_formats_reject_every_truncation(fmt, decode):
    for case, data in _valid_bytes(fmt):
        for cut in range(len(data)):
            if fmt == "atc" and cut in atc.FORMATS:  # a 13-byte prefix of a pvvx advert IS an ATC1441 length
                assert atc.format_of(data[:cut]) == "atc1441"
                continue
            with pytest.raises(DecodeError) as info:
                decode(data[:cut])
            assert info.value.reason in ("too_short", "bad_length", "bad_version", "encrypted_unsupported")


def test_bthome_prefixes_frame_or_fail_cleanly():
    """Byte by byte: a prefix that ends on an object boundary decodes to a prefix of the result, else too_short."""
    for case, data in _valid_bytes("bthome"):
        if case["key"]:
            continue
        full = _triples(bthome.decode(data))
        for cut in range(1, len(data)):
            try:
                part = _triples(bthome.decode(data[:cut]))
            except DecodeError as exc:
                assert exc.reason == "too_short", (case["input"], cut, exc)
            else:
                assert part == full[:len(part)]


def test_bthome_encrypted_truncations_and_bit_flips_are_rejected():
    data = ADV_1122867
    for cut in range(len(data)):
        with pytest.raises(DecodeError) as info:
            bthome.decode(data[:cut], mac=MAC, key=KEY)
        assert info.value.reason in ("too_short", "bad_mic")
    for i in range(1, len(data)):  # byte 0 is the device info: flipping it changes version/flags
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(DecodeError) as info:
                bthome.decode(bytes(bad), mac=MAC, key=KEY)
            assert info.value.reason == "bad_mic"


def test_bthome_resolution_and_pressure_in_pa():
    by_name = {m.name: m for m in bthome.cli_decode("40 00 09 01 5d 02 5d 09 03 b7 18 04 13 8a 01")}
    assert by_name["temp"].resolution == 0.01
    assert by_name["hum"].resolution == 0.01
    assert by_name["pres"] == Measurement("pres", 100883, "Pa", 1)
    assert isinstance(by_name["pres"].value, int)
    assert by_name["packet_id"].value == 9


def test_bthome_repeated_names_are_suffixed_per_name():
    got = bthome.decode(bytes.fromhex("40 02ca09 02cf09 45 1601 2e34 03bf13".replace(" ", "")))
    assert [m.name for m in got] == ["temp", "temp_2", "temp_3", "hum", "hum_2"]
    assert [m.value for m in got] == [25.06, 25.11, 27.8, 52, 50.55]


def test_bthome_out_of_order_objects_are_accepted_in_wire_order():
    got = bthome.decode(bytes.fromhex("4003bf1302ca090009"))
    assert _triples(got) == [("hum", 50.55, "%RH"), ("temp", 25.06, "Cel"), ("packet_id", 9, None)]


def test_bthome_events_binary_text_raw_version():
    # layouts from bthome.io/format: button 0x3A, dimmer 0x3C (event, steps), text 0x53 / raw 0x54 with a
    # length byte, firmware version 0xF1 (4 bytes, reversed) and 0xF2 (3 bytes)
    got = bthome.decode(bytes.fromhex("40 2d01 2101 3a04 3c0103 3c0205 3a80 530348692e 540200ff f100010204 f2000106"
                                      .replace(" ", "")))
    assert _triples(got) == [
        ("window", True, None), ("motion", True, None), ("button", "long_press", None), ("dimmer", -3, None),
        ("dimmer_2", 5, None), ("button_2", "hold_press", None), ("text", "Hi.", None), ("raw", b"\x00\xff", None),
        ("firmware_version", "4.2.1.0", None), ("firmware_version_2", "6.1.0", None)]
    assert bthome.decode(bytes.fromhex("402d00"))[0].value is False
    for bad, reason in (("402d02", "bad_value"), ("403c0301", "bad_value"), ("a002ffff", "bad_version"),
                        ("4053", "too_short"), ("405305414243", "too_short"), ("4053 02 c328".replace(" ", ""),
                                                                                  "bad_value")):
        with pytest.raises(DecodeError) as info:
            bthome.decode(bytes.fromhex(bad))
        assert info.value.reason == reason, bad


def test_bthome_table_covers_the_published_ids():
    # the object ids of the BTHome v2 spec (bthome.io/format), as listed in bthome-ble const.py MEAS_TYPES
    published = set(range(0x00, 0x30)) | {0x3A, 0x3C} | set(range(0x3D, 0x65)) | {0xF0, 0xF1, 0xF2}
    assert published <= set(bthome.OBJECTS)
    for oid, (name, length, signed, num, den, unit, kind) in bthome.OBJECTS.items():
        assert length in (-1, 1, 2, 3, 4), oid
        assert unit is None or unit in {"Cel", "%RH", "Pa", "%EL", "V", "A", "W", "lx", "kg", "m", "s", "m/s",
                                        "m/s2", "m3", "m3/s", "deg", "S/m", "kWh", "ppm", "ug/m3", "/100"}, oid


def test_bthome_wrong_key_length_and_bad_mac_text():
    with pytest.raises(DecodeError) as info:
        bthome.decode(ADV_1122867, mac=MAC, key=KEY[:8])
    assert info.value.reason == "bad_key"
    assert KEY.hex() not in str(info.value)
    with pytest.raises(DecodeError) as info:
        bthome.decode(ADV_1122867, mac="not a mac", key=KEY)
    assert info.value.reason == "bad_mac_format"


# -- strict replay protection ------------------------------------------------------------------------------------

def test_replay_is_strict():
    dec = bthome.BTHomeDecoder({MAC.lower(): KEY})
    assert _triples(dec.decode(ADV_1122867, MAC)) == [("temp", 25.06, "Cel"), ("hum", 50.55, "%RH")]
    assert dec.last_counter(MAC) == 1122867
    with pytest.raises(DecodeError) as info:  # same counter: bthome-ble accepts, we do not
        dec.decode(ADV_1122867, MAC)
    assert info.value.reason == "replay"
    assert len(dec.decode(ADV_1122868, MAC)) == 2
    with pytest.raises(DecodeError) as info:  # older counter
        dec.decode(ADV_1122866, MAC)
    assert info.value.reason == "replay"
    assert dec.last_counter(MAC) == 1122868


def test_replay_state_moves_only_after_a_valid_mic():
    dec = bthome.BTHomeDecoder({MAC: KEY})
    forged = bytearray(ADV_MAX)
    forged[3] ^= 0x01  # counter 0xFFFFFFFF but a broken MIC
    with pytest.raises(DecodeError) as info:
        dec.decode(bytes(forged), MAC)
    assert info.value.reason == "bad_mic"
    assert dec.last_counter(MAC) is None
    dec.decode(ADV_1122867, MAC)
    assert dec.last_counter(MAC) == 1122867


def test_counter_wrap_needs_forget():
    dec = bthome.BTHomeDecoder({MAC: KEY})
    dec.decode(ADV_MAX, MAC)
    with pytest.raises(DecodeError) as info:
        dec.decode(ADV_ZERO, MAC)
    assert info.value.reason == "replay"
    dec.forget(MAC)
    assert [m.name for m in dec.decode(ADV_ZERO, MAC)] == ["temp", "hum"]


def test_decoder_keys_are_per_mac_and_downgrade_is_refused():
    dec = bthome.BTHomeDecoder({MAC: KEY})
    with pytest.raises(DecodeError) as info:
        dec.decode(bytes.fromhex("4002ca0903bf13"), MAC)
    assert info.value.reason == "downgrade"
    other = "A4:C1:38:8D:18:B2"
    assert len(dec.decode(bytes.fromhex("4002ca0903bf13"), other)) == 2
    with pytest.raises(DecodeError) as info:
        dec.decode(ADV_1122867, other)
    assert info.value.reason == "no_key"
    # MAC carried in the payload (device info bit 1) is used when the caller has none
    got = dec.decode(bytes.fromhex("43a5808fe64854f196c06ffb4900112233f08ecbde"))
    assert _triples(got) == [("temp", 25.06, "Cel"), ("hum", 50.55, "%RH")]
    assert dec.last_counter(MAC) == 0x33221100


def test_encrypted_payload_with_every_object_kind():
    plain = bytes.fromhex("0007 0155 02ca09 03bf13 04138a01 2101 3a01".replace(" ", ""))
    nonce = bytes.fromhex("5448e68f80a5") + b"\xd2\xfc" + b"\x41" + (7).to_bytes(4, "little")
    sealed = AESCCM(KEY, tag_length=4).encrypt(nonce, plain, None)
    adv = b"\x41" + sealed[:-4] + (7).to_bytes(4, "little") + sealed[-4:]
    assert _triples(bthome.decode(adv, mac=MAC, key=KEY)) == _triples(bthome.decode(b"\x40" + plain))


# -- ESS, Ruuvi and ATC details ----------------------------------------------------------------------------------

def test_ess_characteristic_api():
    assert ess.decode_characteristic(0x2A6E, b"\xca\x09") == Measurement("temp", 25.06, "Cel", 0.01)
    assert ess.decode_characteristic(0x2A6F, b"\xff\xff") is None
    assert ess.decode_characteristic(0x2A6D, (1024944).to_bytes(4, "little")).value == 102494.4
    with pytest.raises(DecodeError) as info:
        ess.cli_decode("ca09")
    assert info.value.reason == "bad_input"
    with pytest.raises(DecodeError) as info:
        ess.cli_decode("zz:ca09")
    assert info.value.reason == "bad_uuid"
    assert ess.cli_decode("00002a6e-0000-1000-8000-00805f9b34fb:ca09")[0].value == 25.06


def test_ruuvi_each_sentinel_omits_only_its_quantity():
    valid = bytearray.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
    full = [m.name for m in ruuvi.decode(bytes(valid))]
    sentinels = {"temp": (1, b"\x80\x00"), "hum": (3, b"\xff\xff"), "pres": (5, b"\xff\xff"),
                 "accel_x": (7, b"\x80\x00"), "accel_y": (9, b"\x80\x00"), "accel_z": (11, b"\x80\x00"),
                 "movement": (15, b"\xff"), "seq": (16, b"\xff\xff")}
    for name, (offset, raw) in sentinels.items():
        data = bytearray(valid)
        data[offset:offset + len(raw)] = raw
        assert [m.name for m in ruuvi.decode(bytes(data))] == [n for n in full if n != name], name
    power = int.from_bytes(valid[13:15], "big")
    for name, new in (("voltage", (2047 << 5) | (power & 31)), ("tx_power", (power & ~31) | 31)):
        data = bytearray(valid)
        data[13:15] = new.to_bytes(2, "big")
        assert [m.name for m in ruuvi.decode(bytes(data))] == [n for n in full if n != name], name


def test_bad_hex_is_a_decode_error():
    for fmt in FORMATS:
        with pytest.raises(DecodeError) as info:
            cli_decoder(fmt)("2a6e:zz" if fmt == "ess" else "zz")
        assert info.value.reason == "bad_hex"
