"""Pure modules import no IO library, each checked in a fresh interpreter (a process, so not in the unit tier).

Moved from the unit tier's test_ble_decoders, test_config, test_console_protocol and test_serial_protocols.
"""

import subprocess
import sys

from tests.support import ROOT


def test_decoders_do_no_io_imports():
    code = ("import sys\n"
            "import drivers.ble.bthome, drivers.ble.ruuvi, drivers.ble.atc, drivers.ble.ess, drivers.ble.units\n"
            "print(','.join(m for m in ('bleak', 'asyncio', 'socket', 'serial') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_loading_a_config_with_ble_sources_imports_no_radio_stack():
    code = ("import sys; from gateway.app import config; "
            "config.loads('[[sources]]\\ntype = \"ble\"\\n[[sources]]\\ntype = \"gatt\"\\n"
            "sensors = [{mac = \"A4:C1:38:00:00:10\"}]\\n[[sources]]\\ntype = \"serial\"\\nport = \"/dev/x\"\\n'); "
            "print([m for m in ('bleak', 'serial', 'dbus_fast') if m in sys.modules])")
    root = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_pure_modules_do_no_io():
    """House style habit 1: the console's core imports no IO library (checked in a fresh interpreter)."""
    code = ("import sys\n"
            "import gateway.app.console.protocol, gateway.app.console.commands, gateway.app.console.auth, "
            "gateway.app.console.board, gateway.app.console.settings\n"
            "bad = [m for m in ('asyncio', 'serial', 'socket', 'termios', 'select', 'http.client', 'bleak') "
            "if m in sys.modules]\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == ""


def test_protocols_module_does_no_io():
    code = ("import sys, drivers.serial.protocols; "
            "bad = [m for m in ('serial', 'asyncio', 'socket') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "[]", out.stderr
