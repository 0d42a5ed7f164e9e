"""BLE end to end: sensor adverts -> mocked BlueZ on a private D-Bus -> bleak's real BlueZ backend -> BleScanSource /
GattPollSource -> a real Agent (Store, HttpUplink) -> ReceiverServer on 127.0.0.1 -> values in its SQLite.

Nothing in bleak is patched: the harness (tools/sim/bluez_mock.py) speaks D-Bus like bluetoothd does.
"""

import asyncio
import contextlib
import logging
import re
import shutil
import struct

import pytest

pytest.importorskip("dbusmock", reason="python-dbusmock is not installed")
pytest.importorskip("dbus", reason="dbus-python is not installed")
if shutil.which("dbus-daemon") is None:
    pytest.skip("dbus-daemon is not installed (Debian package dbus)", allow_module_level=True)

from drivers.ble.adapter import build_ble_source  # noqa: E402
from firmware_sim import ble_nodes  # noqa: E402
from tools.sim.bluez_mock import BluezMock  # noqa: E402
from gateway.app.agent import Agent  # noqa: E402
from gateway.core.clock import SystemClock  # noqa: E402
from gateway.app.config import BatchSection  # noqa: E402
from backend.receiver import Receiver, ReceiverServer  # noqa: E402
from gateway.adapters.store import Store  # noqa: E402
from gateway.adapters.uplink.http import HttpUplink  # noqa: E402

pytestmark = pytest.mark.timeout(60)

GW = "gw-test"
PLAIN = "A4:C1:38:00:00:01"     # BTHome, unencrypted
SEALED = "A4:C1:38:00:00:02"    # BTHome, encrypted with KEY
RUUVI = "C9:00:00:00:00:03"     # RuuviTag format 5
PVVX = "A4:C1:38:00:00:04"      # pvvx custom firmware
STRANGER = "A4:C1:38:00:00:99"  # BTHome, not configured
KEY = bytes(range(16))
WRONG_KEY = bytes(range(1, 17))
BTHOME, ENV, RUUVI_ID = 0xFCD2, 0x181A, 0x0499


@pytest.fixture
def bluez():
    with BluezMock() as mock:
        yield mock


async def until(predicate, timeout, what):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        await asyncio.sleep(0.05)


def values(receiver, sensor, quantity):
    rows = receiver.query("SELECT v FROM records WHERE n = ? ORDER BY seq, rowid",
                          ("%s/%s/%s" % (GW, sensor, quantity),))
    return [r[0] for r in rows]


@pytest.fixture
def receiver(tmp_path, trust):
    receiver = Receiver(str(tmp_path / "receiver.sqlite"), trust)
    yield receiver
    receiver.close()


@contextlib.asynccontextmanager
async def running_agent(tmp_path, key, receiver, sources, **agent_kwargs):
    server = ReceiverServer(receiver).start()
    clock = SystemClock("synced")
    store = Store(str(tmp_path / "queue.sqlite"), clock=clock)
    agent = Agent(gw=GW, key=key, store=store, uplink=HttpUplink(server.url, timeout=5.0), sources=sources,
                  clock=clock, batch=BatchSection(max_age_s=0.5, time_quantum_s=0.01), backoff=(0.1, 1.0),
                  **agent_kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop, drain_timeout=5.0))
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        store.close()
        server.stop()


def sealed_adv(counter, temp, key=KEY):
    return ble_nodes.bthome_adv_encrypted(key, bytes.fromhex(SEALED.replace(":", "")), counter, counter, temp, 50.0, 80)


def test_adverts_of_four_formats_reach_the_receiver(bluez, tmp_path, signing_key, receiver, caplog):
    caplog.set_level(logging.INFO, logger="drivers.ble.adapter")
    source = build_ble_source({
        "type": "ble", "watchdog_s": 10.0, "rssi_interval_s": 30.0,
        "sensors": [{"mac": PLAIN.lower()}, {"mac": SEALED, "key": KEY.hex(), "alias": "cellar"},
                    {"mac": RUUVI, "format": "ruuvi"}, {"mac": PVVX, "format": "pvvx"}]}, SystemClock(), "ble0")
    ruuvi_mac = bytes.fromhex(RUUVI.replace(":", ""))
    pvvx_mac = bytes.fromhex(PVVX.replace(":", ""))

    async def scenario():
        async with running_agent(tmp_path, signing_key, receiver, [source]):
            await until(lambda: source.scanning, 5, "the scan to start")
            # first adverts: the devices appear (InterfacesAdded)
            bluez.add_device(PLAIN, service_data={BTHOME: ble_nodes.bthome_adv(1, 21.5, 45.25, 90)}, rssi=-55)
            bluez.add_device(SEALED, service_data={BTHOME: sealed_adv(1, 5.0)}, rssi=-70)
            bluez.add_device(RUUVI, manufacturer_data={RUUVI_ID: ble_nodes.ruuvi_adv(
                ruuvi_mac, 4.25, 80.5, 100500, (0, 0, 1000), 2900, 4, 7, 1)}, rssi=-80)
            bluez.add_device(PVVX, service_data={ENV: ble_nodes.pvvx_adv(pvvx_mac, -3.5, 60.5, 2950, 77, 1)})
            bluez.add_device(STRANGER, service_data={BTHOME: ble_nodes.bthome_adv(1, 99.0, 1.0, 1)})
            # next adverts (PropertiesChanged), with repeats BlueZ reports when only the RSSI moved
            for i, (t_plain, t_sealed) in enumerate([(21.6, 5.5), (21.7, 6.0)], start=2):
                bluez.advertise(PLAIN, service_data={BTHOME: ble_nodes.bthome_adv(i, t_plain, 45.25, 90)})
                bluez.advertise(PLAIN, rssi=-57)
                bluez.advertise(SEALED, service_data={BTHOME: sealed_adv(i, t_sealed)})
                bluez.advertise(RUUVI, manufacturer_data={RUUVI_ID: ble_nodes.ruuvi_adv(
                    ruuvi_mac, 4.25 + i, 80.5, 100500, (0, 0, 1000), 2900, 4, 7, i)})
                bluez.advertise(STRANGER, service_data={BTHOME: ble_nodes.bthome_adv(i, 99.0, 1.0, 1)})
            # an old encrypted packet replayed, and one sealed with the wrong key
            bluez.advertise(SEALED, service_data={BTHOME: sealed_adv(2, 9.0)})
            bluez.advertise(SEALED, service_data={BTHOME: sealed_adv(10, 9.5, key=WRONG_KEY)})
            await until(lambda: len(values(receiver, "cellar", "temp")) >= 3
                        and len(values(receiver, PLAIN.lower(), "temp")) >= 3
                        and len(values(receiver, RUUVI.lower(), "temp")) >= 3
                        and values(receiver, PVVX.lower(), "temp"), 10, "readings at the receiver")
            await asyncio.sleep(0.3)  # kept: a negative check; anything wrongly let through would arrive now

    asyncio.run(scenario())
    plain, sealed, ruuvi, pvvx = PLAIN.lower(), "cellar", RUUVI.lower(), PVVX.lower()
    assert values(receiver, plain, "temp") == pytest.approx([21.5, 21.6, 21.7], abs=0.005)
    assert values(receiver, plain, "hum") == pytest.approx([45.25] * 3, abs=0.005)
    assert values(receiver, plain, "batt") == [90, 90, 90]
    assert values(receiver, plain, "rssi") == [-55]  # at most one per 30 s per device
    assert values(receiver, plain, "packet_id") == []
    assert values(receiver, sealed, "temp") == pytest.approx([5.0, 5.5, 6.0], abs=0.005)
    assert values(receiver, sealed, "hum") == pytest.approx([50.0] * 3, abs=0.005)
    assert values(receiver, ruuvi, "temp") == pytest.approx([4.25, 6.25, 7.25], abs=0.0025)
    assert values(receiver, ruuvi, "hum") == pytest.approx([80.5] * 3, abs=0.00125)
    assert values(receiver, ruuvi, "pres") == [100500] * 3
    assert values(receiver, ruuvi, "accel_z") == pytest.approx([9.80665] * 3, abs=0.005)
    assert values(receiver, ruuvi, "voltage") == pytest.approx([2.9] * 3, abs=0.0005)
    assert values(receiver, pvvx, "temp") == pytest.approx([-3.5], abs=0.005)
    assert values(receiver, pvvx, "hum") == pytest.approx([60.5], abs=0.005)
    assert values(receiver, pvvx, "voltage") == pytest.approx([2.95], abs=0.0005)
    assert values(receiver, pvvx, "batt") == [77]
    assert receiver.query("SELECT COUNT(*) FROM records WHERE n LIKE ?", ("%/" + STRANGER.lower() + "/%",)) == [(0,)]
    units = dict(receiver.query("SELECT n, u FROM records WHERE n LIKE ? GROUP BY n", (GW + "/%",)))
    assert units["%s/%s/temp" % (GW, plain)] == "Cel" and units["%s/%s/pres" % (GW, ruuvi)] == "Pa"
    assert units["%s/%s/rssi" % (GW, plain)] == "dBm"
    c = source.counters
    assert c["error.replay"] == 1 and c["error.bad_mic"] == 1
    assert c["duplicates"] >= 2 and c["ignored"] >= 3
    assert c.get("restarts", 0) == 0
    assert source.mode == "passive"
    assert len(bluez.calls("/org/bluez/hci0", "RegisterMonitor")) == 1  # an AdvertisementMonitor, not discovery
    assert bluez.calls("/org/bluez/hci0", "StartDiscovery") == []
    assert any("passive mode" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_scan_restarts_after_the_adapter_vanishes(bluez, tmp_path, signing_key, receiver, caplog):
    source = build_ble_source({
        "type": "ble", "sensors": [{"mac": PLAIN}], "watchdog_s": 0.5, "backoff_min_s": 0.1,
        "backoff_max_s": 0.4, "timeout_s": 2.0, "rssi_interval_s": False}, SystemClock(), "ble0")

    async def scenario():
        async with running_agent(tmp_path, signing_key, receiver, [source]):
            await until(lambda: source.scanning, 5, "the scan to start")
            bluez.add_device(PLAIN, service_data={BTHOME: ble_nodes.bthome_adv(1, 20.1, 40.0, 90)})
            for pid in (2, 3):
                bluez.advertise(PLAIN, service_data={BTHOME: ble_nodes.bthome_adv(pid, 20.0 + pid / 10, 40.0, 90)})
            await until(lambda: source.counters.get("records", 0) >= 3, 5, "the first three adverts")
            bluez.remove_adapter()  # the dongle is pulled out: the adapter and its devices vanish
            await until(lambda: source.counters.get("start_failed", 0) >= 1, 5, "a failed restart")
            bluez.restore_adapter()  # it comes back (the device reappears with its last advert, a repeat)
            pid = 4
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not values(receiver, PLAIN.lower(), "temp")[3:] and loop.time() < deadline:
                bluez.advertise(PLAIN, service_data={BTHOME: ble_nodes.bthome_adv(pid, 20.0 + pid / 10, 40.0, 90)})
                pid += 1
                await asyncio.sleep(0.1)

    asyncio.run(scenario())
    temps = values(receiver, PLAIN.lower(), "temp")
    assert temps[:3] == pytest.approx([20.1, 20.2, 20.3], abs=0.005)
    assert len(temps) > 3, "no reading arrived after the adapter came back"
    assert all(t >= 20.4 - 0.005 for t in temps[3:])  # after the outage: new packets only, no repeat of pid 3
    c = source.counters
    assert c["restarts"] >= 2 and c["start_failed"] >= 1 and c["watchdog"] >= 1
    assert c["scans_started"] >= 2
    assert source.mode == "passive"
    restarts = [r for r in caplog.records
                if r.name == "drivers.ble.adapter" and "restarting the scan" in r.getMessage()]
    assert restarts and all(r.levelno == logging.WARNING for r in restarts)


async def advertise_until(bluez, predicate, timeout, what, pid=4):
    """Advertise PLAIN every 0.1 s (packet ids from ``pid``) until ``predicate()``; returns the ids advertised
    (a wedged adapter drops some: ``advertise`` says which got through)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delivered = []
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        if bluez.advertise(PLAIN, service_data={BTHOME: ble_nodes.bthome_adv(pid, 20.0 + pid / 10, 40.0, 90)}):
            delivered.append(pid)
        pid += 1
        await asyncio.sleep(0.1)
    return delivered


def recovery_source(**extra):
    return build_ble_source(dict({
        "type": "ble", "sensors": [{"mac": PLAIN}], "watchdog_s": 0.5, "backoff_min_s": 0.1,
        "backoff_max_s": 0.4, "timeout_s": 2.0, "rssi_interval_s": False}, **extra), SystemClock(), "ble0")


def test_a_wedged_adapter_is_power_cycled_through_bluez_and_readings_resume(bluez, tmp_path, signing_key, receiver,
                                                                            caplog):
    source = recovery_source()

    async def scenario():
        async with running_agent(tmp_path, signing_key, receiver, [source], health_interval=0.2) as agent:
            await until(lambda: source.scanning, 5, "the scan to start")
            bluez.add_device(PLAIN, service_data={BTHOME: ble_nodes.bthome_adv(1, 20.1, 40.0, 90)})
            for pid in (2, 3):
                bluez.advertise(PLAIN, service_data={BTHOME: ble_nodes.bthome_adv(pid, 20.0 + pid / 10, 40.0, 90)})
            await until(lambda: len(values(receiver, PLAIN.lower(), "temp")) >= 3, 5, "the first three readings")
            bluez.wedge()  # the adapter hangs: adverts stop although the sensor keeps sending
            delivered = await advertise_until(
                bluez, lambda: len(values(receiver, PLAIN.lower(), "temp")) >= 5, 15, "readings after the wedge")
            await until(lambda: values(receiver, "health", "ble0.power_cycles"), 5, "the power_cycles record")
            return delivered, agent.status()

    delivered, status = asyncio.run(scenario())
    temps = values(receiver, PLAIN.lower(), "temp")
    assert temps[:3] == pytest.approx([20.1, 20.2, 20.3], abs=0.005)
    assert delivered and delivered[0] > 4, "adverts sent while wedged must be lost, or the wedge did nothing"
    # after the wedge: only adverts the unwedged adapter delivered (those before the scan restarted are missed)
    assert {round(t, 1) for t in temps[3:]} <= {round(20.0 + p / 10, 1) for p in delivered}
    assert temps[3:] == sorted(temps[3:]) and len(temps[3:]) >= 2
    assert bluez.power_log()[:2] == [False, True]  # Powered off, then on, through org.bluez.Adapter1
    c = source.counters
    assert c["power_cycles"] >= 1 and "power_cycle_failed" not in c and "adapter_needs_reset" not in c
    assert source.recovery.state == "scanning" and source.recovery.cycles == 0
    assert values(receiver, "health", "ble0.power_cycles")[-1] >= 1
    ble = [s for s in status["sources"] if s["name"] == "ble0"][0]
    assert ble["adapter_state"] == "scanning"
    assert any("power-cycled" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_a_failing_power_cycle_reports_the_adapter_needs_a_reset(bluez, tmp_path, signing_key, receiver, caplog):
    source = recovery_source(max_power_cycles=2)

    async def scenario():
        async with running_agent(tmp_path, signing_key, receiver, [source], health_interval=0.2) as agent:
            await until(lambda: source.scanning, 5, "the scan to start")
            bluez.add_device(PLAIN, service_data={BTHOME: ble_nodes.bthome_adv(1, 20.1, 40.0, 90)})
            await until(lambda: values(receiver, PLAIN.lower(), "temp"), 5, "the first reading")
            bluez.fail_power()  # bluetoothd refuses to turn the adapter off
            bluez.wedge()
            await advertise_until(bluez, lambda: source.counters.get("adapter_needs_reset"), 15, "needs a reset",
                                  pid=2)
            await until(lambda: values(receiver, "health", "ble0.adapter_needs_reset"), 5, "the health record")
            reported = agent.status()
            cycles_then = source.counters["power_cycles"]
            bluez.remove_adapter()  # the technician replugs the dongle: a new, working adapter
            bluez.restore_adapter()
            await advertise_until(bluez, lambda: source.recovery.state == "scanning" and len(
                values(receiver, PLAIN.lower(), "temp")) >= 2, 15, "readings after the replug", pid=100)
            return reported, cycles_then

    reported, cycles_then = asyncio.run(scenario())
    c = source.counters
    assert cycles_then == c["power_cycle_failed"] == 2  # bounded: no third attempt while it needs a reset
    assert c["adapter_needs_reset"] == 1
    assert bluez.power_log() == []  # the new adapter object was never power-cycled
    assert values(receiver, "health", "ble0.adapter_needs_reset") == [1]
    assert values(receiver, "health", "ble0.power_cycle_failed")[-1] == 2
    ble = [s for s in reported["sources"] if s["name"] == "ble0"][0]
    assert ble["adapter_state"] == "needs_reset"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "drivers.ble.adapter"]
    assert len(errors) == 1 and "hci0 needs a reset" in errors[0]


def test_falls_back_to_active_scanning_without_the_monitor_api(caplog):
    caplog.set_level(logging.INFO, logger="drivers.ble.adapter")
    got = []
    source = build_ble_source({"type": "ble", "watchdog_s": 5.0}, SystemClock(), "ble0")

    async def scenario(bt):
        task = asyncio.create_task(source.run(got.append))
        try:
            await until(lambda: source.scanning, 5, "the scan to start")
            bt.add_device(PLAIN, service_data={BTHOME: ble_nodes.bthome_adv(7, 19.25, 40.0, 90)}, rssi=-61)
            await until(lambda: len(got) >= 4, 5, "readings")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with BluezMock(monitor_api=False) as bt:
        asyncio.run(scenario(bt))
        assert len(bt.calls("/org/bluez/hci0", "StartDiscovery")) == 1
        assert not bt.discovering()  # the scan was stopped on the way out
    assert source.mode == "active"
    assert {(r.sensor, r.name, r.value, r.unit) for r in got} == {
        (PLAIN.lower(), "temp", 19.25, "Cel"), (PLAIN.lower(), "hum", 40.0, "%RH"),
        (PLAIN.lower(), "batt", 90, "%EL"), (PLAIN.lower(), "rssi", -61, "dBm")}
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum("active mode" in m for m in infos) == 1


def test_scan_start_failures_back_off_and_recover(bluez):
    got = []
    source = build_ble_source({"type": "ble", "watchdog_s": 5.0, "backoff_min_s": 0.05, "backoff_max_s": 0.2},
                              SystemClock(), "ble0")
    bluez.fail_scans(True)  # bluetoothd answers org.bluez.Error.Failed to RegisterMonitor and StartDiscovery

    async def scenario():
        task = asyncio.create_task(source.run(got.append))
        try:
            await until(lambda: source.counters.get("start_failed", 0) >= 3, 5, "failed starts")
            assert not source.scanning and source.mode is None
            bluez.fail_scans(False)
            await until(lambda: source.scanning, 5, "the scan to start")
            bluez.add_device(PLAIN, service_data={BTHOME: ble_nodes.bthome_adv(1, 18.0, 40.0, 90)})
            await until(lambda: len(got) >= 4, 5, "readings")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert source.mode == "passive"  # a failing adapter is not mistaken for one without passive scanning
    assert source.counters["restarts"] == source.counters["start_failed"] >= 3
    assert {(r.sensor, r.name, r.value) for r in got if r.name != "rssi"} == {
        (PLAIN.lower(), "temp", 18.0), (PLAIN.lower(), "hum", 40.0), (PLAIN.lower(), "batt", 90)}


GOOD = "A4:C1:38:00:00:10"
DEAD = "A4:C1:38:00:00:11"


def ess_values(temp_c, hum_pct, pres_pa):
    return {0x2A6E: struct.pack("<h", round(temp_c * 100)), 0x2A6F: struct.pack("<H", round(hum_pct * 100)),
            0x2A6D: struct.pack("<I", round(pres_pa * 10))}


def test_gatt_poll_reads_ess_and_a_dead_device_backs_off_alone(bluez, caplog):
    caplog.set_level(logging.WARNING, logger="drivers.ble.adapter")
    bluez.add_gatt_device(GOOD, ess_values(22.5, 45.5, 101325.0))
    source = build_ble_source({
        "type": "gatt", "poll_s": 0.3, "connect_timeout_s": 0.4, "backoff_min_s": 0.2, "backoff_max_s": 1.6,
        "sensors": [{"mac": GOOD, "alias": "fridge"}, {"mac": DEAD, "alias": "dead"}]}, SystemClock(), "gatt0")
    got = []

    async def scenario():
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(source.run(lambda r: got.append((loop.time(), r))))
        try:
            await until(lambda: sum(r.name == "temp" for _, r in got) >= 3, 5, "three polls")
            bluez.set_characteristic(GOOD, 0x2A6E, struct.pack("<h", -1825))
            await until(lambda: any(r.value == -18.25 for _, r in got), 5, "the new value")
            await asyncio.sleep(max(0.0, 2.5 - (loop.time() - got[0][0])))  # kept: 2.5 s of polling to count
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    first = {r.name: (r.value, r.unit) for _, r in got[:3]}
    assert first == {"temp": (22.5, "Cel"), "hum": (45.5, "%RH"), "pres": (101325.0, "Pa")}
    assert {r.sensor for _, r in got} == {"fridge"}
    temps = [(t, r.value) for t, r in got if r.name == "temp"]
    assert temps[-1][1] == -18.25
    gaps = [b[0] - a[0] for a, b in zip(temps, temps[1:])]
    assert len(temps) >= 5 and max(gaps) < 0.3 + 0.4, gaps  # the dead device never held the live one up
    c = source.counters
    assert c["connect_failed.dead"] >= 2 and "connect_failed.fridge" not in c
    delays = [float(m.group(1)) for r in caplog.records
              for m in [re.search(r"connect to dead .* retrying in ([0-9.]+) s", r.getMessage())] if m]
    # capped exponential with jitter (gateway/core/backoff.py): the n-th wait is in [ceiling / 2, ceiling) of
    # 0.2, 0.4, 0.8 s; the log rounds to 0.1 s
    assert len(delays) >= 2
    for delay, ceiling in zip(delays, (0.2, 0.4, 0.8)):
        assert ceiling / 2 - 0.05 <= delay <= ceiling + 0.05, delays
    path = "/org/bluez/hci0/dev_" + GOOD.replace(":", "_")
    connects, disconnects = len(bluez.calls(path, "Connect")), len(bluez.calls(path, "Disconnect"))
    assert connects == c["connects"] and connects >= 5
    assert disconnects == connects and not bluez.connected(GOOD)
    assert bluez.read_count(GOOD, 0x2A6D) == connects


def test_gatt_notify_delivers_changes_on_one_connection(bluez):
    bluez.add_gatt_device(GOOD, ess_values(4.0, 70.0, 99000.0))
    source = build_ble_source({"type": "gatt", "notify": True, "sensors": [{"mac": GOOD, "characteristics": [
        "temperature", "2a6f"]}]}, SystemClock(), "gatt0")
    got = []

    async def scenario():
        task = asyncio.create_task(source.run(got.append))
        try:
            await until(lambda: len(got) >= 2, 5, "the first read")
            await until(lambda: bluez.calls(bluez._char_path(GOOD, 0x2A6F), "StartNotify"), 5, "subscriptions")
            bluez.set_characteristic(GOOD, 0x2A6E, struct.pack("<h", 455))
            bluez.set_characteristic(GOOD, 0x2A6F, struct.pack("<H", 7125))
            await until(lambda: len(got) >= 4, 5, "two notifications")
            assert bluez.connected(GOOD)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert [(r.name, r.value) for r in got] == [("temp", 4.0), ("hum", 70.0), ("temp", 4.55), ("hum", 71.25)]
    assert source.counters["connects"] == 1 and not bluez.connected(GOOD)
