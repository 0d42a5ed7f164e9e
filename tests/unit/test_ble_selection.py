"""Pure tests of BLE advert selection and dedup (drivers/ble/selection.py) and of the BLE source config."""

import ast
import os

import pytest

from drivers.ble import selection
from drivers.ble.selection import Deduper, RateLimit, Selection, SensorSpec, bthome_packet_id, records, uuid16
from firmware_sim import ble_nodes

FCD2 = "0000fcd2-0000-1000-8000-00805f9b34fb"
ENV = "0000181a-0000-1000-8000-00805f9b34fb"
MAC = "A4:C1:38:00:00:01"
KEY = bytes(range(16))


def test_selection_imports_no_io():
    src = open(os.path.join(os.path.dirname(selection.__file__), "selection.py")).read()
    imported = {a.name.split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"bleak", "asyncio", "dbus", "dbus_fast", "socket", "time", "serial"}


@pytest.mark.parametrize("uuid, expected", [
    (FCD2, 0xFCD2), (FCD2.upper(), 0xFCD2), ("181a", 0x181A), (0x2A6E, 0x2A6E),
    ("0000fcd2-0000-1000-8000-00805f9b34fc", None), ("6e400001-b5a3-f393-e0a9-e50e24dcca9e", None), ("xyzw", None),
    (0x10000, None)])
def test_uuid16(uuid, expected):
    assert uuid16(uuid) == expected


def test_records_map_service_and_manufacturer_data_by_one_table():
    got = records({FCD2: b"\x40\x01\x64", ENV: bytearray(15), "0000feaa-0000-1000-8000-00805f9b34fb": b"x"},
                  {0x0499: b"\x05" + bytes(23), 0x004C: b"\x02\x15"})
    assert got == [("bthome", b"\x40\x01\x64"), ("atc", bytes(15)), ("ruuvi", b"\x05" + bytes(23))]
    assert all(type(p) is bytes for _, p in got)
    assert records({}, {}) == [] and records(None, None) == []


def test_selection_without_sensors_takes_every_enabled_format():
    sel = Selection(formats={"bthome", "ruuvi"})
    spec = sel.match("a4:c1:38:00:00:01", "bthome")
    assert spec.mac == MAC and spec.sensor == "a4:c1:38:00:00:01"
    assert sel.match(MAC, "atc") is None


def test_selection_with_sensors_takes_only_those_and_honours_format_pins_and_aliases():
    sel = Selection([SensorSpec(MAC, alias="cellar", key=KEY.hex()), SensorSpec("C9:00:00:00:00:03", format="ruuvi")],
                    formats=selection.FORMATS)
    assert sel.match(MAC.lower(), "bthome").sensor == "cellar"
    assert sel.match(MAC, "atc").sensor == "cellar"  # not pinned: any enabled format
    assert sel.match("C9:00:00:00:00:03", "ruuvi").sensor == "c9:00:00:00:00:03"
    assert sel.match("C9:00:00:00:00:03", "bthome") is None  # pinned to ruuvi
    assert sel.match("A4:C1:38:00:00:99", "bthome") is None  # not configured
    assert sel.keys() == {MAC: KEY.hex()}
    assert KEY.hex() not in repr(sel.sensors[MAC])


@pytest.mark.parametrize("payload, expected", [
    (ble_nodes.bthome_adv(17, 21.5, 45.0, 90), 17),
    (b"\x42" + b"\x01\x00\x00\x38\xc1\xa4" + b"\x00\x05\x01\x64", 5),  # MAC included
    (b"\x40\x01\x64", None),                                                # no packet id object
    (ble_nodes.bthome_adv_encrypted(KEY, bytes(6), 3, 9, 21.5, 45.0, 90), None),  # id is inside the ciphertext
    (b"\x20\x00\x05", None),                                                # BTHome v1
    (b"\x40\x00", None),                                                    # truncated
])
def test_bthome_packet_id(payload, expected):
    assert bthome_packet_id(payload) == expected


def test_dedup_by_packet_id_drops_repeats_even_when_bytes_differ():
    d = Deduper(window_s=30.0)
    assert d.accept(MAC, "bthome", ble_nodes.bthome_adv(1, 21.5, 45.0, 90), 0.0)
    assert not d.accept(MAC, "bthome", ble_nodes.bthome_adv(1, 21.5, 45.0, 90), 0.5)
    # same packet id, other bytes (a sender retransmitting with a fresher battery byte) is still the same packet
    assert not d.accept(MAC, "bthome", ble_nodes.bthome_adv(1, 21.5, 45.0, 89), 0.6)
    assert d.accept(MAC, "bthome", ble_nodes.bthome_adv(2, 21.5, 45.0, 90), 1.0)
    # only the LAST packet counts: going back to id 1 is a new packet (ids wrap at 256)
    assert d.accept(MAC, "bthome", ble_nodes.bthome_adv(1, 21.5, 45.0, 90), 1.5)


def test_dedup_by_bytes_without_packet_id_and_per_device_and_format():
    d = Deduper(window_s=30.0)
    plain = b"\x40\x02\x66\x08"  # temperature only, no packet id
    assert d.accept(MAC, "bthome", plain, 0.0)
    assert not d.accept(MAC.lower(), "bthome", plain, 1.0)
    assert d.accept("A4:C1:38:00:00:02", "bthome", plain, 1.0)  # another device
    assert d.accept(MAC, "atc", plain, 1.0)                      # another format of the same device
    assert d.accept(MAC, "bthome", b"\x40\x02\x67\x08", 2.0)     # changed value
    sealed = ble_nodes.bthome_adv_encrypted(KEY, bytes(6), 3, 9, 21.5, 45.0, 90)
    assert d.accept(MAC, "bthome", sealed, 3.0) and not d.accept(MAC, "bthome", sealed, 3.1)


def test_dedup_window_lets_a_steady_sensor_report_again():
    d = Deduper(window_s=10.0)
    payload = ble_nodes.ruuvi_adv(bytes(6), 4.0, seq=None)
    assert d.accept(MAC, "ruuvi", payload, 100.0)
    assert not d.accept(MAC, "ruuvi", payload, 109.9)
    assert d.accept(MAC, "ruuvi", payload, 110.0)
    assert not d.accept(MAC, "ruuvi", payload, 115.0)  # the window restarts at the accepted one
    zero = Deduper(window_s=0.0)
    assert zero.accept(MAC, "ruuvi", payload, 1.0) and zero.accept(MAC, "ruuvi", payload, 1.0)
    with pytest.raises(ValueError):
        Deduper(window_s=-1)


def test_dedup_memory_is_bounded():
    d = Deduper(window_s=30.0, max_devices=3)
    for i in range(10):
        assert d.accept("02:00:00:00:00:%02X" % i, "bthome", b"\x40\x01\x64", float(i))
    assert len(d._last) <= 3


def test_rate_limit_per_key():
    r = RateLimit(60.0)
    assert r.due("a", 0.0) and not r.due("a", 59.0) and r.due("b", 59.0) and r.due("a", 60.0)
    every = RateLimit(0.0)
    assert every.due("a", 1.0) and every.due("a", 1.0)


# -- config of [[sources]] type "ble" / "gatt" (validated without touching bleak's D-Bus) -------------------------

bleak_adapter = pytest.importorskip("drivers.ble.adapter", reason="bleak is not installed")


class _Clock:
    def monotonic(self):
        return 0.0


def build(spec):
    return bleak_adapter.build_ble_source(spec, _Clock(), "src")


def test_scan_config_defaults_and_values():
    src = build({"type": "ble", "adapter": "hci1", "formats": ["bthome", "pvvx"], "passive": False,
                 "watchdog_s": 30, "rssi_interval_s": 0, "sensors": [
                     {"mac": "a4-c1-38-00-00-01", "key": KEY.hex(), "alias": "cellar"},
                     {"mac": "A4:C1:38:00:00:04", "format": "pvvx"}]})
    assert isinstance(src, bleak_adapter.BleScanSource)
    assert (src.adapter, src.passive, src.watchdog_s, src.rssi.interval_s) == ("hci1", False, 30.0, 0.0)
    assert src.selection.formats == {"bthome", "atc"}
    assert src.selection.match(MAC, "bthome").sensor == "cellar"
    assert src.selection.match("A4:C1:38:00:00:04", "atc").sensor == "a4:c1:38:00:00:04"
    default = build({"type": "ble"})
    assert default.passive and default.adapter == "hci0" and default.selection.formats == set(selection.FORMATS)
    assert build({"type": "ble", "rssi_interval_s": False}).rssi is None


def test_gatt_config():
    src = build({"type": "gatt", "poll_s": 5, "notify": True, "sensors": [
        {"mac": MAC, "alias": "fridge", "characteristics": ["temperature", "0x2A6F", 0x2A6D]},
        {"mac": "A4:C1:38:00:00:02"}]})
    assert isinstance(src, bleak_adapter.GattPollSource) and src.notify and src.poll_s == 5.0
    assert [(d.mac, d.sensor, d.characteristics) for d in src.devices] == [
        (MAC, "fridge", (0x2A6E, 0x2A6F, 0x2A6D)), ("A4:C1:38:00:00:02", "a4:c1:38:00:00:02", (0x2A6E, 0x2A6F, 0x2A6D))]


@pytest.mark.parametrize("spec, key", [
    ({"type": "ble", "watchdog": 5}, "watchdog:"),
    ({"type": "ble", "watchdog_s": 0}, "watchdog_s:"),
    ({"type": "ble", "watchdog_s": "5"}, "watchdog_s:"),
    ({"type": "ble", "passive": "yes"}, "passive:"),
    ({"type": "ble", "formats": ["bthome", "eddystone"]}, "formats:"),
    ({"type": "ble", "formats": []}, "formats:"),
    ({"type": "ble", "sensors": {"mac": MAC}}, "sensors:"),
    ({"type": "ble", "sensors": [{"alias": "x"}]}, "sensors[0].mac:"),
    ({"type": "ble", "sensors": [{"mac": "A4:C1:38:00:00"}]}, "sensors[0].mac:"),
    ({"type": "ble", "sensors": [{"mac": MAC}, {"mac": MAC.lower()}]}, "sensors[1].mac:"),
    ({"type": "ble", "sensors": [{"mac": MAC, "key": "abcd"}]}, "sensors[0].key:"),
    ({"type": "ble", "sensors": [{"mac": MAC, "format": "ruuvi", "key": KEY.hex()}]}, "sensors[0].key:"),
    ({"type": "ble", "formats": ["ruuvi"], "sensors": [{"mac": MAC, "format": "bthome"}]}, "sensors[0].format:"),
    ({"type": "ble", "sensors": [{"mac": MAC, "bindkey": "00"}]}, "sensors[0].bindkey:"),
    ({"type": "gatt"}, "sensors:"),
    ({"type": "gatt", "sensors": [{"mac": MAC, "characteristics": ["battery"]}]}, "sensors[0].characteristics[0]:"),
    ({"type": "gatt", "sensors": [{"mac": MAC}], "poll_s": -1}, "poll_s:"),
    ({"type": "gatt", "sensors": [{"mac": MAC}], "formats": ["bthome"]}, "formats:"),
])
def test_config_errors_name_the_key(spec, key):
    """One syntax for every config error: ``file: sources[N].key: ...``, whether loaded or built."""
    from drivers.sources import parse_source
    from gateway.core.errors import ConfigError
    with pytest.raises(ConfigError) as err:
        parse_source(spec, 2, "gw.toml")
    assert err.value.file == "gw.toml" and err.value.key == "sources[2]." + key.rstrip(":")
    assert str(err.value).startswith("gw.toml: sources[2].%s " % key)
    assert KEY.hex() not in str(err.value) and "abcd" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        build(spec)  # a bare table (tests, tools): the key without a file
    assert err.value.key == key.rstrip(":")


def test_config_errors_become_config_errors_naming_file_and_source():
    from drivers.sources import build_source
    from gateway.core.errors import ConfigError
    with pytest.raises(ConfigError) as err:
        build_source({"type": "ble", "watchdog_s": -3}, _Clock(), file="gw.toml", index=2)
    assert str(err.value).startswith("gw.toml: sources[2].watchdog_s: must be greater than 0")


def test_readme_sample_config_builds():
    import re
    import tomllib
    readme = open(os.path.join(os.path.dirname(selection.__file__), "README.md")).read()
    sample = re.search(r"```toml\n(.*?)```", readme, re.S).group(1)
    specs = tomllib.loads(sample)["sources"]
    scan, gatt = [build(spec) for spec in specs]
    assert isinstance(scan, bleak_adapter.BleScanSource) and isinstance(gatt, bleak_adapter.GattPollSource)
    assert scan.selection.match("A4:C1:38:00:00:02", "bthome").sensor == "cellar"
    assert scan.selection.match("A4:C1:38:00:00:04", "atc") is not None
    assert gatt.devices[0].sensor == "fridge"
