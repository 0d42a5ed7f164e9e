"""The table of decodable formats, for ``edge-gateway decode`` and for the fuzzer.

Each entry is a function ``cli_decode(text, mac=None, key=None) -> list[Measurement]``, looked up when used.
``text`` is what the technician typed: hex for radio formats, the sentence itself for text formats. The BLE formats
are the rows of ``drivers/ble/formats.py`` (nothing to add here for a new one); the serial ones are listed below.
Modules are imported only when used, so the agent does not pay for formats it does not read.
"""

import importlib

from drivers.ble import formats as ble_formats

#: serial formats: name -> module with ``cli_decode``
SERIAL = {
    "nmea": "drivers.serial.nmea",
    "modbus": "drivers.serial.modbus",
    "lines": "drivers.serial.lines",
}

#: every format ``edge-gateway decode`` knows: name -> module with ``cli_decode``
FORMATS = dict({name: row.module for name, row in ble_formats.FORMATS.items()}, **SERIAL)


def cli_decoder(fmt):
    """Return the ``cli_decode`` function of ``fmt`` or raise ``KeyError`` naming the known formats."""
    try:
        module = FORMATS[fmt]
    except KeyError:
        raise KeyError("unknown format %r; known: %s" % (fmt, ", ".join(sorted(FORMATS)))) from None
    return importlib.import_module(module).cli_decode
