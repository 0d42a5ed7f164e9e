"""``edge-gateway bench --backend``: the backend at fleet scale, on SQLite and on PostgreSQL (docs/performance.md).

Two parts per engine:

* **CPU split**, in this process on one core: the CPU microseconds per batch (``--records`` readings, sealed by
  the fleet simulator) of ``verify`` (the COSE envelope and the Ed25519 signature), ``decode`` (the strict CBOR
  walk, the payload checks and the SenML resolution: ``gateway.core.wire.verify`` minus ``verify``, plus the
  content digest) and ``insert`` (``Storage.store`` in this process; for PostgreSQL also the server process's CPU,
  read from ``/proc``).
* **Ingest**, real processes: a Mosquitto, ``workers`` ``edge-gateway receive`` processes on one MQTT v5 shared
  subscription, and ``edge-gateway fleet-sim`` offering ``gateways x rate`` batches a second, a fifth of the
  gateways cut off for a third of the run and reconnecting with their backlog. Reported: batches and records
  committed per second (in all, and per worker process), the CPU per batch of every process (simulator, broker,
  workers, PostgreSQL), each worker's RSS over the run, p50/p99 from publish to the receiver's store (the
  simulator's send time against ``batches.received``), the storm's drain time, and loss (acknowledged batches not
  in the database).

It needs Mosquitto and PostgreSQL's server binaries (Debian ``mosquitto``, ``postgresql``) and runs them through
the test suite's helpers (``tests/support``), so it runs from a checkout. The PostgreSQL cluster runs with
``fsync=off`` (as in the tests): the figures leave out the WAL flush a production server pays per commit.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from backend.engines import open_storage
from backend.receiver import content_digest
from gateway.adapters.keys import TrustStore
from gateway.core import wire
from tools.bench_processes import proc_cpu_s, proc_rss_mb
from tools.fleet_sim import Plan, SimGateway, gateway_key, read_acked

#: the issue's target on this machine (2 cores shared by broker, database, workers and simulator)
TARGETS = {"postgresql_batches_per_s": (">=", 1000), "postgresql_lost": ("<=", 0), "sqlite_lost": ("<=", 0)}
RECORDS = 100
#: batches a second each simulated gateway is asked for, per engine (50 gateways): PostgreSQL's 1,250 a second is
#: above the target, so the batches stored a second measure what the workers keep up with, not what was offered
RATES = {"sqlite": 20.0, "postgresql": 25.0}


class Unavailable(RuntimeError):
    """A service the bench needs is missing."""


#: batches per ``store_many`` in the CPU split: a group the MQTT consumer commits at once under load
GROUP = 16


def cpu_split(target, n, records=RECORDS, group=GROUP):
    """CPU microseconds per batch of verify, decode and insert (``Storage.store_many`` in groups of ``group``:
    group commit on PostgreSQL, one transaction a batch on SQLite), for the storage ``target`` names."""
    plan = Plan(1, 10.0, records, 1.0)
    gw = SimGateway("bench-0000", plan, fleet=None)
    now = time.time()
    for i in range(n):
        gw.cut(now + i * 0.1)
    datas = [s.data for s in gw.backlog]
    trust = TrustStore({"keys": [gateway_key(plan.seed, gw.gw).jwk(gw.gw)]})
    public = next(iter(trust.keys.values()))

    def signature(data):  # the envelope and the signature only: what ``verify`` costs before the payload
        import cbor2
        msg = cbor2.loads(data)
        public.verify(msg.value[3], wire.sig_structure(msg.value[0], msg.value[2]))

    t0 = time.thread_time()
    for data in datas:
        signature(data)
    t1 = time.thread_time()
    batches = [(wire.verify(data, trust), content_digest(data)) for data in datas]
    t2 = time.thread_time()
    storage = open_storage(target)
    try:
        server = _server_pid(storage)
        s0 = proc_cpu_s(server) if server else None
        items = [(batch, digest, data) for data, (batch, digest) in zip(datas, batches)]
        t3 = time.thread_time()
        for i in range(0, n, group):
            storage.store_many(items[i:i + group], time.time())
        t4 = time.thread_time()
        s1 = proc_cpu_s(server) if server else None
    finally:
        storage.close()
    us = lambda dt: round(dt / n * 1e6, 1)  # noqa: E731
    out = {"verify_us": us(t1 - t0), "decode_us": us(t2 - t1 - (t1 - t0)), "insert_us": us(t4 - t3),
           "records_per_batch": records, "batches": n, "group": group}
    if server:
        out["insert_server_us"] = us(s1 - s0)
    return out


def _server_pid(storage):
    """The PostgreSQL server process of the storage's connection (None for SQLite)."""
    return storage.conn.info.backend_pid if storage.engine == "postgresql" else None


def _wait_line(path, text, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable("%s exited with %s (see %s)" % (proc.args[3], proc.returncode, path))
        with open(path, "rb") as f:
            if text in f.read():
                return
        time.sleep(0.05)
    raise Unavailable("no %r in %s within %.0f s" % (text.decode(), path, timeout))


def _count(storage):
    return storage.query("SELECT count(*) FROM batches")[0][0]


def ingest(target, workers, broker, workdir, gateways, rate, seconds, records=RECORDS, preseal=True):
    """One ingest run (see the module's docstring) against the storage ``target``; returns its figures.
    ``preseal``: the simulator seals every batch before the run (``fleet-sim --preseal``), so the cores carry
    only what the backend carries in production plus the simulator's sending."""
    name = "pg" if "://" in target else "sqlite"
    trust = os.path.join(workdir, "%s-jwks.json" % name)
    sim = [sys.executable, "-m", "gateway.cli", "fleet-sim", "--trust", trust, "--gateways", str(gateways),
           "--prefix", "bench-" + name]
    subprocess.run(sim + ["--enroll-only"], check=True, timeout=120, stdout=subprocess.DEVNULL)
    # Each engine's workers form their own group: a stopped worker's session keeps its shared subscription on
    # the broker (so that a restart gets redelivered what it had not acknowledged), and the broker goes on routing
    # that group's share of the batches into it (docs/backend.md, "Retiring a worker").
    procs, logs = [], []
    storage = open_storage(target)
    try:
        for i in range(workers):
            logs.append(os.path.join(workdir, "%s-worker%d.log" % (name, i)))
            with open(logs[-1], "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "gateway.cli", "receive", "--listen", "127.0.0.1:0", "--ops-listen", "off",
                     "--trust", trust, "--db", target, "--mqtt", broker.url + "/bench", "--mqtt-group", name,
                     "--mqtt-client-id", "bench-%s-%d" % (name, i), "--log-level", "error"],
                    stdout=log, stderr=subprocess.STDOUT))
        for proc, log in zip(procs, logs):
            _wait_line(log, b"consuming $share/", proc, 30)
        servers = [r[0] for r in storage.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")] \
            if name == "pg" else []
        watched = {"workers": [p.pid for p in procs], "broker": [broker.proc.pid], "postgresql": servers}
        acked_file = os.path.join(workdir, "%s-acked.csv" % name)
        cut = round(seconds / 3, 1)
        cpu0 = {k: sum(proc_cpu_s(p) for p in pids) for k, pids in watched.items()}
        with open(os.path.join(workdir, "%s-sim.json" % name), "wb") as out:
            simproc = subprocess.Popen(sim + ["--uplink", broker.url + "/bench", "--rate", str(rate), "--records",
                                              str(records), "--duration", str(seconds), "--cut-share", "0.2",
                                              "--cut-at", str(cut), "--cut-for", str(cut), "--drain", "60",
                                              "--acked", acked_file, "--json"] + (["--preseal"] if preseal else []),
                                       stdout=out)
            rss = [[] for _ in procs]
            running = False  # RSS is sampled from the first batch stored on (--preseal seals before the run)
            while simproc.poll() is None:
                running = running or _count(storage) > 0
                if running:
                    for samples, p in zip(rss, procs):
                        samples.append(proc_rss_mb(p.pid))
                time.sleep(1.0)
        with open(os.path.join(workdir, "%s-sim.json" % name)) as f:
            report = json.load(f)
        sim_cpu = report["cpu_s"]  # the simulator's own CPU over the run (with --preseal, the sealing was before)
        acked = read_acked(acked_file)
        deadline = time.monotonic() + 120
        while _count(storage) < len(acked) and time.monotonic() < deadline:
            time.sleep(0.2)
        cpu1 = {k: sum(proc_cpu_s(p) for p in pids) for k, pids in watched.items()}
        stored = {(gw, boot, seq): received for gw, boot, seq, received in
                  storage.query("SELECT gw, boot, seq, received FROM batches")}
        size = _database_bytes(storage)
    finally:
        storage.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    figures = _ingest_figures(report, acked, stored, workers, cpu0, cpu1, sim_cpu, rss, records)
    figures["database_bytes_per_record"] = round(size / (len(stored) * records), 1) if stored else None
    return figures


def _database_bytes(storage):
    """The bytes the database takes on disk: tables and indexes (PostgreSQL), the file's pages (SQLite)."""
    if storage.engine == "postgresql":
        return int(storage.query("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                                 "JOIN pg_namespace s ON s.oid = c.relnamespace "
                                 "WHERE s.nspname = 'public' AND c.relkind = 'r'")[0][0])
    return storage.query("PRAGMA page_count")[0][0] * storage.query("PRAGMA page_size")[0][0]


def _ingest_figures(report, acked, stored, workers, cpu0, cpu1, sim_cpu, rss, records):
    n = len(stored)
    times = sorted(stored.values())
    window = times[-1] - times[0] if n > 1 else None
    latency = sorted(stored[k] - v[2] for k, v in acked.items() if k in stored)
    per_batch = {k: round((cpu1[k] - cpu0[k]) / n * 1e6) for k in cpu0 if cpu0[k] or cpu1[k]} if n else {}
    per_batch["simulator"] = round(sim_cpu / n * 1e6) if n else None
    steady = [s[len(s) // 4:] for s in rss if len(s) >= 4]
    return {
        "workers": workers, "offered_batches_per_s": round(report["made"] / report["duration_s"]),
        "acked": report["acked"], "stored": n, "lost": len(set(acked) - set(stored)),
        "batches_per_s": round(n / window) if window else None,
        "records_per_s": round(n * records / window) if window else None,
        "batches_per_s_per_worker": round(n / window / workers) if window else None,
        "cpu_us_per_batch": per_batch,
        "publish_to_store_ms": {"p50": round(_pick(latency, 0.5) * 1000, 1),
                                "p99": round(_pick(latency, 0.99) * 1000, 1)} if latency else None,
        "storm": {k: report["outage"][k] for k in ("gateways", "backlog_at_reconnect", "drain_s")},
        "worker_rss_mb": [{"first": round(s[0], 1), "last": round(s[-1], 1), "max": round(max(s), 1)}
                          for s in steady],
        "simulator_lag_s": report["producer_lag_s"], "simulator_presealed": report["preseal"],
        "simulator_seal_cpu_s": report["seal_cpu_s"],
    }


def _pick(sorted_samples, q):
    return sorted_samples[min(len(sorted_samples) - 1, int(q * len(sorted_samples)))]


def run_backend_bench(quick=False, progress=None):
    say = progress or (lambda msg: None)
    try:
        from tests.support.mosquitto import Broker, have_mosquitto
        from tests.support.postgres import Cluster, have_postgres
    except ImportError as exc:
        return {"error": "bench --backend runs from a checkout with tests/support (%s)" % exc}
    if not have_mosquitto() or not have_postgres():
        return {"error": "bench --backend needs mosquitto and PostgreSQL's server (Debian mosquitto, postgresql)"}
    workdir = tempfile.mkdtemp(prefix="edge-gateway-bench-backend-", dir=os.environ.get("BENCH_DIR"))
    gateways, seconds = 50, (10 if quick else 30)
    results = {"quick": quick, "cores": os.cpu_count(), "records_per_batch": RECORDS,
               "offered": {engine: "%d gateways x %g batches/s x %d records, %d s" % (gateways, rate, RECORDS, seconds)
                           for engine, rate in RATES.items()}}
    cluster = broker = None
    try:
        say("backend: PostgreSQL and Mosquitto")
        cluster = Cluster().start()
        for engine, target, workers in (("sqlite", os.path.join(workdir, "rx.sqlite"), 1),
                                        ("postgresql", None, 3)):
            # Each ingest gets a broker of its own: the last engine's stopped workers keep their sessions and
            # shared subscription, and a shared broker would go on queueing every batch for them. The ingest
            # runs before the in-process split, so no vacuum of the split's rows runs beside it.
            say("backend: %s ingest, %d worker(s)" % (engine, workers))
            broker = Broker(os.path.join(workdir, "broker-" + engine)).start()
            results[engine] = {"ingest": ingest(target or cluster.database("ingest"), workers, broker, workdir,
                                                gateways, RATES[engine], seconds)}
            broker.stop()
            broker = None
            say("backend: %s CPU split" % engine)
            split_target = target + ".split" if target else cluster.database("split")
            results[engine]["cpu_split"] = cpu_split(split_target, 200 if quick else 1000)
    finally:
        if broker is not None:
            broker.stop()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results["figures"] = {"postgresql_batches_per_s": results["postgresql"]["ingest"]["batches_per_s"],
                          "postgresql_lost": results["postgresql"]["ingest"]["lost"],
                          "sqlite_lost": results["sqlite"]["ingest"]["lost"]}
    return results
