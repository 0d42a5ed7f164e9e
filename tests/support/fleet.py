"""The fleet tests' rig (tests/system/test_fleet_*.py): ``edge-gateway receive`` workers on one MQTT shared
subscription into one PostgreSQL, and the exactly-once check of what the fleet simulator had acknowledged.
"""

import contextlib
import json
import os
import subprocess

from tests.support import reserve_port, wait_until
from tests.support.faults import BIN, Receiver
from tools.fleet_sim import read_acked


def enrolled(tmp_path, gateways, seed, boot):
    """``(trust file, fleet-sim arguments)``: the simulated gateways' keys enrolled in ``tmp_path/jwks.json``; the
    arguments (without ``BIN``) name the same gateways, seed and boot epoch for the run."""
    trust = str(tmp_path / "jwks.json")
    sim_args = ["fleet-sim", "--trust", trust, "--gateways", str(gateways), "--seed", str(seed), "--boot", str(boot)]
    subprocess.run([BIN] + sim_args + ["--enroll-only"], check=True, timeout=60, stdout=subprocess.DEVNULL)
    return trust, sim_args


@contextlib.contextmanager
def fleet_run(tmp_path, sim_args, broker, rate, records, seconds, *extra):
    """``edge-gateway fleet-sim`` (``sim_args`` from ``enrolled``) over ``broker`` for ``seconds`` at ``rate``
    batches a second of ``records`` readings each, ``extra`` arguments added; its report goes to
    ``tmp_path/sim.json``, its acknowledged batches to ``tmp_path/acked.csv``. Yields the process; one still running
    when the block ends is killed. ``sim_results`` reads what it wrote."""
    with open(tmp_path / "sim.json", "wb") as out, open(tmp_path / "sim.err", "wb") as err:
        sim = subprocess.Popen([BIN] + sim_args + [
            "--uplink", broker.url + "/edge", "--rate", str(rate), "--records", str(records), "--duration",
            str(seconds), *extra, "--drain", "30", "--acked", str(tmp_path / "acked.csv"), "--json"],
            stdout=out, stderr=err)
        try:
            yield sim
        finally:
            if sim.poll() is None:
                sim.kill()
                sim.wait(10)


def sim_finished(sim, tmp_path, timeout):
    """Wait for ``fleet_run``'s simulator to exit 0 (its stderr's tail on failure)."""
    assert sim.wait(timeout) == 0, (tmp_path / "sim.err").read_text()[-2000:]


def sim_results(tmp_path):
    """``(report, acked)`` of a ``fleet_run``: the simulator's JSON report and its acknowledged batches."""
    return json.loads((tmp_path / "sim.json").read_text()), read_acked(str(tmp_path / "acked.csv"))


def consuming(worker, starts):
    """Whether ``worker`` has subscribed ``starts`` times (its log's start-up line, once per start)."""
    with open(worker.log_path, "rb") as f:
        return f.read().count(b"consuming $share/") >= starts


def start_workers(tmp_path, trust, broker, pg_url, n, group, client_prefix):
    """``n`` workers (client ids ``<client_prefix>-<i>``, each in ``tmp_path/w<i>``), started and subscribed."""
    workers = []
    for i in range(n):
        os.makedirs(tmp_path / ("w%d" % i))
        workers.append(Receiver(str(tmp_path / ("w%d" % i)), trust, reserve_port(), mqtt=broker.url + "/edge",
                                group=group, db=pg_url, client_id="%s-%d" % (client_prefix, i)).start())
    for w in workers:
        wait_until(lambda: consuming(w, 1), 20, "worker %s subscribed" % w.args[-1])
    return workers


def final_stats(worker):
    """The counters a stopped worker printed last (one JSON line)."""
    with open(worker.log_path) as f:
        return [json.loads(line) for line in f if line.startswith("{")][-1]


def stored(pg_url, boot, at_least, timeout=60):
    """``(batches, rows)`` of boot epoch ``boot``: ``{(gw, boot, seq): records}`` from the ``batches`` rows and
    from counting ``records``, once PostgreSQL holds at least ``at_least`` of its batches."""
    import psycopg
    with psycopg.connect(pg_url, autocommit=True) as conn:
        def count():
            return conn.execute("SELECT count(*) FROM batches WHERE boot = %s", (boot,)).fetchone()[0]
        wait_until(lambda: count() >= at_least, timeout, "PostgreSQL holding every acknowledged batch")
        batches = {(gw, b, seq): n for gw, b, seq, n in conn.execute(
            "SELECT gw, boot, seq, records FROM batches WHERE boot = %s", (boot,))}
        rows = {(gw, b, seq): n for gw, b, seq, n in conn.execute(
            "SELECT gw, boot, seq, count(*) FROM records WHERE boot = %s GROUP BY gw, boot, seq", (boot,))}
    return batches, rows


def assert_exactly_once(acked, batches, rows):
    """Every acknowledged batch (``tools.fleet_sim.read_acked``) is stored, with exactly its records, once."""
    missing = sorted(set(acked) - set(batches))
    assert missing == [], "%d acknowledged batches not in PostgreSQL, e.g. %s" % (len(missing), missing[:5])
    wrong = [k for k, (n, *_times) in acked.items() if batches[k] != n or rows.get(k) != n]
    assert wrong == [], "batches whose records are not there exactly once: %s" % wrong[:5]
