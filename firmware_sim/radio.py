"""A simulated BLE radio: advertisement bytes in, readings out, through the scanner's own decode path.

``SimulatedRadio`` is a ``drivers.base.Source`` for field scenarios with hundreds of sensors, where the mocked
BlueZ (one D-Bus round trip per advert) would be too slow. A scenario driver calls ``hear(mac, service_data=...,
manufacturer_data=..., rssi=...)`` with the bytes ``firmware_sim/ble_nodes.py`` builds; the radio hands them to the
very callback bleak calls in production, ``BleScanSource._on_advert`` (selection table, ``Selection``,
``Deduper``, the pure BTHome/Ruuvi/pvvx decoders, the RSSI rate limit), with plain value objects standing in for
bleak's ``BLEDevice`` and ``AdvertisementData``. So the bytes, the selection, the dedup and the decoding are the
production ones; only the radio and BlueZ are simulated. ``tests/test_ble_e2e.py`` covers bleak and BlueZ itself.

Readings are stamped with ``clock.monotonic()`` of the injected clock (a ``FakeClock`` under accelerated time).
``hear`` runs on the event loop, like bleak's detection callback, and is synchronous: when it returns, the
readings have been emitted to the agent.
"""

import asyncio

from drivers.base import Source
from drivers.ble.adapter import BleScanSource
from drivers.ble.selection import FORMATS, Selection, SensorSpec, normalise_mac


class _Device:
    """What bleak's ``BLEDevice`` gives the callback: the address."""

    __slots__ = ("address",)

    def __init__(self, address):
        self.address = address


class _Advert:
    """What bleak's ``AdvertisementData`` gives the callback: service data, manufacturer data, RSSI."""

    __slots__ = ("service_data", "manufacturer_data", "rssi")

    def __init__(self, service_data, manufacturer_data, rssi):
        self.service_data = service_data
        self.manufacturer_data = manufacturer_data
        self.rssi = rssi


class SimulatedRadio(Source):
    """``sensors``: list of ``(mac, alias)`` or ``SensorSpec``; empty means every advert of ``formats``."""

    def __init__(self, name, clock, sensors=(), formats=FORMATS, rssi_interval_s=60.0, dedup_window_s=30.0):
        super().__init__()
        self.name = name
        specs = [s if isinstance(s, SensorSpec) else SensorSpec(normalise_mac(s[0]), alias=s[1]) for s in sensors]
        self.scanner = BleScanSource(name, clock, Selection(specs, formats), rssi_interval_s=rssi_interval_s,
                                     dedup_window_s=dedup_window_s)
        self.counters = self.scanner.counters  # adverts, records, duplicates, ignored, error.<reason>
        self.running = asyncio.Event()
        self.dropped = 0

    async def run(self, emit):
        self.scanner._emit = emit  # the scanner's callback emits through this, as when bleak drives it
        self.scanner.mode = "simulated"
        self.scanner.scanning = True
        self.running.set()
        try:
            await asyncio.Event().wait()  # adverts arrive through hear(); nothing to poll
        finally:
            self.scanner.scanning = False
            self.running.clear()

    def hear(self, mac, service_data=None, manufacturer_data=None, rssi=-60):
        """One advertisement on the air. Keys: 16-bit service UUIDs (int or text) and company ids."""
        if not self.running.is_set():
            self.dropped += 1  # the radio is off: nobody hears it (counted, never raised)
            return
        self.scanner._on_advert(_Device(mac), _Advert(service_data or {}, manufacturer_data or {}, rssi))

    def status(self):
        s = self.scanner.status()
        s.update(name=self.name, path="simulated-radio")
        return s
