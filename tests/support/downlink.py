"""The downlink rig shared by tests/integration/test_downlink_mqtt.py, test_downlink_http.py and test_update.py:
``edge-gateway run`` as a real process, the outcome records the receiver stored, the operator's CLI and the
receiver's command status."""

import json
import os
import signal
import sqlite3
import subprocess

import cbor2

from gateway.adapters import keys
from tests.support import wait_until
from tests.support.faults import BIN, GW, prepare_store


def outcomes(db, gw=GW):
    """``{record name suffix: [vs, ...]}`` of the downlink records the receiver stored (in arrival order)."""
    if not os.path.exists(db):
        return {}
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT n, vs FROM records WHERE n LIKE ? ORDER BY rowid", (gw + "/downlink/%",)).fetchall()
    except sqlite3.OperationalError:  # the receiver has not created its tables yet
        return {}
    finally:
        con.close()
    out = {}
    for n, vs in rows:
        out.setdefault(n.rsplit("/", 1)[1], []).append(vs)
    return out


def await_outcomes(db, expected, what, timeout=30):
    """Wait until the receiver holds at least ``expected[name]`` outcome records of each name; returns them all."""
    try:
        wait_until(lambda: all(len(outcomes(db).get(k, ())) >= n for k, n in expected.items()), timeout, what)
    except AssertionError as exc:
        raise AssertionError("%s; the receiver holds %r" % (exc, outcomes(db))) from None
    return outcomes(db)


def command_status(db, gw=GW):
    """``command status --db DB --json``: ``{(kid, op_seq): row}`` (a replay has the digest of what it replays)."""
    rows = [json.loads(line) for line in cli("command", "status", "--db", db, "--gw", gw, "--json").splitlines()]
    return {(row["kid"], row["op_seq"]): row for row in rows}


def await_commands(db, ids, what, timeout=30, gw=GW):
    """Wait until each command (``(kid, op_seq)``) has a final state at the receiver; returns ``command_status``."""
    def final():
        states = command_status(db, gw)
        return all(states.get(i, {}).get("state") not in (None, "queued", "checking") for i in ids)
    try:
        wait_until(final, timeout, what)
    except AssertionError as exc:
        raise AssertionError("%s; status: %r" % (exc, command_status(db, gw))) from None
    return command_status(db, gw)


def cli(*args, ok=True):
    """``edge-gateway ARGS``: its stdout (``ok``: it must exit 0), or the whole ``CompletedProcess``."""
    proc = subprocess.run([BIN] + list(args), capture_output=True, text=True, timeout=60)
    if not ok:
        return proc
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def operator_setup(work):
    """A gateway's state directory (key and trust store) in ``work/state`` and an operator key made by
    ``operator keygen`` in ``work/ops``: ``(state dir, operator.pem path, operator SigningKey)``."""
    store = os.path.join(work, "state")
    prepare_store(store)
    cli("operator", "keygen", "--out", os.path.join(work, "ops"))
    op_key = os.path.join(work, "ops", "operator.pem")
    return store, op_key, keys.load_private(op_key)


class CommandFiles:
    """Command files in ``work``: ``signed(name, ACTION, ARG...)`` through ``edge-gateway command sign`` with the
    operator key ``op_key``; ``raw(name, bytes)`` for bytes made by hand (forged, expired, oversized ...)."""

    def __init__(self, work, op_key):
        self.work, self.op_key = work, op_key

    def signed(self, name, *args, gw=GW, ttl="600"):
        path = os.path.join(self.work, name)
        cli("command", "sign", "--key", self.op_key, "--gw", gw, "--ttl", ttl, "--out", path, *args)
        return path

    def raw(self, name, data):
        path = os.path.join(self.work, name)
        with open(path, "wb") as f:
            f.write(data)
        return path


def op_seq_of(path):
    with open(path, "rb") as f:
        return cbor2.loads(cbor2.loads(f.read()).value[2])["op_seq"]


class Gateway:
    """``edge-gateway run --config FILE``; ``start`` waits for ``ready`` in its log (the downlink is listening)."""

    def __init__(self, work, cfg_path, ready="downlink: subscribed"):
        self.cfg = cfg_path
        self.ready = ready
        self.log_path = os.path.join(work, "agent.log")
        self.proc = None
        self.log = None

    def start(self):
        self.log = open(self.log_path, "ab")
        self.mark = os.path.getsize(self.log_path)
        self.proc = subprocess.Popen([BIN, "run", "--config", self.cfg], stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.ready in self.text() or self.proc.poll() is not None, 20, "the agent's downlink")
        assert self.proc.poll() is None, self.text()
        return self

    def text(self):
        with open(self.log_path, "rb") as f:
            f.seek(self.mark)
            return f.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        if self.log:
            self.log.close()
        return self.proc.returncode
