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
