"""One advertisement in, readings out. Pure: no bleak, no IO; the time is passed in.

``AdvertDecoder.readings(mac, service_data, manufacturer_data, rssi, now)`` runs one advertisement through the
whole receive path: the record table (``selection.records``), the sensor selection (``Selection``), the repeat
filter (``Deduper``), the pure decoders of the enabled formats (the rows of ``drivers/ble/formats.py``: BTHome
with strict replay protection, Ruuvi, pvvx/ATC1441) and the RSSI rate limit. The bleak scanner
(``drivers/ble/adapter.py``) calls it from bleak's detection callback; the simulated radio of the field scenarios
(``tools/sim/radio.py``) calls it with bytes built by ``firmware_sim/ble_nodes.py``.
So everything after the radio is the same code in production and in simulation.

Decode errors never escape: each is counted as ``error.<reason>`` in ``counters`` (shared with the source). A
BTHome advert that decoded in part (``PartialDecode``: an unknown or truncated object after good ones) gives the
readings decoded before the fault, and is counted both as ``error.<reason>`` and as ``partial``. An encrypted
BTHome device whose counter restarted (``BTHomeDecoder``'s reset rule) is counted as ``counter_reset`` and reported
upstream as an ``Event`` named ``counter_reset`` among the returned items.
"""

import logging

from drivers.ble.formats import FORMATS
from drivers.ble.bthome import RESET_ADVERTS, RESET_GAP_S, BTHomeDecoder
from drivers.ble.selection import Deduper, RateLimit, records
from drivers.bounds import PartialDecode
from gateway.core.errors import DecodeError
from gateway.core.model import Event, Reading

log = logging.getLogger(__name__)

#: decoder outputs that are bookkeeping, not quantities (used for dedup, not sent)
DEFAULT_SKIP = ("packet_id", "counter", "seq", "flags")


class AdvertDecoder:
    def __init__(self, selection, rssi_interval_s=60.0, dedup_window_s=30.0, skip=DEFAULT_SKIP, counters=None,
                 name="ble", reset_adverts=RESET_ADVERTS, reset_gap_s=RESET_GAP_S):
        self.name = name
        self.selection = selection
        self.skip = frozenset(skip)
        self.dedup = Deduper(dedup_window_s)
        self.rssi = RateLimit(rssi_interval_s) if rssi_interval_s is not None else None
        self.decoders = {}
        self.keyed = {}  # format -> its stateful decoder (bindkeys, replay protection)
        for name in sorted(selection.formats):
            row = FORMATS[name]
            if row.keyed:
                self.keyed[name] = row.decoder_class()(selection.keys(), reset_adverts, reset_gap_s)
                self.decoders[name] = self.keyed[name].decode
            else:
                self.decoders[name] = _stateless(row.decode)
        # BTHome's replay state and counter resets are reported by the scanner; a source without BTHome keeps an
        # idle one so that the replay-state code need not ask
        self.bthome = self.keyed["bthome"] if "bthome" in self.keyed else BTHomeDecoder({}, reset_adverts,
                                                                                          reset_gap_s)
        self.counters = counters if counters is not None else {}

    def count(self, key, n=1):
        self.counters[key] = self.counters.get(key, 0) + n

    def readings(self, mac, service_data, manufacturer_data, rssi, now):
        """The readings of one advertisement of device ``mac`` heard at ``now`` (possibly none)."""
        self.count("adverts")
        mac = mac.upper()
        out = []
        sensor = None
        for fmt, payload in records(service_data, manufacturer_data):
            spec = self.selection.match(mac, fmt)
            if spec is None:
                self.count("ignored")
                continue
            if not self.dedup.accept(mac, fmt, payload, now):
                self.count("duplicates")
                continue
            resets = self.bthome.resets
            try:
                measurements = self.decoders[fmt](payload, mac, now)
            except PartialDecode as exc:
                self.count("error." + exc.reason)
                self.count("partial")
                log.debug("%s: %s advert from %s decoded in part: %s", self.name, fmt, mac, exc)
                measurements = exc.measurements
            except DecodeError as exc:
                self.count("error." + exc.reason)
                log.debug("%s: %s advert from %s did not decode: %s", self.name, fmt, mac, exc)
                continue
            sensor = spec.sensor
            self.count("records")
            if self.bthome.resets != resets:
                out.append(self._counter_reset(sensor, now))
            for m in measurements:
                if m.name not in self.skip:
                    out.append(Reading(sensor, m.name, m.value, m.unit, now, m.resolution))
        if sensor is not None and rssi is not None and self.rssi is not None and self.rssi.due(mac, now):
            out.append(Reading(sensor, "rssi", rssi, "dBm", now, 1))
        return out

    def _counter_reset(self, sensor, now):
        mac, old, new = self.bthome.last_reset
        self.count("counter_reset")
        reason = ("encrypted BTHome counter of %s restarted (last accepted %d, now %d): accepted after %d adverts "
                  "over at least %g s" % (mac, old, new, self.bthome.reset_adverts, self.bthome.reset_gap_s))
        log.warning("%s: %s", self.name, reason)
        return Event(sensor, "counter_reset", "info", reason, now)


def _stateless(decode):
    """A stateless decoder ``decode(payload)`` in the ``(payload, mac, now)`` shape of the decoder table."""
    def call(payload, mac, now):
        return decode(payload)
    return call
