"""drivers/ble/formats.py: one row per BLE format, and everything else derived from it."""

import json
import pathlib

import pytest

from drivers.ble import formats, selection
from drivers.ble.adverts import AdvertDecoder
from drivers.ble.formats import ADVERTISED, FORMATS, MANUFACTURER, SERVICE

ROOT = pathlib.Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"


def _plain_vectors(name):
    """Vectors of ``name`` that decode without a key or MAC and are not errors: fit for the advert path."""
    for path in sorted((VECTORS / name).glob("*.json")):
        case = json.loads(path.read_text())
        if "error" not in case and not case.get("key") and case["expected"]:
            yield path.stem, case


def test_rows_are_complete():
    for name, row in FORMATS.items():
        module = row.load()
        assert callable(module.decode) and callable(module.cli_decode), name
        if row.keyed:
            assert callable(row.decoder_class()), name
        if row.advert is not None:
            assert row.advert[0] in (SERVICE, MANUFACTURER) and 0 <= row.advert[1] <= 0xFFFF, name
    assert len(formats.RECORDS) == len(ADVERTISED), "two formats claim the same advert record"


@pytest.mark.parametrize("name", ADVERTISED)
def test_every_advertised_row_decodes_its_vectors_through_the_advert_path(name):
    """The vector's payload, put in the advert record the row names, comes out of the receive path."""
    row = FORMATS[name]
    kind, ident = row.advert
    cases = list(_plain_vectors(name))
    assert cases, name
    for stem, case in cases:
        payload = bytes.fromhex(case["input"])
        service = {"0000%04x-0000-1000-8000-00805f9b34fb" % ident: payload} if kind == SERVICE else {}
        maker = {ident: payload} if kind == MANUFACTURER else {}
        assert selection.records(service, maker) == [(name, payload)], stem
        decoder = AdvertDecoder(selection.Selection(formats=[name]), rssi_interval_s=None, skip=())
        got = [(r.name, r.value, r.unit) for r in decoder.readings("AA:BB:CC:DD:EE:FF", service, maker, None, 1.0)]
        assert got == [(e["name"], e["value"], e["unit"]) for e in case["expected"]], stem


def test_config_spellings_and_patterns_come_from_the_rows():
    for name in ADVERTISED:
        for spelling in (name,) + FORMATS[name].aliases:
            assert selection.normalise_format(spelling.upper()) == name
    with pytest.raises(ValueError, match="unknown BLE format"):
        selection.normalise_format("ess")  # read over GATT, never advertised
    assert FORMATS["bthome"].pattern() == (0x16, b"\xd2\xfc")
    assert FORMATS["ruuvi"].pattern() == (0xFF, b"\x99\x04")


def test_dedup_uses_the_rows_packet_id():
    plain = bytes.fromhex("40000902")  # BTHome v2, packet id 9 ... then a battery byte
    assert selection.Deduper.key("bthome", plain + b"\x01\x5d") == ("pid", 9)
    assert selection.Deduper.key("ruuvi", b"\x05\x01") == b"\x05\x01"


def test_a_new_row_is_enough(monkeypatch):
    """A format added as one row (here: BTHome's decoder under another company id) is recognised and decoded."""
    row = formats.BleFormat("acme", "drivers.ble.bthome", (MANUFACTURER, 0x1234))
    monkeypatch.setitem(formats.FORMATS, "acme", row)
    monkeypatch.setitem(formats.RECORDS, row.advert, "acme")
    decoder = AdvertDecoder(selection.Selection(formats=["acme"]), rssi_interval_s=None)
    got = decoder.readings("AA:BB:CC:DD:EE:FF", {}, {0x1234: bytes.fromhex("40020a0a")}, None, 1.0)
    assert [(r.name, r.value) for r in got] == [("temp", 25.7)]
