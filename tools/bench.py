"""``edge-gateway bench [--json] [--quick]``: the fixed, seeded benchmark suite (``docs/performance.md``).

Each figure is measured several times and reported as the median, with the individual runs beside it. Hot-path
figures run in this process on one core; footprint figures (RSS, idle CPU, start-up) are measured on the real agent
process from outside, through ``/proc``. The physical ceilings of the machine are measured in the same run, so the
pipeline can be read as a fraction of them. Targets are in ``TARGETS`` and in the document, never asserted here.
"""

import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import timeit

import cbor2

from gateway.adapters import keys
from gateway.app.config import BatchSection
from gateway.core import senml, wire
from gateway.core.clock import FakeClock
from gateway.core.model import EncodedBatch, Event, Reading
from gateway.core.pipeline import Pipeline
from gateway.adapters.store import Store
from tools.bench_processes import (_p99, bench_drain, bench_idle_cpu, bench_latency, bench_metrics_scrape, bench_rss,
                                   bench_startup)
from tools.bench_wire import bench_compress_cpu, bench_socket_bytes, bench_wire_bytes

TARGETS = {
    "pipeline_readings_per_s": (">=", 100_000), "wire_bytes_per_reading": ("<=", 10),
    "socket_bytes_per_reading": ("<=", 4), "socket_bytes_per_reading_200x2": ("<=", 6),
    "rss_mb_200_sensors": ("<=", 40), "idle_cpu_percent": ("<=", 0.5), "startup_s": ("<=", 1.0),
    "drain_readings_per_s": (">=", 20_000), "disk_to_wire_ratio": ("<=", 2.0),
    "alarm_latency_ms_p99": ("<=", 1000), "swinging_door_ratio": (">=", 20),
    "bthome_adverts_per_s": (">=", 200_000), "nmea_sentences_per_s": (">=", 100_000),
    "rule_evals_per_s": (">=", 500_000), "latency_p50_s": ("<=", 0.5), "latency_max_s": ("<=", 2.0),
    # --sections e2e / curves (tools/bench_e2e.py): the agent process as users run it
    "e2e_latency_p50_s": ("<=", 0.5), "e2e_latency_max_s": ("<=", 2.0), "e2e_lost": ("<=", 0),
    "e2e_duplicates": ("<=", 0), "e2e_cpu_s_per_1k_at_1000": ("<=", 0.08),
    "e2e_socket_bytes_per_reading_100_plus": ("<=", 6), "e2e_socket_bytes_per_reading_200x2": ("<=", 6),
    "rss_mb_1000_sensors": ("<=", 40),
    "metrics_scrape_cpu_ms": ("<=", 1.0),
}
SECTIONS = ("core", "e2e", "curves", "ble")
LATENCY_RATES = (20, 100, 1000)  # readings/s: the delivery latency figures are the worst of these
GW = "gw-bench"
BTHOME_ADVERT = bytes.fromhex("400009015d025d0903b718")  # packet id, battery, temperature, humidity (bthome-ble test)


def _median(samples):
    return statistics.median(samples)


def _repeat(fn, n):
    return [fn() for _ in range(n)]


def _write_bytes():
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# -- hot path, in process ---------------------------------------------------------------------------------------
def bench_bthome(n):
    from drivers.ble import bthome
    decode = bthome.decode
    data = BTHOME_ADVERT

    def run():
        t = timeit.timeit(lambda: decode(data), number=n)
        return n / t
    return run


def bench_nmea(n):
    from drivers.serial.nmea import NmeaReader, with_checksum
    gga = with_checksum(b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    rmc = with_checksum(b"GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W")
    stream = (gga + rmc) * (n // 2)
    chunks = [stream[i:i + 512] for i in range(0, len(stream), 512)]

    def run():
        reader = NmeaReader()
        start = time.perf_counter()
        count = 0
        for chunk in chunks:
            count += len(reader.feed(chunk))
        return count / (time.perf_counter() - start)
    return run


def _rules():
    from gateway.core.rules import RuleEngine
    return RuleEngine([{"match": {"name": "temp"}, "low": 2.0, "high": 8.0, "hysteresis": 0.3, "deadband": 0.05}],
                      event_factory=Event)


def bench_rules(n):
    rng = random.Random(2)
    readings = [Reading("s%d" % (i % 50), "temp", round(5.0 + rng.uniform(-4, 4), 2), "Cel", float(i))
                for i in range(n)]

    def run():
        engine = _rules()
        process = engine.process
        start = time.perf_counter()
        for r in readings:
            process(r)
        return n / (time.perf_counter() - start)
    return run


def bench_swinging_door():
    from firmware_sim.fridge import samples
    from gateway.core.rules import RuleEngine
    engine = RuleEngine([{"match": {"name": "temp"}, "swinging_door": 0.1}], event_factory=Event)
    n = kept = 0
    for t, v in samples(seed=1, seconds=86400):
        n += 1
        kept += len(engine.process(Reading("fridge", "temp", v, "Cel", t, 0.01)).send)
    kept += len(engine.flush().send)
    return n / kept


def bench_pipeline(n_adverts, workdir):
    """decode -> the agent's Pipeline (bad values, rules, batcher, SenML, sign) -> commit, batches of 1000 readings,
    one core."""
    from drivers.ble import bthome
    key = keys.SigningKey.from_seed(bytes(range(32)))
    signer = wire.Signer(key)
    rng = random.Random(3)
    adverts = []
    for i in range(n_adverts):
        temp = int((4.0 + rng.uniform(-1, 1)) * 100)
        adverts.append(bytes([0x40, 0x00, i & 0xFF, 0x01, 80, 0x02]) + temp.to_bytes(2, "little", signed=True)
                       + bytes([0x03]) + (5500 + i % 300).to_bytes(2, "little"))

    def run():
        path = os.path.join(workdir, "pipe-%d.sqlite" % random.random().__hash__())
        store = Store(path, max_bytes=1 << 30)
        # The agent's own pipeline (gateway.core.pipeline), on a clock whose wire offset is 0: readings are
        # stamped on the wire's scale already. Batches are committed one by one, as the slowest agent would.
        pipeline = Pipeline(gw=GW, boot=1, signer=signer, clock=FakeClock(mono=0.0, wall=0.0), rules=_rules(),
                            batch=BatchSection(max_readings=1000, max_age_s=1e9, linger_s=1e9, hold_s=1e9,
                                               time_quantum_s=1.0))
        accepted = 0
        wb0 = _write_bytes()
        wire_bytes = 0
        start = time.perf_counter()
        for i, adv in enumerate(adverts):
            sensor = "a4:c1:38:00:%02x:%02x" % (i % 200 // 256, i % 200)
            t = 1_767_225_600 + i / 200
            for m in bthome.decode(adv):
                if m.name == "packet_id":
                    continue
                for batch in pipeline.accept(Reading(sensor, m.name, m.value, m.unit, t, m.resolution), t):
                    store.put(batch)
                    accepted += batch.readings
                    wire_bytes += len(batch.data)
        elapsed = time.perf_counter() - start
        fsyncs = store.fsyncs
        store.close()
        wb1 = _write_bytes()
        os.unlink(path)
        return {"readings_per_s": accepted / elapsed, "accepted": accepted, "fsyncs": fsyncs,
                "disk_bytes": (wb1 - wb0) if wb0 is not None and wb1 is not None else None, "wire_bytes": wire_bytes}
    return run


def bench_store_cycle(workdir, batches=200, readings=1000):
    """Bytes written and fsyncs per accepted reading for the full life of a batch: commit, ack, checkpoint."""
    key = keys.SigningKey.from_seed(bytes(range(32)))
    signer = wire.Signer(key)
    datas = []
    for b in range(batches):
        rs = [Reading("s%d" % (i % 20), "temp", round(4 + (i % 37) / 100, 2), "Cel", 1.7e9 + b * 10 + i / 100, 0.01)
              for i in range(readings)]
        datas.append(signer(wire.encode_payload(GW, 1, b, True, senml.encode_records(rs, (), GW + "/"))))
    path = os.path.join(workdir, "cycle-%d.sqlite" % readings)
    store = Store(path, max_bytes=1 << 30)
    wb0 = _write_bytes()
    for b, data in enumerate(datas):
        sid = store.put(EncodedBatch(1, b, data, 0, readings, 0, 0.0))
        store.ack([sid])
    store.close()
    wb1 = _write_bytes()
    wire_bytes = sum(map(len, datas))
    # No bytes written at all means the directory is not on a block device (tmpfs): say so instead of 0.
    written = (wb1 - wb0) if wb0 is not None and wb1 is not None and wb1 > wb0 else None
    return {"fsyncs_per_1k_readings": store.fsyncs / (batches * readings / 1000),
            "disk_bytes_per_reading": written / (batches * readings) if written else None,
            "wire_bytes_per_reading": wire_bytes / (batches * readings),
            "disk_to_wire_ratio": written / wire_bytes if written else None}


def bench_ceilings(workdir):
    key = keys.SigningKey.from_seed(bytes(range(32)))
    payload = os.urandom(1024)
    n = 3000
    signs = n / timeit.timeit(lambda: key.sign(payload), number=n)
    records = [{6: i, 2: 4.25} for i in range(1000)]
    t = timeit.timeit(lambda: cbor2.dumps(records, canonical=True), number=50)
    cbor_rate = 50 * 1000 / t
    db = sqlite3.connect(os.path.join(workdir, "ceiling.sqlite"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (x BLOB)")
    blob = os.urandom(10_000)
    commits = 200
    start = time.perf_counter()
    for _ in range(commits):
        db.execute("INSERT INTO t VALUES (?)", (blob,))
    commit_rate = commits / (time.perf_counter() - start)
    db.close()
    return {"ed25519_signs_per_s": round(signs), "cbor2_records_per_s": round(cbor_rate),
            "sqlite_full_commits_per_s": round(commit_rate)}


def run_bench(quick=False, progress=None, sections=("core",), plots=None, backlog_max=10 ** 6):
    """Run ``sections`` (``SECTIONS``: ``core`` is the suite above; ``e2e``, ``curves`` and ``ble`` measure the
    agent process end to end, tools/bench_e2e.py). ``plots``: a directory for the curves as SVG images."""
    from tools import bench_e2e
    say = progress or (lambda msg: None)
    reps = 3 if quick else 5
    workdir = tempfile.mkdtemp(prefix="edge-gateway-bench-", dir=os.environ.get("BENCH_DIR"))
    results = {"quick": quick, "python": sys.version.split()[0], "cores": os.cpu_count(), "repeats": reps}
    runs = {}
    try:
        if "core" in sections:
            _bench_in_process(results, runs, quick, reps, workdir, say)
            _bench_processes(results, runs, quick, reps, workdir, say)
        if "e2e" in sections:
            bench_e2e.e2e_section(results, runs, quick, workdir, say, plots)
        if "curves" in sections:
            bench_e2e.curves_section(results, runs, quick, workdir, say, plots, backlog_max)
        if "ble" in sections:
            bench_e2e.ble_section(results, runs, quick, workdir, say)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["runs"] = runs
    measured = [k for k in TARGETS if k in results]  # the targets of the sections that ran
    results["targets"] = {k: "%s %s" % TARGETS[k] for k in measured}
    results["met"] = {k: _met(results.get(k), *TARGETS[k]) for k in measured}
    return results


def _bench_in_process(results, runs, quick, reps, workdir, say):
    """The hot path and the machine's ceilings, in this process: figures into ``results``, each run into ``runs``."""
    say("wire bytes")
    wb = bench_wire_bytes()
    results["wire_bytes_per_reading"] = wb["fridge_0.01C"]
    runs["wire_bytes_per_reading"] = wb
    say("bytes on the socket")
    sb = bench_socket_bytes(10 if quick else 30)
    results["socket_bytes_per_reading"] = sb["single"]
    results["socket_bytes_per_reading_200x2"] = sb["200x2"]
    runs["socket_bytes"] = sb
    runs["compress_cpu"] = {k: round(v, 6) for k, v in bench_compress_cpu(50 if quick else 200).items()}
    say("decoders and rules")
    for name, fn in (("bthome_adverts_per_s", bench_bthome(20_000 if quick else 100_000)),
                     ("nmea_sentences_per_s", bench_nmea(20_000 if quick else 100_000)),
                     ("rule_evals_per_s", bench_rules(50_000 if quick else 200_000))):
        samples = _repeat(fn, reps)
        results[name] = round(_median(samples))
        runs[name] = [round(s) for s in samples]
    say("swinging door")
    results["swinging_door_ratio"] = round(bench_swinging_door(), 1)
    say("pipeline")
    pipe = _repeat(bench_pipeline(20_000 if quick else 60_000, workdir), reps)
    results["pipeline_readings_per_s"] = round(_median([p["readings_per_s"] for p in pipe]))
    runs["pipeline_readings_per_s"] = [round(p["readings_per_s"]) for p in pipe]
    say("store cycle")
    cycle = bench_store_cycle(workdir, 50 if quick else 200)
    big = bench_store_cycle(workdir, 15 if quick else 50, readings=4000)
    runs["disk_to_wire_ratio_4000_reading_batches"] = round(big["disk_to_wire_ratio"], 2) \
        if big["disk_to_wire_ratio"] is not None else None
    results["fsyncs_per_1k_readings"] = round(cycle["fsyncs_per_1k_readings"], 2)
    if cycle["disk_bytes_per_reading"] is not None:
        results["disk_bytes_per_reading"] = round(cycle["disk_bytes_per_reading"], 2)
        results["disk_to_wire_ratio"] = round(cycle["disk_to_wire_ratio"], 2)
    runs["store_cycle"] = {k: round(v, 3) for k, v in cycle.items() if v is not None}
    say("ceilings")
    results["ceilings"] = bench_ceilings(workdir)


def _bench_processes(results, runs, quick, reps, workdir, say):
    """The figures of the real agent and receiver processes (``tools.bench_processes``)."""
    say("start-up")
    startups = [s for s in (bench_startup(workdir, i) for i in range(reps)) if s is not None]
    results["startup_s"] = round(_median(startups), 3) if startups else None
    runs["startup_s"] = [round(s, 3) for s in startups]
    say("drain")
    drains = [bench_drain(workdir, 20_000 if quick else 100_000, i) for i in range(2 if quick else 3)]
    results["drain_readings_per_s"] = round(_median(drains))
    runs["drain_readings_per_s"] = [round(d) for d in drains]
    say("alarm latency")
    lat = bench_drain(workdir, 50_000 if quick else 100_000, 0, alarms=10 if quick else 20)
    results["alarm_latency_ms_p99"] = round(_p99(lat), 1) if lat else None
    runs["alarm_latency_ms"] = [round(x, 1) for x in lat]
    say("delivery latency")
    lats = [bench_latency(workdir, rate, 2.0 if quick else 8.0, "r%d" % rate) for rate in LATENCY_RATES]
    results["latency_p50_s"] = round(max(x["p50_s"] for x in lats), 3)
    results["latency_max_s"] = round(max(x["max_s"] for x in lats), 3)
    runs["latency"] = [{k: round(v, 3) if isinstance(v, float) else v for k, v in x.items()} for x in lats]
    say("RSS with 200 sensors")
    rss, accepted = bench_rss(workdir, 8 if quick else 30)
    results["rss_mb_200_sensors"] = round(rss, 1)
    runs["rss_accepted_readings"] = accepted
    say("idle CPU")
    results["idle_cpu_percent"] = round(bench_idle_cpu(workdir, 8 if quick else 60), 3)
    say("metrics scrape")
    scrape = bench_metrics_scrape(workdir, 300 if quick else 1000)
    results["metrics_scrape_cpu_ms"] = round(scrape["cpu_ms"], 3)
    runs["metrics_scrape"] = {"cpu_ms": [round(x, 3) for x in scrape["runs_ms"]], "bytes": scrape["bytes"]}


def _met(value, op, target):
    if value is None:
        return None
    return value >= target if op == ">=" else value <= target


def register(sub):
    p = sub.add_parser("bench", help="run the benchmark suite (docs/performance.md)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="a shorter run (the core suite in under 60 s)")
    p.add_argument("--sections", default="core", metavar="LIST",
                   help="comma-separated, of: %s, or all (default core). e2e: the agent process fed over a pty, "
                        "through Mosquitto and HTTP to a receiver, at 1 to 4,000 readings/s; curves: RSS and CPU "
                        "against sensors, start-up, disk and drain against backlog; ble: adverts through bleak "
                        "and D-Bus (mocked BlueZ)" % ", ".join(SECTIONS))
    p.add_argument("--plots", metavar="DIR", help="write the e2e and curves figures as SVG plots into DIR")
    p.add_argument("--backlog-max", type=int, default=10 ** 6, metavar="N",
                   help="largest backlog of the curves, in readings (default 1e6; 1e7 takes several minutes)")
    p.add_argument("--backend", action="store_true", help="only the backend at fleet scale: SQLite and PostgreSQL "
                   "ingest through Mosquitto from the fleet simulator (tools/bench_backend.py; %s)"
                   % "needs mosquitto and postgresql")
    p.set_defaults(func=_cmd)


def _cmd(args):
    # progress goes to stderr with --json too (stdout stays one JSON object): a long run shows it is alive
    def progress(msg):
        print("... " + msg, file=sys.stderr, flush=True)
    if args.backend:
        return _cmd_backend(args, progress)
    sections = SECTIONS if args.sections == "all" else tuple(x.strip() for x in args.sections.split(",") if x)
    unknown = [x for x in sections if x not in SECTIONS]
    if unknown or not sections:
        print("edge-gateway bench: unknown section %s (choose from %s, or all)" % (
            ", ".join(unknown) or "''", ", ".join(SECTIONS)), file=sys.stderr)
        return 2
    if args.plots:
        os.makedirs(args.plots, exist_ok=True)
    results = run_bench(args.quick, progress, sections, args.plots, args.backlog_max)
    if args.json:
        print(json.dumps(results, sort_keys=True))
    else:
        for key in sorted(k for k in results if k not in ("runs", "targets", "met")):
            flag = results["met"].get(key)
            mark = "" if flag is None else ("  ok" if flag else "  MISSED (target %s)" % results["targets"][key])
            print("%-26s %s%s" % (key, results[key], mark))
    return 0


def _cmd_backend(args, progress):
    from tools.bench_backend import TARGETS as BACKEND_TARGETS, run_backend_bench
    results = run_backend_bench(args.quick, progress)
    if "error" in results:
        print("edge-gateway: %s" % results["error"], file=sys.stderr)
        return 2
    results["targets"] = {k: "%s %s" % v for k, v in BACKEND_TARGETS.items()}
    results["met"] = {k: _met(results["figures"][k], *BACKEND_TARGETS[k]) for k in BACKEND_TARGETS}
    if args.json:
        print(json.dumps(results, sort_keys=True))
        return 0
    for engine in ("sqlite", "postgresql"):
        print("%s: cpu split %s" % (engine, json.dumps(results[engine]["cpu_split"], sort_keys=True)))
        print("%s: ingest %s" % (engine, json.dumps(results[engine]["ingest"], sort_keys=True)))
    for key, flag in sorted(results["met"].items()):
        print("%-26s %s%s" % (key, results["figures"][key], "" if flag is None else (
            "  ok" if flag else "  MISSED (target %s)" % results["targets"][key])))
    return 0
