"""House style habit 1: the core does no IO. Pure modules must not pull in IO stacks when imported."""

import subprocess
import sys

import pytest

PURE = ["gateway.core.senml", "gateway.core.wire", "gateway.core.commands", "gateway.core.batcher", "gateway.core.model", "gateway.core.rules", "gateway.core.presence", "gateway.core.homeassistant",
        "drivers.ble.adverts", "drivers.ble.selection", "drivers.bounds", "gateway.core.redact", "gateway.core.cbor_strict", "gateway.core.poison", "gateway.core.pipeline", "gateway.core.clock",
        "drivers.ble.bthome", "drivers.ble.ruuvi", "drivers.ble.atc", "drivers.ble.ess",
        "drivers.serial.nmea", "drivers.serial.modbus", "drivers.serial.lines", "drivers.serial.protocols",
        "gateway.core.backoff", "gateway.core.algorithms", "gateway.core.fields", "gateway.core.actions", "gateway.core.actuator_link", "gateway.core.output_gate", "drivers.ble.formats",
        "drivers.ble.config", "drivers.serial.config", "drivers.sources", "drivers.serial.nmea_framer",
        "drivers.serial.modbus_schedule", "gateway.core.openmetrics", "drivers.ble.recovery"]
IO = ["asyncio", "serial", "bleak", "socket", "sqlite3", "http", "paho", "dbus_fast"]


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io(module):
    code = ("import sys, importlib; importlib.import_module(%r); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & set(%r)))" % (module, IO))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", "%s imports %s" % (module, out.stdout.strip())
