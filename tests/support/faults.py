"""The fault rig of the system tier: the demo and ``edge-gateway receive`` as real processes, kill cycles, checks.

Shared by tests/system/test_faults_http.py and tests/system/test_faults_mqtt.py (moved here from the former so no
test module imports another).
"""

import glob
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gateway.adapters import keys
from gateway.core import wire

from tests.support import reserve_port, wait_for_port, wait_until  # noqa: F401  (reserve_port: the tests' port)

GW = "gw-demo"
BIN = os.path.join(os.path.dirname(sys.executable), "edge-gateway")


def spawn(args, log):
    """A child in its own process group, so a SIGKILL takes its sensor boards with it."""
    return subprocess.Popen([BIN] + args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def killpg(proc, sig=signal.SIGKILL):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    proc.wait(20)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the boards, if the agent exited on its own and left them
    except ProcessLookupError:
        pass


def prepare_store(store):
    os.makedirs(store, mode=0o700, exist_ok=True)
    key, _ = keys.load_or_create(os.path.join(store, "key.pem"))
    keys.write_jwks(os.path.join(store, "jwks.json"), {"keys": [key.jwk(GW)]})
    return keys.TrustStore.load(os.path.join(store, "jwks.json"))


class Receiver:
    """``edge-gateway receive`` as a separate process on a fixed loopback port."""

    def __init__(self, workdir, trust_file, port, mqtt=None, group="receivers", db=None, client_id=None,
                 operators=None):
        """``db``: a SQLite file or ``postgresql://`` URL (default ``workdir/receiver.sqlite``); ``client_id``: the
        consumer's MQTT client id (several workers of one group on one database need one each)."""
        self.db = db or os.path.join(workdir, "receiver.sqlite")
        self.args = ["receive", "--listen", "127.0.0.1:%d" % port, "--trust", trust_file, "--db", self.db,
                     "--log-level", "warning"]
        if mqtt:
            self.args += ["--mqtt", mqtt, "--mqtt-group", group]
        if client_id:
            self.args += ["--mqtt-client-id", client_id]
        if operators:
            self.args += ["--operators", operators]  # a command queue (POST /v1/commands)
        self.log_path = os.path.join(workdir, "receiver.log")
        self.log = open(self.log_path, "ab")
        self.port = port
        self.url = "http://127.0.0.1:%d/v1/batches" % port
        self.proc = None
        self.starts = 0

    def start(self, timeout=20):
        self.proc = spawn(self.args, self.log)
        self.starts += 1
        wait_for_port(self.port, timeout=timeout, what="the receiver (edge-gateway receive) on port %d" % self.port,
                      alive=lambda: self.proc.poll() is None)
        return self

    def kill(self):
        killpg(self.proc)

    def retire(self, timeout=60):
        """SIGUSR2: the worker leaves its shared subscription group for good (unsubscribe, drain, end the session,
        exit). Returns its exit status."""
        self.proc.send_signal(signal.SIGUSR2)
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc:
            killpg(self.proc, signal.SIGTERM)
        self.log.close()


class Busy503:
    """A tiny backend in maintenance: 503 with Retry-After: 1 to everything, on the receiver's port."""

    def __init__(self, port):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.server.hits += 1
                self.send_response(503)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass
        ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.hits = 0
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        return self.httpd.hits


def saved_batches(saved_dir, trust):
    """``{(boot, seq): sorted records}`` for every batch the demo saved at commit time."""
    out = {}
    for path in sorted(glob.glob(os.path.join(saved_dir, "*.cose"))):
        with open(path, "rb") as f:
            data = f.read()
        if not data:
            continue  # a SIGKILL while writing the file: the batch was committed; the receiver check covers it
        b = wire.verify(data, trust)
        out[(b.boot, b.seq)] = sorted((r["n"], round(r["t"], 3), r.get("v"), r.get("vs")) for r in b.records)
    return out


def received_batches(db):
    con = sqlite3.connect(db)
    try:
        dup = con.execute("SELECT COUNT(*) FROM (SELECT gw, boot, seq FROM batches GROUP BY 1, 2, 3 "
                          "HAVING COUNT(*) > 1)").fetchone()[0]
        assert dup == 0
        out = {}
        for boot, seq, n, t, v, vs in con.execute("SELECT boot, seq, n, t, v, vs FROM records WHERE gw = ?",
                                                  (GW,)):
            out.setdefault((boot, seq), []).append((n, round(t, 3), v, vs))
        declared = dict(((b, s), r) for b, s, r in con.execute("SELECT boot, seq, records FROM batches"))
    finally:
        con.close()
    for k in out:
        out[k].sort()
    assert {k: len(v) for k, v in out.items()} == {k: v for k, v in declared.items() if v}
    return out


def store_state(store_dir):
    con = sqlite3.connect(os.path.join(store_dir, "queue.sqlite"))
    try:
        left = con.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
        meta = dict(con.execute("SELECT k, v FROM meta").fetchall())
    finally:
        con.close()
    return left, meta


def check_delivery(saved, received, killed_boots, min_readings):
    """The acceptance checks shared by the HTTP and MQTT fault tests. Returns the number of readings."""
    missing = sorted(set(saved) - set(received))
    assert not missing, "accepted batches never delivered: %s" % missing[:20]
    for key, records in saved.items():
        assert received[key] == records, "batch %s delivered with different records" % (key,)
    extra = set(received) - set(saved)
    last_saved = {}
    for boot, seq in saved:
        last_saved[boot] = max(seq, last_saved.get(boot, -1))
    for boot, seq in extra:
        # Committed but not yet saved when the agent was SIGKILLed: only the newest batches of a killed epoch.
        assert boot in killed_boots and seq > last_saved.get(boot, -1), (boot, seq)
    assert len(extra) <= 3 * len(killed_boots)
    by_boot = {}
    for boot, seq in received:
        by_boot.setdefault(boot, []).append(seq)
    for boot, seqs in by_boot.items():
        assert sorted(seqs) == list(range(len(seqs))), "boot %d: seq gaps at the receiver" % boot
    # Each sensor's line counter n (one reading per line) is gap-free within an epoch: no reading lost between.
    counters = {}
    readings = 0
    for (boot, _), records in received.items():
        for name, t, v, vs in records:
            if "/health/" not in name:
                readings += 1
            if name.endswith("/n"):
                counters.setdefault((boot, name), []).append(int(v))
    assert counters, "no tick counter n arrived (the demo sends it with --tick-counter)"
    for (boot, name), ns in counters.items():
        assert sorted(ns) == list(range(min(ns), max(ns) + 1)) and len(ns) == len(set(ns)), (boot, name)
    accepted = sum(1 for records in saved.values() for r in records if "/health/" not in r[0])
    assert accepted >= min_readings, "only %d accepted readings" % accepted
    return readings


def run_kill_cycles(store, saved_dir, uplink, rng, kills, on_cycle, log, sensors=10, rate=60, alive=(0.6, 1.8),
                    final_duration=2.0):
    """Start the demo ``kills`` times, SIGKILL it at a random moment after its first commit, then once more to
    drain. ``on_cycle(i, phase)`` injects the other faults. Returns the boot epochs that were killed."""
    killed = []
    base = ["demo", "--store", store, "--uplink", uplink, "--save-batches", saved_dir, "--sensors", str(sensors),
            "--rate", str(rate), "--tick-counter", "--json"]  # n on every line: a gap in it is a lost reading
    for i in range(kills):
        on_cycle(i, "before")
        before = len(os.listdir(saved_dir)) if os.path.isdir(saved_dir) else 0
        proc = spawn(base + ["--duration", "120", "--seed", str(i + 1)], log)
        wait_until(lambda: proc.poll() is not None or (os.path.isdir(saved_dir) and
                                                        len(os.listdir(saved_dir)) > before + 1),
                   30, "the demo's first commits (cycle %d)" % i, interval=0.05)
        assert proc.poll() is None, "demo exited early (%s)" % proc.returncode
        time.sleep(rng.uniform(*alive))  # the behaviour under test: the agent runs a random while before its SIGKILL
        on_cycle(i, "running")
        killpg(proc)
        killed.append(store_state(store)[1]["boot"])
        on_cycle(i, "after")
    on_cycle(kills, "before")
    proc = spawn(base + ["--duration", str(final_duration), "--seed", "99"], log)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGUSR1)  # the CLI dumps every thread's stack into the log
        time.sleep(1)  # the dump is written by the process itself; nothing to wait on but the time it takes
        log.flush()
        with open(log.name, "rb") as f:
            tail = f.read()[-6000:].decode("utf-8", "replace")
        killpg(proc, signal.SIGKILL)
        raise AssertionError("the final demo run did not finish; its log ends with:\n" + tail)
    finally:
        killpg(proc)
    return killed


def wait_drained(store, receiver_db, saved_dir, trust, timeout=30):
    wait_until(lambda: store_state(store)[0] == 0 and not (set(saved_batches(saved_dir, trust)) -
                                                           set(received_batches(receiver_db))),
               timeout, "the store to drain into the receiver", interval=0.5)
