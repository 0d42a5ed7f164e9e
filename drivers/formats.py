"""The table of decodable formats, for ``edge-gateway decode`` and for config validation.

Each entry names a module that exposes ``cli_decode(text, mac=None, key=None) -> list[Measurement]``. ``text`` is
what the technician typed: hex for radio formats, the sentence itself for text formats. Modules are imported only
when used, so the agent does not pay for formats it does not read.
"""

import importlib

FORMATS = {
    "bthome": "drivers.ble.bthome",
    "ruuvi": "drivers.ble.ruuvi",
    "atc": "drivers.ble.atc",
    "ess": "drivers.ble.ess",
    "nmea": "drivers.serial.nmea",
    "modbus": "drivers.serial.modbus",
    "lines": "drivers.serial.lines",
}


def cli_decoder(fmt):
    """Return the ``cli_decode`` function of ``fmt`` or raise ``KeyError`` naming the known formats."""
    try:
        module = FORMATS[fmt]
    except KeyError:
        raise KeyError("unknown format %r; known: %s" % (fmt, ", ".join(sorted(FORMATS)))) from None
    return importlib.import_module(module).cli_decode
