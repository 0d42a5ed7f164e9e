"""The BLE formats, one row each. Pure, and imports no decoder until one is used.

A row says everything the gateway needs to know about a format; every other place derives from this table:

* ``selection.records`` recognises an advertisement record by ``advert`` (service data UUID or company id);
* ``selection.normalise_format`` accepts the ``name`` and its ``aliases`` in the config (``formats``, ``format``);
* the config refuses a ``key`` for a sensor pinned to a format that is not ``keyed``;
* ``adverts.AdvertDecoder`` decodes with the module's ``decode(payload)`` or, for a keyed format, with an
  instance of its ``stateful`` class (bindkeys, replay protection) built once per source;
* ``selection.Deduper`` keys repeats by ``packet_id(payload)`` where the format has one, else by the bytes;
* ``adapter.BleScanSource`` asks BlueZ for the ``advert`` records as passive-scanning or-patterns;
* ``edge-gateway decode <name>`` calls the module's ``cli_decode(text, mac=None, key=None)``
  (``drivers/formats.py``), and the fuzzer fuzzes it.

A new format costs its pure decoder module (``decode`` and ``cli_decode``), its vectors in
``tests/vectors/<name>/``, and one row here. See "Worked example: a new BLE format" in ``docs/architecture.md``.
"""

import importlib
from dataclasses import dataclass

#: AD structure kinds an advert record is recognised by, and their AD type (Bluetooth Core Supplement, 1.3/1.4)
SERVICE, MANUFACTURER = "service", "manufacturer"
AD_TYPES = {SERVICE: 0x16, MANUFACTURER: 0xFF}


@dataclass(frozen=True, slots=True)
class BleFormat:
    name: str
    module: str               # the pure decoder: ``decode(payload)`` and ``cli_decode(text, mac=None, key=None)``
    advert: tuple = None      # (SERVICE, 16-bit UUID) or (MANUFACTURER, company id); None: read over GATT only
    aliases: tuple = ()       # other spellings accepted in the config
    stateful: str = None      # a class of ``module`` built as ``cls(keys, reset_adverts, reset_gap_s)`` with
    #                           ``decode(payload, mac, now)``: the format takes a bindkey (``keyed``)
    packet_id: str = None     # "module:function" giving a payload's packet id (dedup), or None: the bytes

    @property
    def keyed(self):
        return self.stateful is not None

    def load(self):
        return importlib.import_module(self.module)

    @property
    def decode(self):
        return self.load().decode

    @property
    def cli_decode(self):
        return self.load().cli_decode

    def decoder_class(self):
        return getattr(self.load(), self.stateful)

    def packet_id_function(self):
        if self.packet_id is None:
            return None
        module, _, name = self.packet_id.partition(":")
        return getattr(importlib.import_module(module), name)

    def pattern(self):
        """The BlueZ or-pattern ``(AD type, content at position 0)``: the UUID or company id, little endian."""
        kind, ident = self.advert
        return AD_TYPES[kind], ident.to_bytes(2, "little")


FORMATS = {f.name: f for f in (
    BleFormat("bthome", "drivers.ble.bthome", (SERVICE, 0xFCD2), stateful="BTHomeDecoder",
              packet_id="drivers.ble.selection:bthome_packet_id"),
    BleFormat("ruuvi", "drivers.ble.ruuvi", (MANUFACTURER, 0x0499)),
    BleFormat("atc", "drivers.ble.atc", (SERVICE, 0x181A), aliases=("pvvx", "atc1441")),
    BleFormat("ess", "drivers.ble.ess"),
)}

#: the formats heard in advertisements (the scanner's default ``formats``), in table order
ADVERTISED = tuple(name for name, f in FORMATS.items() if f.advert is not None)
#: (kind, UUID or company id) -> format name
RECORDS = {f.advert: name for name, f in FORMATS.items() if f.advert is not None}
#: every accepted spelling in the config -> format name (advertised formats only)
ALIASES = {alias: name for name in ADVERTISED for alias in (name,) + FORMATS[name].aliases}
