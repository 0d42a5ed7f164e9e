"""The BLE adapter: the only module that imports bleak (house style, habit 3).

Two sources, built by ``build_ble_source`` from their typed config (``drivers/ble/config.py``, parsed once when the
config is loaded; keys in ``drivers/ble/README.md``):

* ``BleScanSource`` (``type = "ble"``) listens to advertisements with ``bleak.BleakScanner`` and feeds the raw
  records to the pure decoders (``selection.records``: service data 0xFCD2 -> BTHome, 0x181A -> pvvx/ATC1441,
  manufacturer data 0x0499 -> Ruuvi). Repeats are dropped (``selection.Deduper``), decode errors are counted as
  ``error.<reason>`` and never raised. Each accepted advert also gives an ``rssi`` reading (dBm), at most once
  per ``rssi_interval_s`` per device.
* ``GattPollSource`` (``type = "gatt"``) connects to configured devices with ``bleak.BleakClient``, reads the
  Environmental Sensing characteristics (0x2A6E, 0x2A6F, 0x2A6D) every ``poll_s`` (or subscribes when
  ``notify = true``) and disconnects. Each device runs in its own task with its own backoff, so a dead device
  never delays the others.

Scanning mode: passive scanning (no scan requests sent; kinder to coin cells) needs BlueZ's
AdvertisementMonitor API, which bleak drives with or-patterns built from the enabled formats. When it is not
there, the scanner falls back to active scanning and says once, at INFO, which mode it uses. The choice is
remembered: once passive worked, a later passive failure is a failure, not a reason to switch.

Replay state: with encrypted BTHome sensors and a state directory, the last accepted counter of each keyed device
is loaded from ``bthome-counters-<name>.json`` at start, written behind at most every ``replay_flush_s`` when it
moved, and written once more when the source stops (``drivers/ble/replay_state.py``). A write failure is counted
(``state_write_failed``) and logged at ERROR; the source keeps running and tries again at the next interval.

Watchdog: when no advertisement arrived for ``watchdog_s`` although some arrived before (so sensors are known to
be around) or sensors are configured, or when bleak raises (adapter gone, D-Bus error), the scan is stopped and
started again with capped exponential backoff; each restart is counted (``restarts``) and logged at WARNING. Every
bleak call is bounded by ``asyncio.wait_for``, so a wedged bluetoothd cannot hang the source.

Adapter recovery (``power_cycle = true``, the default): before the scan starts again the adapter is turned off
and on through BlueZ (``drivers/ble/bluez_power.py``), at most ``max_power_cycles`` times until adverts flow
again; after that the adapter ``needs_reset`` (logged at ERROR, counted once per episode) and only the scan is
restarted, with the backoff, until adverts return (a replugged dongle). The policy is ``drivers/ble/recovery.py``;
counted as ``power_cycles``, ``power_cycle_failed`` and ``adapter_needs_reset``; ``status()`` gives
``adapter_state``.
"""

import asyncio
import functools
import logging

from bleak import BleakClient, BleakScanner
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.exc import BleakDeviceNotFoundError, BleakError

from drivers.base import Source
from drivers.ble import ess, replay_state
from drivers.ble.adverts import DEFAULT_SKIP, AdvertDecoder
from drivers.ble.bluez_power import PowerCycleError, power_cycle
from drivers.ble.bthome import RESET_ADVERTS, RESET_GAP_S
from drivers.ble.config import BleScanConfig, GattConfig
from drivers.ble.formats import ADVERTISED, FORMATS
from drivers.ble.recovery import AdapterRecovery
from drivers.ble.selection import Selection, SensorSpec
from gateway.core.backoff import Backoff
from gateway.core.errors import DecodeError
from gateway.core.model import Reading

log = logging.getLogger(__name__)

#: what bleak and its D-Bus stack raise when the adapter, bluetoothd or the bus misbehave
BLE_ERRORS = (BleakError, TimeoutError, OSError, EOFError)

#: or-patterns for passive scanning, (AD type, content at position 0), from the table of formats
PATTERNS = {name: (AdvertisementDataType(FORMATS[name].pattern()[0]), FORMATS[name].pattern()[1])
            for name in ADVERTISED}

BASE_UUID = "0000%04x-0000-1000-8000-00805f9b34fb"


class BleScanSource(Source):
    """Advertisements -> readings. See the module docstring."""

    def __init__(self, name, clock, selection, adapter="hci0", passive=True, watchdog_s=120.0, rssi_interval_s=60.0,
                 dedup_window_s=30.0, skip=DEFAULT_SKIP, backoff_min_s=1.0, backoff_max_s=60.0, timeout_s=10.0,
                 replay_state_file=None, replay_flush_s=60.0, reset_adverts=RESET_ADVERTS, reset_gap_s=RESET_GAP_S,
                 rng=None, power_cycle=True, max_power_cycles=3):
        super().__init__()
        self.name = name
        self.clock = clock
        self.selection = selection
        self.adapter = adapter
        self.passive = passive
        self.watchdog_s = watchdog_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.backoff = Backoff(backoff_min_s, backoff_max_s, rng)
        self.timeout_s = timeout_s
        self.adverts = AdvertDecoder(selection, rssi_interval_s, dedup_window_s, skip, self.counters, name,
                                     reset_adverts, reset_gap_s)
        self.rssi = self.adverts.rssi
        self.replay_state_file = replay_state_file if selection.keys() else None
        self.replay_flush_s = replay_flush_s
        self.replay = replay_state.Keeper(self.replay_state_file, self.adverts.bthome, replay_flush_s, self.count,
                                          name)
        self.mode = None          # "passive" or "active" once a scan has started
        self.scanning = False
        self.last_advert = None   # clock.monotonic() of the last advertisement of any device
        self.recovery = AdapterRecovery(power_cycle, max_power_cycles)
        self._emit = None

    # -- advertisements (called by bleak on the event loop; must not raise) ------------------------------------
    def _on_advert(self, device, adv):
        now = self.clock.monotonic()
        self.last_advert = now
        if self.recovery.recovering and self.recovery.adverts():
            log.warning("%s: adverts flow again on %s", self.name, self.adapter)
        for reading in self.adverts.readings(device.address, adv.service_data, adv.manufacturer_data, adv.rssi, now):
            self._emit(reading)

    # -- replay state (encrypted BTHome counters; the keeper is in drivers/ble/replay_state.py) -------------------
    def load_replay_state(self):
        """Load the saved counters; a missing file is a first start, a bad one is logged and counted."""
        return self.replay.load()

    def save_replay_state(self, force=False):
        """Write the counters now if they moved (or ``force``); True when written. Used at stop."""
        return self.replay.save(force)

    async def flush_replay_state(self):
        """One write-behind step: write the counters if they moved, off the event loop (fsync on an SD card)."""
        return await self.replay.flush()

    async def run(self, emit):
        self.load_replay_state()
        flusher = None
        if self.replay_state_file is not None:
            flusher = asyncio.create_task(self.replay.write_behind(), name=self.name + ":replay-state")
        try:
            await self._scan_forever(emit)
        finally:
            if flusher is not None:
                flusher.cancel()
                await asyncio.gather(flusher, return_exceptions=True)
            self.save_replay_state()

    async def _scan_forever(self, emit):
        self._emit = emit
        while True:
            healthy = False
            try:
                scanner = await self._start()
            except BLE_ERRORS as exc:
                self.count("start_failed")
                reason = "cannot start scanning: %s" % (exc or type(exc).__name__)
            else:
                try:
                    healthy = await self._watch()
                    reason = "no advertisement for %.1f s" % self.watchdog_s
                finally:
                    await self._stop(scanner)
            if healthy:
                self.backoff.reset()
            if self.recovery.failed() == "power_cycle":
                await self._power_cycle()
            elif self.recovery.needs_reset_now():
                self.count("adapter_needs_reset")
                log.error("%s: adapter %s needs a reset: %d power cycles did not bring adverts back; unplug and "
                          "replug it or reboot (the scan keeps restarting until adverts return)", self.name,
                          self.adapter, self.recovery.max_power_cycles)
            delay = self.backoff.next()
            self.count("restarts")
            log.warning("%s: %s on %s; restarting the scan in %.1f s", self.name, reason, self.adapter, delay)
            await asyncio.sleep(delay)

    async def _power_cycle(self):
        """Turn the adapter off and on through BlueZ; a failure is counted and logged, the scan restarts anyway."""
        self.count("power_cycles")
        try:
            await power_cycle(self.adapter, self.timeout_s)
        except PowerCycleError as exc:
            self.count("power_cycle_failed")
            log.warning("%s: power-cycling %s failed (%d of %d): %s", self.name, self.adapter,
                        self.recovery.cycles, self.recovery.max_power_cycles, exc)
        else:
            log.warning("%s: adapter %s power-cycled (%d of %d)", self.name, self.adapter, self.recovery.cycles,
                        self.recovery.max_power_cycles)

    def _patterns(self):
        return [OrPattern(0, *PATTERNS[f]) for f in sorted(self.selection.formats)]

    async def _start(self):
        passive_error = None
        if self.passive and self.mode != "active":
            scanner = BleakScanner(self._on_advert, scanning_mode="passive",
                                   bluez={"adapter": self.adapter, "or_patterns": self._patterns()})
            try:
                await asyncio.wait_for(scanner.start(), self.timeout_s)
            except BleakError as exc:
                if self.mode == "passive":
                    raise
                passive_error = exc
            else:
                self._started("passive", None)
                return scanner
        scanner = BleakScanner(self._on_advert, scanning_mode="active", bluez={"adapter": self.adapter})
        await asyncio.wait_for(scanner.start(), self.timeout_s)
        self._started("active", passive_error)
        return scanner

    def _started(self, mode, passive_error):
        self.scanning = True
        self.recovery.scanning()
        self.count("scans_started")
        if self.mode is None:
            if passive_error is not None:
                log.info("%s: passive scanning is not available on %s (%s); scanning in active mode",
                         self.name, self.adapter, passive_error)
            else:
                log.info("%s: scanning on %s in %s mode", self.name, self.adapter, mode)
        self.mode = mode

    async def _watch(self):
        """Return when the watchdog fires; True if adverts arrived during this scan session."""
        started = self.clock.monotonic()
        seen_before = self.counters.get("adverts", 0)
        tick = max(0.05, min(1.0, self.watchdog_s / 4))
        while True:
            await asyncio.sleep(tick)
            if self.last_advert is None and not self.selection.sensors:
                continue  # nothing ever seen and nothing expected: nothing is known to be missing
            now = self.clock.monotonic()
            if now - max(self.last_advert or started, started) >= self.watchdog_s:
                self.count("watchdog")
                return self.counters.get("adverts", 0) > seen_before

    async def _stop(self, scanner):
        self.scanning = False
        try:
            await asyncio.wait_for(scanner.stop(), self.timeout_s)
        except BLE_ERRORS as exc:
            # the adapter is usually gone already; the restart that follows is what matters
            self.count("stop_failed")
            log.info("%s: stopping the scan on %s failed: %s", self.name, self.adapter, exc or type(exc).__name__)

    def status(self):
        s = super().status()
        s.update(adapter=self.adapter, mode=self.mode, scanning=self.scanning, adapter_state=self.recovery.state,
                 last_advert_age_s=None if self.last_advert is None else round(
                     self.clock.monotonic() - self.last_advert, 1))
        return s


class GattDevice:
    """One device to poll: MAC, sensor name, and the 16-bit characteristic UUIDs to read."""

    __slots__ = ("mac", "sensor", "characteristics")

    def __init__(self, mac, sensor, characteristics):
        self.mac = mac
        self.sensor = sensor
        self.characteristics = tuple(characteristics)


class GattPollSource(Source):
    """Connect, read (or subscribe to) ESS characteristics, disconnect; one task and one backoff per device."""

    def __init__(self, name, clock, devices, adapter="hci0", poll_s=60.0, notify=False, connect_timeout_s=20.0,
                 timeout_s=10.0, backoff_min_s=1.0, backoff_max_s=300.0, rng=None):
        super().__init__()
        self.name = name
        self.clock = clock
        self.devices = list(devices)
        self.adapter = adapter
        self.poll_s = poll_s
        self.notify = notify
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.rng = rng
        self.connected = set()

    async def run(self, emit):
        tasks = [asyncio.create_task(self._device_loop(d, emit), name="%s:%s" % (self.name, d.sensor))
                 for d in self.devices]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _device_loop(self, dev, emit):
        backoff = Backoff(self.backoff_min_s, self.backoff_max_s, self.rng)  # one per device
        while True:
            try:
                client, gone = await self._connect(dev)
            except BLE_ERRORS as exc:
                self.count("connect_failed")
                self.count("connect_failed." + dev.sensor)
                delay = backoff.next()
                log.warning("%s: cannot connect to %s (%s): %s; retrying in %.1f s", self.name, dev.sensor, dev.mac,
                            exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            try:
                await self._session(dev, client, gone, emit)
            except BLE_ERRORS as exc:
                self.count("session_failed")
                log.warning("%s: %s (%s) failed while connected: %s", self.name, dev.sensor, dev.mac,
                            exc or type(exc).__name__)
            finally:
                await self._disconnect(dev, client)
            await asyncio.sleep(self.backoff_min_s if self.notify else self.poll_s)

    async def _connect(self, dev):
        gone = asyncio.Event()

        def on_disconnect(_client):
            gone.set()

        # Connect by BlueZ object path first: no discovery scan per poll. A device BlueZ does not know yet (never
        # seen since bluetoothd started) needs one discovery, bounded by connect_timeout_s.
        path = "/org/bluez/%s/dev_%s" % (self.adapter, dev.mac.replace(":", "_"))
        device = BLEDevice(dev.mac, None, {"path": path, "props": None})
        bluez = {"adapter": self.adapter}
        client = BleakClient(device, on_disconnect, timeout=self.connect_timeout_s, bluez=bluez)
        try:
            await asyncio.wait_for(client.connect(), self.connect_timeout_s + 1)
        except BleakError as exc:
            if not isinstance(exc, BleakDeviceNotFoundError) and "not found" not in str(exc):
                raise
            self.count("discoveries")
            found = await asyncio.wait_for(
                BleakScanner.find_device_by_address(dev.mac, timeout=self.connect_timeout_s, bluez=bluez),
                self.connect_timeout_s + 1)
            if found is None:
                raise BleakDeviceNotFoundError(dev.mac, "%s was not found within %.1f s"
                                               % (dev.mac, self.connect_timeout_s)) from None
            client = BleakClient(found, on_disconnect, timeout=self.connect_timeout_s, bluez=bluez)
            await asyncio.wait_for(client.connect(), self.connect_timeout_s + 1)
        self.count("connects")
        self.connected.add(dev.sensor)
        return client, gone

    async def _session(self, dev, client, gone, emit):
        chars = {}
        for uuid16 in dev.characteristics:
            char = client.services.get_characteristic(BASE_UUID % uuid16)
            if char is None:
                self.count("error.missing_characteristic")
                continue
            chars[uuid16] = char
            data = await asyncio.wait_for(client.read_gatt_char(char), self.timeout_s)
            self._deliver(dev, uuid16, emit, None, data)
        if not self.notify:
            return
        for uuid16, char in chars.items():
            await asyncio.wait_for(client.start_notify(char, functools.partial(self._deliver, dev, uuid16, emit)),
                                   self.timeout_s)
        await gone.wait()
        self.count("disconnected")
        log.warning("%s: %s (%s) disconnected; reconnecting", self.name, dev.sensor, dev.mac)

    def _deliver(self, dev, uuid16, emit, _char, data):
        try:
            m = ess.decode_characteristic(uuid16, bytes(data))
        except DecodeError as exc:
            self.count("error." + exc.reason)
            log.debug("%s: characteristic 0x%04X of %s did not decode: %s", self.name, uuid16, dev.mac, exc)
            return
        self.count("reads")
        if m is not None:
            emit(Reading(dev.sensor, m.name, m.value, m.unit, self.clock.monotonic(), m.resolution))

    async def _disconnect(self, dev, client):
        self.connected.discard(dev.sensor)
        try:
            await asyncio.wait_for(client.disconnect(), self.timeout_s)
        except BLE_ERRORS as exc:
            self.count("disconnect_failed")
            log.info("%s: disconnecting %s failed: %s", self.name, dev.mac, exc or type(exc).__name__)

    def status(self):
        s = super().status()
        s.update(adapter=self.adapter, connected=sorted(self.connected))
        return s


# -- config (typed in drivers/ble/config.py, parsed once when the config is loaded) --------------------------------


def build_ble_source(config, clock, name=None, state_dir=None):
    """A ``BleScanSource`` or ``GattPollSource`` from its typed config (``BleScanConfig`` / ``GattConfig``).

    ``config`` may also be a ``[[sources]]`` table, parsed here (tests, tools); errors are ``ConfigError`` s naming
    the key. ``state_dir`` is the agent's state directory: the scanner keeps its BTHome counters there (None: in
    memory only).
    """
    if isinstance(config, dict):
        cls = {"ble": BleScanConfig, "gatt": GattConfig}.get(config.get("type"), BleScanConfig)
        config = cls.from_table(config)
    name = name or config.name or config.type
    if isinstance(config, GattConfig):
        devices = [GattDevice(s.mac, s.sensor, s.characteristics) for s in config.sensors]
        return GattPollSource(
            name, clock, devices, adapter=config.adapter, poll_s=config.poll_s, notify=config.notify,
            connect_timeout_s=config.connect_timeout_s, timeout_s=config.timeout_s,
            backoff_min_s=config.backoff_min_s, backoff_max_s=max(config.backoff_max_s, config.backoff_min_s))
    sensors = [SensorSpec(s.mac, s.format, s.key, s.alias) for s in config.sensors]
    return BleScanSource(
        name, clock, Selection(sensors, config.formats), adapter=config.adapter, passive=config.passive,
        watchdog_s=config.watchdog_s, rssi_interval_s=config.rssi_interval_s, dedup_window_s=config.dedup_window_s,
        skip=config.skip, backoff_min_s=config.backoff_min_s,
        backoff_max_s=max(config.backoff_max_s, config.backoff_min_s), timeout_s=config.timeout_s,
        replay_state_file=None if state_dir is None else replay_state.state_path(state_dir, name),
        replay_flush_s=config.replay_flush_s, reset_adverts=config.reset_adverts, reset_gap_s=config.reset_gap_s,
        power_cycle=config.power_cycle, max_power_cycles=config.max_power_cycles)
