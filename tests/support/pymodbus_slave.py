"""An independent Modbus RTU slave for the tests: pymodbus's server on one end of a real pty pair (socat joins two
ptys), our master (``drivers/serial``) on the other end, exactly as it opens a USB RS-485 adapter.

pymodbus encodes every value itself (its ``SimData`` types, and its client's ``convert_to_registers`` for the
word-swapped ones it has no type for), so the test compares our decoding with another implementation's encoding.

Run as ``python -m tests.support.pymodbus_slave --port PATH [--delay S]``: slaves 1 (the values of ``VALUES``;
each answer delayed by ``--delay`` seconds), 2 (holding registers 0..1 only: any other address answers exception
2, illegal data address) and 3 (every read answers exception 6, server device busy). ``ModbusLine`` runs socat
and this script for a test and can stop and continue the slave (SIGSTOP/SIGCONT: a slave that stops answering
and comes back).
"""

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys

from tests.support import ROOT, wait_until

#: (our register entry, pymodbus type name or None for registers built by convert_to_registers, the value)
VALUES = [
    ({"name": "pump", "address": 0, "table": "coil"}, "BITS", True),
    ({"name": "valve", "address": 1, "table": "coil"}, "BITS", False),
    ({"name": "alarm", "address": 2, "table": "coil"}, "BITS", True),
    ({"name": "door", "address": 10, "table": "discrete"}, "BITS", False),
    ({"name": "smoke", "address": 11, "table": "discrete"}, "BITS", True),
    ({"name": "offset", "address": 0, "type": "int16"}, "INT16", -1234),
    ({"name": "rpm", "address": 1, "type": "uint16"}, "UINT16", 50000),
    ({"name": "export", "address": 2, "type": "int32"}, "INT32", -70000),
    ({"name": "energy", "address": 4, "type": "uint32", "word_order": "little"}, None, 3000000000),
    ({"name": "balance", "address": 6, "type": "int32", "word_order": "little"}, None, -123456),
    ({"name": "temp", "address": 8, "type": "float32", "unit": "Cel"}, "FLOAT32", -21.5),
    ({"name": "hum", "address": 10, "type": "int16", "scale": 0.1, "unit": "%RH"}, "INT16", 455),
    ({"name": "voltage", "address": 0, "type": "float32", "table": "input", "unit": "V"}, "FLOAT32", 230.5),
    ({"name": "count", "address": 2, "type": "uint32", "table": "input"}, "UINT32", 1234567),
    ({"name": "pf", "address": 4, "type": "int16", "table": "input", "scale": 0.001}, "INT16", -950),
]
TABLES = ("coil", "discrete", "holding", "input")  # the order of SimDevice's non-shared blocks


def expected():
    """{name: value} our master must read from slave 1."""
    out = {}
    for entry, _, value in VALUES:
        out[entry["name"]] = value * entry.get("scale", 1) if not isinstance(value, bool) else value
    return out


def register_map():
    return [dict(entry) for entry, _, _ in VALUES]


def _devices(delay):
    from pymodbus.client.mixin import ModbusClientMixin
    from pymodbus.constants import ExcCodes
    from pymodbus.simulator import DataType, SimData, SimDevice

    blocks = {t: [] for t in TABLES}
    for entry, kind, value in VALUES:
        table = entry.get("table", "holding")
        if kind is None:  # pymodbus has no word-swapped type: its client's conversion makes the registers
            words = ModbusClientMixin.convert_to_registers(
                value, getattr(ModbusClientMixin.DATATYPE, entry["type"].upper()), word_order=entry["word_order"])
            blocks[table].append(SimData(entry["address"], values=list(words), datatype=DataType.REGISTERS))
        else:
            blocks[table].append(SimData(entry["address"], values=value, datatype=getattr(DataType, kind)))

    async def slow(*_args):
        if delay:
            await asyncio.sleep(delay)  # a slow slave: the answer leaves after this
        return None

    async def busy(*_args):
        return ExcCodes.DEVICE_BUSY

    few = ([SimData(0, values=False, datatype=DataType.BITS)], [SimData(0, values=False, datatype=DataType.BITS)],
           [SimData(0, count=2, values=7, datatype=DataType.UINT16)], [SimData(0, values=1, datatype=DataType.UINT16)])
    return [SimDevice(1, simdata=tuple(blocks[t] for t in TABLES), action=slow),
            SimDevice(2, simdata=few),
            SimDevice(3, simdata=few, action=busy)]


async def _serve(port, delay):
    from pymodbus.server import ModbusSerialServer
    server = ModbusSerialServer(_devices(delay), port=port, baudrate=19200)
    await server.serve_forever()


class ModbusLine:
    """socat's pty pair with the pymodbus slave on one end; ``port`` is the end the master opens."""

    def __init__(self, directory, delay=0.0):
        self.port = os.path.join(directory, "gw-tty")
        self.slave_port = os.path.join(directory, "slave-tty")
        self.delay = delay
        self.socat = self.slave = None

    def start(self):
        socat = shutil.which("socat")
        assert socat, "socat is required (bootstrap.sh installs it)"
        os.makedirs(os.path.dirname(self.port), exist_ok=True)
        self.socat = subprocess.Popen([socat, "pty,raw,echo=0,link=" + self.port,
                                       "pty,raw,echo=0,link=" + self.slave_port])
        def linked():
            assert self.socat.poll() is None, "socat exited with %s" % self.socat.returncode
            return os.path.exists(self.port) and os.path.exists(self.slave_port)
        wait_until(linked, 10, "socat's two ptys")
        self.slave = subprocess.Popen([sys.executable, "-m", "tests.support.pymodbus_slave", "--port",
                                       self.slave_port, "--delay", str(self.delay)], cwd=str(ROOT))
        wait_until(self._slave_has_port, 20, "the pymodbus slave opening %s" % self.slave_port)
        return self

    def _slave_has_port(self):
        assert self.slave.poll() is None, "the pymodbus slave exited with %s" % self.slave.returncode
        target = os.path.realpath(self.slave_port)
        fds = "/proc/%d/fd" % self.slave.pid
        try:
            return any(os.path.realpath(os.path.join(fds, fd)) == target for fd in os.listdir(fds))
        except FileNotFoundError:
            return False

    def pause(self):
        """The slave stops answering (its process is stopped; requests wait in the pty)."""
        self.slave.send_signal(signal.SIGSTOP)

    def resume(self):
        self.slave.send_signal(signal.SIGCONT)

    def stop(self):
        for proc in (self.slave, self.socat):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.port, args.delay))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
