"""The line-protocol board (firmware_sim/line_node.py) under the real MicroPython: its faults on demand, as the
gateway's line protocol sees them."""

import os
import shutil
import subprocess
import sys

import pytest

from drivers.serial.protocols import LinesProtocol

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MICROPYTHON = shutil.which("micropython", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
pytestmark = pytest.mark.skipif(MICROPYTHON is None, reason="micropython binary not found")


def board(*args, stdin=subprocess.DEVNULL):
    env = dict(os.environ, MICROPYPATH=ROOT + ":.frozen")
    out = subprocess.run([MICROPYTHON, os.path.join(ROOT, "firmware_sim", "line_node.py"), "--sensors", "2",
                          "--rate", "200"] + list(args), stdin=stdin, capture_output=True, env=env, timeout=60)
    return out.returncode, out.stdout


def decode(data):
    proto = LinesProtocol()
    got = proto.feed(data)
    ticks = sorted({int(m.value) for sensor, ms in got for m in ms if m.name == "n"})
    return proto.errors, ticks, got


def test_clean_board_is_decoded_whole():
    rc, out = board("--count", "20", "--checksum", "1")
    errors, ticks, got = decode(out)
    assert rc == 0 and errors == {} and ticks == list(range(20)) and len(got) == 40


def test_each_fault_shows_as_the_gateway_expects():
    rc, out = board("--count", "30", "--checksum", "1", "--fault", "noise:12@3", "--fault", "badsum@6",
                    "--fault", "silence:0.05@10", "--fault", "burst:5@20", "--fault", "disconnect@27")
    errors, ticks, got = decode(out)
    assert rc == 0  # the disconnect: the board closed its line and exited
    assert errors.get("bad_checksum", 0) >= 1  # the bad checksum, and the noise-corrupted line
    assert sum(errors.values()) == 2  # exactly the two damaged lines were refused; the rest decoded
    assert not set(range(10, 20)) & set(ticks) and {9, 20} <= set(ticks)  # 0.05 s at 200 Hz: ticks 10-19 silent
    assert {20, 21, 22, 23, 24} <= set(ticks)  # the burst's ticks all arrived
    assert max(ticks) == 26  # nothing after the disconnect


def test_options_go_through_micropythons_argparse():
    """The unix port's argparse (micropython-lib) parses the options: typed, --help lists them, a bad one is refused
    with the usage and status 2 (not a traceback); --fault, which it cannot repeat, is taken out first."""
    rc, out = board("--help")
    assert rc == 0 and b"--start-temp" in out and b"--fault" in out and b"repeatable" in out
    rc, out = board("--count", "1", "--start-temp", "-3.5", "--tick", "0", "--fault", "badsum@5")
    assert rc == 0 and out.startswith(b"id=board-1 temp=-3.")  # negative, as a float; no tick counter
    rc, out = board("--cuont", "3")
    assert rc == 2 and b"unknown option --cuont" in out
    rc, out = board("--count", "many")
    assert rc == 2 and b"invalid value for --count" in out


def test_control_lines_on_stdin():
    env = dict(os.environ, MICROPYPATH=ROOT + ":.frozen")
    proc = subprocess.Popen([MICROPYTHON, os.path.join(ROOT, "firmware_sim", "line_node.py"), "--sensors", "1",
                             "--rate", "50", "--checksum", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env)
    # Wait on the board's own output, not on the clock: six lines mean it runs; six more mean it read "!badsum".
    seen = b"".join(proc.stdout.readline() for _ in range(6))
    proc.stdin.write(b"!badsum\n")
    proc.stdin.flush()
    seen += b"".join(proc.stdout.readline() for _ in range(6))
    proc.stdin.write(b"!disconnect\n")
    proc.stdin.flush()
    out, _ = proc.communicate(timeout=10)
    out = seen + out
    errors, ticks, _ = decode(out)
    assert proc.returncode == 0 and errors == {"bad_checksum": 1} and len(ticks) >= 10
