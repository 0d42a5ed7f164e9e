"""A simulated BLE radio: advertisement bytes in, readings out, through the scanner's own decode path.

``SimulatedRadio`` is a ``drivers.base.Source`` for field scenarios with hundreds of sensors, where the mocked
BlueZ (one D-Bus round trip per advert) would be too slow. A scenario driver calls ``hear(mac, service_data=...,
manufacturer_data=..., rssi=...)`` with the bytes ``firmware_sim/ble_nodes.py`` builds; the radio hands them to the
very callback bleak calls in production, ``BleScanSource._on_advert`` (selection table, ``Selection``,
``Deduper``, the pure BTHome/Ruuvi/pvvx decoders, the RSSI rate limit), with plain value objects standing in for
bleak's ``BLEDevice`` and ``AdvertisementData``. So the bytes, the selection, the dedup and the decoding are the
production ones; only the radio and BlueZ are simulated. ``tests/integration/test_ble_e2e.py`` covers bleak and BlueZ itself.

Readings are stamped with ``clock.monotonic()`` of the injected clock (a ``FakeClock`` under accelerated time).
``hear`` runs on the event loop, like bleak's detection callback, and is synchronous: when it returns, the
readings have been emitted to the agent.
"""

import asyncio

from drivers.base import Source
from drivers.ble.adverts import AdvertDecoder
from drivers.ble.selection import FORMATS, Selection, SensorSpec, normalise_mac


class SimulatedRadio(Source):
    """``sensors``: list of ``(mac, alias)`` or ``SensorSpec``; empty means every advert of ``formats``."""

    def __init__(self, name, clock, sensors=(), formats=FORMATS, rssi_interval_s=60.0, dedup_window_s=30.0):
        super().__init__()
        self.name = name
        specs = [s if isinstance(s, SensorSpec) else SensorSpec(normalise_mac(s[0]), alias=s[1]) for s in sensors]
        self.clock = clock
        self.adverts = AdvertDecoder(Selection(specs, formats), rssi_interval_s, dedup_window_s,
                                     counters=self.counters, name=name)  # adverts, records, duplicates, error.*
        self._emit = None
        self.running = asyncio.Event()
        self.dropped = 0

    async def run(self, emit):
        self._emit = emit
        self.running.set()
        try:
            await asyncio.Event().wait()  # adverts arrive through hear(); nothing to poll
        finally:
            self.running.clear()

    path = "simulated-radio"

    async def settle(self):
        """Delivery is synchronous here: nothing to wait for (``BluezRadio`` has to)."""

    def close(self):
        pass

    def hear(self, mac, service_data=None, manufacturer_data=None, rssi=-60):
        """One advertisement on the air. Keys: 16-bit service UUIDs (int or text) and company ids."""
        if not self.running.is_set():
            self.dropped += 1  # the radio is off: nobody hears it (counted, never raised)
            return
        for reading in self.adverts.readings(mac, service_data, manufacturer_data, rssi, self.clock.monotonic()):
            self._emit(reading)

    def status(self):
        s = super().status()
        s.update(mode="simulated", scanning=self.running.is_set(), path="simulated-radio")
        return s


class BluezRadio(Source):
    """The ``SimulatedRadio`` API, with the real receive path below it: each ``hear`` becomes a D-Bus
    ``PropertiesChanged`` of a mocked BlueZ (``tools/sim/bluez_mock.py``, a private system bus), which bleak's
    BlueZ backend turns into a detection callback of the production ``BleScanSource``.

    Delivery is asynchronous, so a scenario driver on simulated time awaits ``settle()`` after each round of
    adverts, before it moves the clock: readings are stamped when the scanner gets them. Needs the test extras
    (python-dbusmock, dbus-python) and a ``dbus-daemon``; ``available()`` says whether they are there.
    """

    path = "bluez-mock"

    def __init__(self, name, clock, sensors=(), formats=FORMATS, rssi_interval_s=60.0, dedup_window_s=30.0):
        super().__init__()
        from drivers.ble.adapter import BleScanSource
        from tools.sim.bluez_mock import BluezMock
        self.name = name
        specs = [s if isinstance(s, SensorSpec) else SensorSpec(normalise_mac(s[0]), alias=s[1]) for s in sensors]
        self.mock = BluezMock().start()
        # The watchdog judges silence on the scenario's clock, which jumps by minutes: keep it out of the way.
        self.scanner = BleScanSource(name, clock, Selection(specs, formats), rssi_interval_s=rssi_interval_s,
                                     dedup_window_s=dedup_window_s, watchdog_s=1e9)
        self.counters = self.scanner.counters
        self.running = asyncio.Event()
        self.sent = 0
        self._known = set()

    @staticmethod
    def available():
        import importlib.util
        import shutil
        return shutil.which("dbus-daemon") is not None and all(
            importlib.util.find_spec(m) is not None for m in ("dbusmock", "dbus"))

    async def run(self, emit):
        task = asyncio.create_task(self.scanner.run(emit))
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while not self.scanner.scanning and not task.done() and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if not self.scanner.scanning:
                raise RuntimeError("the scanner did not start against the mocked BlueZ")
            self.running.set()
            await task
        finally:
            self.running.clear()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def hear(self, mac, service_data=None, manufacturer_data=None, rssi=-60):
        if not self.running.is_set():
            return
        mac = normalise_mac(mac)
        if mac in self._known:
            self.mock.advertise(mac, service_data=service_data, manufacturer_data=manufacturer_data, rssi=rssi)
        else:
            self._known.add(mac)
            self.mock.add_device(mac, service_data=service_data, manufacturer_data=manufacturer_data, rssi=rssi)
        self.sent += 1

    async def settle(self, timeout=10.0):
        """Wait until the scanner has seen every advert sent so far."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.counters.get("adverts", 0) < self.sent:
            if loop.time() > deadline:
                raise RuntimeError("the scanner saw %d of %d adverts" % (self.counters.get("adverts", 0), self.sent))
            await asyncio.sleep(0.002)

    def close(self):
        self.mock.stop()

    def status(self):
        s = self.scanner.status()
        s.update(path=self.path)
        return s
