"""Why the agent's previous run ended, found at the next start from three small files in the state directory.

* ``run-marker.json``: written (atomically, fsynced) when the agent starts, as ``{"state": "running"}``; at a clean
  stop it becomes ``{"state": "clean"}``, and when an exception ends the run ``{"state": "crash", "error": TYPE}``.
  A marker still ``running`` at the next start means the process never got to say goodbye: power loss, SIGKILL,
  or a kill by systemd (watchdog, out of memory).
* ``stop-result.json``: written after the run by the unit's ``ExecStopPost=`` (``edge-gateway record-stop``) from
  the variables systemd sets there: ``$SERVICE_RESULT`` (``success``, ``exit-code``, ``signal``, ``core-dump``,
  ``watchdog``, ``oom-kill``, ``timeout``, ...), ``$EXIT_CODE`` and ``$EXIT_STATUS``. It tells a watchdog kill and
  the kernel's OOM killer apart from power loss, which leaves no such file.
* ``update-pending``: written by ``deploy/upgrade.sh`` before it restarts the service on a new version. (An update
  by ``edge-gateway update`` or its rollback says so in ``update-outcome`` instead: ``RunMarker.start(update=)``.)

``RunMarker.start()`` reads all three, removes the last two, writes the new ``running`` marker and returns the
``StopReason``. ``classify`` is the pure decision table. The marker also carries ``counts``, how many times each
kind ended a run since the state directory was made (``RunMarker.counts``: the health records
``restarts.<kind>`` and the metric ``edge_gateway_restarts_total``).

Adding a kind: one row in ``KINDS`` (or ``register_kind`` from the module that detects it) and its rule in
``classify``; systemd verdicts are rows of ``SERVICE_RESULTS``. docs/operations.md, "Why it restarted", and the
``last_stop`` row of docs/wire-format.md list the kinds (a test compares them).
"""

import json
import logging
import os
from dataclasses import dataclass

from gateway.adapters.files import write_atomic

log = logging.getLogger(__name__)

MARKER = "run-marker.json"
STOP_RESULT = "stop-result.json"
UPDATE = "update-pending"


@dataclass(frozen=True, slots=True)
class StopReason:
    """``kind`` is one of ``KINDS``; ``detail`` an exception type, a signal name or a version, or ``""``."""

    kind: str
    detail: str = ""

    def describe(self):
        """The console's words: ``clean``, ``crash (ValueError)``, ``power loss or kill -9`` ..."""
        text = KINDS[self.kind]
        return "%s (%s)" % (text, self.detail) if self.detail else text

    def health_name(self):
        """The health record's name: ``last_stop.<kind>``, or ``last_stop.<kind>.<detail>`` when the detail is a
        name (an exception type, a signal); a version travels in the console's words only."""
        detail = self.detail if self.detail.isidentifier() and self.detail.isascii() else ""
        return "last_stop.%s%s" % (self.kind, "." + detail[:40] if detail else "")


#: kind -> what the console says (docs/operations.md, "Why it restarted", explains each)
KINDS = {
    "first": "first start (no earlier run recorded)",
    "clean": "clean",
    "crash": "crash",
    "watchdog": "watchdog (event loop stalled)",
    "oom": "out of memory",
    "killed": "killed by a signal",
    "timeout": "stop timed out, killed",
    "power_loss": "power loss or kill -9",
    "update": "update",
}
#: systemd's ``$SERVICE_RESULT`` -> the kind it proves, whatever the marker says (systemd killed us)
SERVICE_RESULTS = {"watchdog": "watchdog", "oom-kill": "oom"}
#: exception types that end a run for want of memory: an out-of-memory stop, not a crash
OUT_OF_MEMORY = ("MemoryError",)


def register_kind(kind, words):
    """Add a kind of stop (an identifier, as it travels in ``last_stop.<kind>``) with the console's words."""
    if not kind.isidentifier() or not kind.isascii():
        raise ValueError("a stop kind must be an ASCII identifier: %r" % (kind,))
    KINDS[kind] = words


def classify(marker, stop_result, update):
    """The reason from the previous run's marker (a dict or None), the ExecStopPost record (a dict or None) and
    the upgrade's marker (its text or None). Pure."""
    if update is not None:
        return StopReason("update", update.strip()[:80])
    if marker is None:
        return StopReason("first")
    result = (stop_result or {}).get("service_result", "")
    if result in SERVICE_RESULTS:
        return StopReason(SERVICE_RESULTS[result])
    state = marker.get("state")
    if state == "clean":
        return StopReason("clean")
    if state == "crash":
        error = str(marker.get("error", ""))
        return StopReason("oom" if error in OUT_OF_MEMORY else "crash", error)
    if result == "timeout":
        return StopReason("timeout")
    if result in ("signal", "core-dump"):
        return StopReason("killed", "SIG" + str(stop_result.get("exit_status", "?")))
    return StopReason("power_loss")


class RunMarker:
    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, MARKER)
        self.counts = {}  # kind -> runs it ended, since the state directory was made (``start`` reads them)

    def _read_json(self, name):
        path = os.path.join(self.state_dir, name)
        try:
            with open(path, "rb") as f:
                value = json.loads(f.read(4096))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # a torn or unreadable file says nothing reliable
            log.warning("%s: unreadable (%s); ignored", path, exc)
            return {}
        return value if isinstance(value, dict) else {}

    def _read_update(self):
        try:
            with open(os.path.join(self.state_dir, UPDATE), "rb") as f:
                return f.read(256).decode("utf-8", "replace")
        except FileNotFoundError:
            return None

    def start(self, update=None):
        """Find why the previous run ended, then mark this one running. ``update``: the text of an update outcome
        that is why this start happens (``update-outcome``, read by ``gateway.app.update_agent``), if any. Raises
        ``OSError`` if the state directory cannot be written (the store opened there already, so that is rare)."""
        marker = self._read_json(MARKER)
        reason = classify(marker, self._read_json(STOP_RESULT), self._read_update() or update)
        counts = (marker or {}).get("counts")
        self.counts = {k: v for k, v in counts.items() if isinstance(k, str) and type(v) is int and v > 0
                       and k.isidentifier()} if isinstance(counts, dict) else {}
        if reason.kind != "first":
            self.counts[reason.kind] = self.counts.get(reason.kind, 0) + 1
        self._write({"state": "running", "pid": os.getpid()})
        for name in (STOP_RESULT, UPDATE):
            try:
                os.unlink(os.path.join(self.state_dir, name))
            except FileNotFoundError:
                pass
        return reason

    def clean(self):
        self._write({"state": "clean"})

    def crash(self, exc):
        self._write({"state": "crash", "error": type(exc).__name__})

    def _write(self, record):
        record["counts"] = self.counts
        write_atomic(self.path, json.dumps(record, sort_keys=True) + "\n", mode=0o600)


def record_stop(state_dir, environ):
    """``ExecStopPost=``: keep systemd's verdict on the run that just ended for the next start to read."""
    record = {"service_result": environ.get("SERVICE_RESULT", ""), "exit_code": environ.get("EXIT_CODE", ""),
              "exit_status": environ.get("EXIT_STATUS", "")}
    write_atomic(os.path.join(state_dir, STOP_RESULT), json.dumps(record, sort_keys=True) + "\n", mode=0o600)
    return record
