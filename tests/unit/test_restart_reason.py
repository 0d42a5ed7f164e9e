"""Why the previous run ended (gateway/adapters/restart_reason.py), the sd_notify settings read from the environment
(gateway/app/watchdog.py) and the console's `last stop` line. Pure: the marker files live in tmp_path."""

import json
import os

import pytest

from gateway.adapters.restart_reason import (KINDS, MARKER, STOP_RESULT, UPDATE, RunMarker, StopReason, classify,
                                             record_stop)
from gateway.app.watchdog import Notifier

from tests.support.fake_view import rig, say  # noqa: F401  (rig: a fixture)

RUNNING, CLEAN = {"state": "running", "pid": 7}, {"state": "clean"}


def stop(result, code="", status=""):
    return {"service_result": result, "exit_code": code, "exit_status": status}


@pytest.mark.parametrize("marker, stop_result, update, expected", [
    (None, None, None, StopReason("first")),
    (CLEAN, None, None, StopReason("clean")),
    (CLEAN, stop("success", "exited", "0"), None, StopReason("clean")),
    (CLEAN, stop("exit-code", "exited", "75"), None, StopReason("clean")),  # the console's `restart`
    ({"state": "crash", "error": "ValueError"}, stop("exit-code", "exited", "1"), None,
     StopReason("crash", "ValueError")),
    ({"state": "crash", "error": "ValueError"}, None, None, StopReason("crash", "ValueError")),
    (RUNNING, None, None, StopReason("power_loss")),  # no ExecStopPost record: power cut, or SIGKILL outside systemd
    ({}, None, None, StopReason("power_loss")),  # a torn marker: the run did not end cleanly either
    (RUNNING, stop("watchdog", "dumped", "ABRT"), None, StopReason("watchdog")),
    (RUNNING, stop("oom-kill", "killed", "KILL"), None, StopReason("oom")),
    (RUNNING, stop("signal", "killed", "KILL"), None, StopReason("killed", "SIGKILL")),
    (RUNNING, stop("core-dump", "dumped", "SEGV"), None, StopReason("killed", "SIGSEGV")),
    (RUNNING, stop("timeout", "killed", "KILL"), None, StopReason("timeout")),
    (CLEAN, None, "0.1.0 -> 0.2.0\n", StopReason("update", "0.1.0 -> 0.2.0")),
    (RUNNING, stop("watchdog"), "0.2.0", StopReason("update", "0.2.0")),
])
def test_classify_table(marker, stop_result, update, expected):
    assert classify(marker, stop_result, update) == expected


def test_each_reason_has_console_words_and_a_wire_name():
    assert StopReason("clean").describe() == "clean"
    assert StopReason("crash", "ValueError").describe() == "crash (ValueError)"
    assert StopReason("power_loss").describe() == "power loss or kill -9"
    assert StopReason("crash", "ValueError").health_name() == "last_stop.crash.ValueError"
    assert StopReason("update", "0.1.0 -> 0.2.0").health_name() == "last_stop.update"
    assert StopReason("killed", "SIGKILL").health_name() == "last_stop.killed.SIGKILL"
    for kind in KINDS:
        name = StopReason(kind).health_name()
        assert name == "last_stop." + kind and all(c.isalnum() or c in "._-" for c in name)


def test_run_marker_cycle(tmp_path):
    marker = RunMarker(str(tmp_path))
    assert marker.start() == StopReason("first")
    assert json.loads((tmp_path / MARKER).read_text())["state"] == "running"
    assert oct(os.stat(tmp_path / MARKER).st_mode & 0o777) == "0o600"
    assert RunMarker(str(tmp_path)).start() == StopReason("power_loss")  # never marked clean
    marker.clean()
    assert marker.start() == StopReason("clean")
    marker.crash(KeyError("x"))
    assert marker.start() == StopReason("crash", "KeyError")
    record_stop(str(tmp_path), {"SERVICE_RESULT": "watchdog", "EXIT_CODE": "dumped", "EXIT_STATUS": "ABRT"})
    (tmp_path / UPDATE).write_text("0.2.0")
    assert marker.start() == StopReason("update", "0.2.0")
    assert not (tmp_path / STOP_RESULT).exists() and not (tmp_path / UPDATE).exists()  # read once
    record_stop(str(tmp_path), {"SERVICE_RESULT": "watchdog", "EXIT_CODE": "dumped", "EXIT_STATUS": "ABRT"})
    assert marker.start() == StopReason("watchdog")
    assert marker.start() == StopReason("power_loss")  # the record was for the run before


def test_notifier_from_env():
    assert not Notifier.from_env({}).enabled and Notifier.from_env({}).interval is None
    assert Notifier.from_env({}).notify("READY=1") is False  # nothing sent, no socket made
    n = Notifier.from_env({"NOTIFY_SOCKET": "@sd/notify", "WATCHDOG_USEC": "30000000"})
    assert n.address == "\0sd/notify" and n.interval == 15.0
    assert Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify"}).interval is None  # no WatchdogSec=
    other = {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(other).interval is None  # the watchdog is another process's
    mine = dict(other, WATCHDOG_PID=str(os.getpid()))
    assert Notifier.from_env(mine).interval == 0.5
    assert not Notifier.from_env({"NOTIFY_SOCKET": "relative"}).enabled
    assert Notifier.from_env({"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "soon"}).interval is None


def test_status_shows_the_last_stop(rig, monkeypatch):
    view, console = rig[1], rig[4]
    assert not any(line.startswith("last stop") for line in say(console, "status"))  # not known (the demo)
    status = view.status()
    monkeypatch.setattr(view, "status", lambda: dict(status, last_stop="crash (ValueError)"))
    lines = say(console, "status")
    assert "last stop crash (ValueError)" in lines
    assert lines.index("last stop crash (ValueError)") == 3  # right after the clock line


def test_memory_error_is_an_out_of_memory_stop_and_new_kinds_can_be_registered():
    from gateway.adapters import restart_reason
    assert classify({"state": "crash", "error": "MemoryError"}, None, None) == StopReason("oom", "MemoryError")
    assert StopReason("oom", "MemoryError").health_name() == "last_stop.oom.MemoryError"
    with pytest.raises(ValueError):
        restart_reason.register_kind("not a name", "x")
    restart_reason.register_kind("test_kind", "a kind added by a test")
    try:
        assert StopReason("test_kind").describe() == "a kind added by a test"
    finally:
        del KINDS["test_kind"]


def test_the_marker_counts_the_stops_by_kind_across_runs(tmp_path):
    marker = RunMarker(str(tmp_path))
    marker.start()
    assert marker.counts == {}  # a first start ends nothing
    marker.clean()
    for end in ("clean", "crash", None, "crash"):  # None: the process vanished (power loss)
        marker = RunMarker(str(tmp_path))
        marker.start()
        if end == "clean":
            marker.clean()
        elif end == "crash":
            marker.crash(ValueError("x"))
    marker = RunMarker(str(tmp_path))
    marker.start()
    assert marker.counts == {"clean": 2, "crash": 2, "power_loss": 1}
    raw = json.loads((tmp_path / MARKER).read_text())
    assert raw["counts"] == marker.counts and raw["state"] == "running"
    (tmp_path / MARKER).write_text(json.dumps({"state": "clean", "counts": {"clean": "many", "x y": 3, "oom": -1}}))
    marker = RunMarker(str(tmp_path))
    marker.start()
    assert marker.counts == {"clean": 1}  # hostile or damaged counts are dropped, not trusted
