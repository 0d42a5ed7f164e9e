"""The real ``edge-gateway decode`` CLI, run as a process (so not in the unit tier).

Moved from the unit tier's test_ble_formats, test_security_drivers and test_serial_protocols.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from drivers import formats as cli_formats
from drivers.ble.formats import FORMATS
from tests.support import ROOT, VECTORS

GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"  # gpsd "NMEA Revealed"
BAD = GGA.replace(b"*47", b"*46")


def _vector(name):
    return json.loads((VECTORS / "modbus" / name).read_text())


def test_cli_decode_lists_exactly_the_registry_and_the_serial_formats():
    assert set(cli_formats.FORMATS) == set(FORMATS) | set(cli_formats.SERIAL)
    for name, row in FORMATS.items():
        assert cli_formats.cli_decoder(name) is row.cli_decode
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "decode", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert ", ".join(cli_formats.FORMATS) in " ".join(out.split())
    bad = subprocess.run([sys.executable, "-m", "gateway.cli", "decode", "nosuch", "00"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and ", ".join(sorted(cli_formats.FORMATS)) in bad.stderr


def test_cli_decode_modbus_zz_prints_no_traceback():
    res = subprocess.run([sys.executable, "-m", "gateway.cli", "decode", "modbus", "zz"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "bad_hex" in res.stderr


# --- the real CLI -------------------------------------------------------------------------------------------

def _cli(*args):
    exe = pathlib.Path(sys.executable).parent / "edge-gateway"
    return subprocess.run([str(exe), "decode"] + list(args), capture_output=True, text=True, timeout=60)


def test_cli_decode_nmea_and_modbus_json():
    out = _cli("nmea", GGA.decode().strip(), "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: (r["value"], r["unit"]) for r in json.loads(out.stdout)}
    assert rows["lat"][1] == "lat" and rows["lat"][0] == pytest.approx(48.1173)
    assert rows["alt"] == (545.4, "m") and rows["sats"] == (8, None)
    case = _vector("simplymodbus_fc03.json")
    out = _cli("modbus", case["response"], "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"name": "reg%d" % i, "value": v, "unit": None}
                                      for i, v in enumerate(case["registers"])]
    bad = _cli("nmea", BAD.decode().strip(), "--json")
    assert bad.returncode == 1 and "bad_checksum" in bad.stderr and bad.stdout == ""
    bad = _cli("modbus", case["response"][:-2] + "00", "--json")
    assert bad.returncode == 1 and "bad_crc" in bad.stderr
