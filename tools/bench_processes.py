"""The benchmarks that need processes: the real agent process measured from outside (start-up, RSS, idle CPU,
through ``/proc``), and the real agent draining a backlog to a receiver process (throughput, alarm latency).
Part of ``edge-gateway bench`` (``tools/bench.py``)."""

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time

from gateway.adapters import keys
from gateway.adapters.store import Store
from gateway.core import senml, wire
from gateway.core.model import EncodedBatch, Event, Reading

GW = "gw-bench"


def proc_rss_mb(pid):
    """A process's resident set (MB), from ``/proc``."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return None


def proc_cpu_s(pid):
    """A process's CPU time so far (user + system, seconds), from ``/proc``."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def queue_readings(state_dir, timeout=0.05):
    """Readings in the batches of the agent's queue in ``state_dir`` (read-only, from outside; 0 while there is none
    or it is locked)."""
    path = os.path.join(state_dir, "queue.sqlite")
    if not os.path.exists(path):
        return 0
    try:
        db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=timeout)
        try:
            return db.execute("SELECT COALESCE(SUM(readings), 0) FROM batches").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


# -- the real agent process, measured from outside -----------------------------------------------------------
class AgentProcess:
    """``edge-gateway run`` on a line-protocol board over a pty, with its own state dir and config."""

    def __init__(self, workdir, sensors, rate, uplink, name, extra=""):
        from tools.sim.harness import PtyNode
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        key = keys.SigningKey.generate()
        keys.write_private(os.path.join(self.dir, "key.pem"), key)
        self.jwks = {"keys": [key.jwk(GW)]}
        self.node = PtyNode("line_node", ["--sensors", sensors, "--rate", rate], link=os.path.join(self.dir, "tty"))
        self.config = os.path.join(self.dir, "config.toml")
        with open(self.config, "w") as f:
            f.write('[gateway]\nid = "%s"\nstate_dir = "%s"\nlog_level = "warning"\n[batch]\nmax_age_s = 10\n'
                    '[uplink]\nurl = "%s"\nbackoff_max_s = 5\n[clock]\nmode = "synced"\n'
                    '[[sources]]\ntype = "serial"\nname = "board"\nport = "%s"\nbaud = 115200\n'
                    'units = {temp = "Cel", hum = "%%RH"}\n%s' % (GW, self.dir, uplink, self.node.path, extra))
        self.proc = None
        self.started = None

    def start(self):
        self.node.start()
        time.sleep(0.3)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", self.config],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def rss_mb(self):
        return proc_rss_mb(self.proc.pid)

    def cpu_s(self):
        return proc_cpu_s(self.proc.pid)

    def accepted(self):
        return queue_readings(self.dir)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.node.stop()


DEAD_UPLINK = "http://127.0.0.1:9/v1/batches"  # discard port: refused at once, so the queue keeps everything


def bench_startup(workdir, i):
    agent = AgentProcess(workdir, 3, 5, DEAD_UPLINK, "startup%d" % i).start()
    try:
        deadline = time.perf_counter() + 15
        while time.perf_counter() < deadline:
            if agent.accepted() > 0:
                return time.perf_counter() - agent.started
            time.sleep(0.01)
        return None
    finally:
        agent.stop()


def bench_rss(workdir, settle):
    agent = AgentProcess(workdir, 200, 1, DEAD_UPLINK, "rss").start()
    try:
        time.sleep(settle)
        samples = []
        for _ in range(5):
            samples.append(agent.rss_mb())
            time.sleep(0.5)
        return max(samples), agent.accepted()
    finally:
        agent.stop()


def bench_idle_cpu(workdir, window):
    agent = AgentProcess(workdir, 50, 1 / 60.0, DEAD_UPLINK, "idle").start()
    try:
        time.sleep(3.0)
        c0, t0 = agent.cpu_s(), time.perf_counter()
        time.sleep(window)
        c1, t1 = agent.cpu_s(), time.perf_counter()
        return 100.0 * (c1 - c0) / (t1 - t0)
    finally:
        agent.stop()


def bench_metrics_scrape(workdir, scrapes, rounds=3):
    """Agent CPU per scrape of ``GET /metrics`` (the real ``edge-gateway run``, 20 readings/s, uplink down so the
    queue grows): its CPU over a window with ``scrapes`` scrapes spread evenly, minus its CPU over an equal window
    without, per scrape; the median of ``rounds`` such pairs. /proc's CPU ticks are 10 ms, hence many scrapes."""
    import socket
    import urllib.request
    with socket.socket() as s:  # a free port: bound, read back, released (the agent binds it a moment later)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = AgentProcess(workdir, 20, 1, DEAD_UPLINK, "metrics",
                         '[metrics]\nlisten = "127.0.0.1:%d"\n' % port).start()
    url = "http://127.0.0.1:%d/metrics" % port

    def scrape():
        with urllib.request.urlopen(url, timeout=5) as resp:
            return len(resp.read())
    try:
        deadline = time.perf_counter() + 15
        while True:
            try:
                size = scrape()
                break
            except OSError:
                if time.perf_counter() > deadline or agent.proc.poll() is not None:
                    raise
                time.sleep(0.05)
        time.sleep(2.0)  # start-up done
        window = scrapes / 100.0  # 100 scrapes a second
        per_scrape = []
        for _ in range(rounds):
            c0, t0 = agent.cpu_s(), time.perf_counter()
            time.sleep(window)
            idle = (agent.cpu_s() - c0) / (time.perf_counter() - t0)
            c0, t0 = agent.cpu_s(), time.perf_counter()
            for i in range(scrapes):
                scrape()
                time.sleep(max(0.0, t0 + (i + 1) / 100.0 - time.perf_counter()))
            busy = agent.cpu_s() - c0 - idle * (time.perf_counter() - t0)
            per_scrape.append(1000.0 * busy / scrapes)
        return {"cpu_ms": sorted(per_scrape)[len(per_scrape) // 2], "runs_ms": per_scrape, "bytes": size}
    finally:
        agent.stop()


def _receiver_process(workdir, jwks, name, extra=()):
    """A real ``edge-gateway receive`` (SQLite) on a free loopback port, trusting ``jwks``; ``extra``: more
    arguments (``--mqtt URL``). Returns the process, its batches URL and its database path."""
    path = os.path.join(workdir, name)
    os.makedirs(path)
    keys.write_jwks(os.path.join(path, "jwks.json"), jwks)
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "receive", "--listen", "127.0.0.1:%d" % port,
                             "--trust", os.path.join(path, "jwks.json"), "--db", os.path.join(path, "rx.sqlite"),
                             "--log-level", "error"] + list(extra), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc.stdout.readline()  # "receiving on ..." once it listens
    return proc, "http://127.0.0.1:%d/v1/batches" % port, os.path.join(path, "rx.sqlite")


def _backlog(store, key, boot, batches, per_batch):
    signer = wire.Signer(key)
    out = []
    for b in range(batches):
        rs = [Reading("s%d" % (i % 50), "temp", round(4 + (i % 37) / 100, 2), "Cel", 1.7e9 + b * 20 + i / 50, 0.01)
              for i in range(per_batch)]
        out.append(EncodedBatch(boot, b, signer(wire.encode_payload(GW, boot, b, True, senml.encode_records(
            rs, (), GW + "/"))), 0, per_batch, 0, 0.0))
    store.put_many(out)


def bench_drain(workdir, readings, i, alarms=0):
    """Drain a backlog to a real receiver process; optionally raise alarms meanwhile and time them."""
    from gateway.app.agent import Agent
    from gateway.core.clock import SystemClock
    from gateway.adapters.uplink.http import HttpUplink
    key = keys.SigningKey.generate()
    rx, url, rx_db = _receiver_process(workdir, {"keys": [key.jwk(GW)]}, "rx%d-%d" % (alarms, i))
    try:
        store = Store(os.path.join(workdir, "drain%d-%d.sqlite" % (alarms, i)), max_bytes=1 << 30)
        _backlog(store, key, store.next_boot(), readings // 1000, 1000)  # an earlier boot's backlog
        clock = SystemClock("synced")
        agent = Agent(gw=GW, key=key, store=store, uplink=HttpUplink(url), clock=clock, backoff=(0.05, 1.0))
        emitted = {}

        async def main():
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            start = time.perf_counter()
            for k in range(alarms):
                await asyncio.sleep(0.15)
                emitted[k] = time.time()
                agent.emit(Event("fridge-%d" % k, "alarm.high", "raised", "bench alarm %d" % k, clock.monotonic(),
                                 alarm=True))
            while agent.depth()[0] and time.perf_counter() - start < 120:
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - start
            stop.set()
            await task
            return elapsed
        elapsed = asyncio.run(main())
        store.close()
    finally:
        rx.send_signal(signal.SIGTERM)
        rx.wait(10)
    if not alarms:
        return readings / elapsed
    db = sqlite3.connect(rx_db)
    got = db.execute("SELECT r.vs, b.received FROM records r JOIN batches b USING (gw, boot, seq) "
                     "WHERE r.vs LIKE 'raised: bench alarm %'").fetchall()
    db.close()
    return sorted(1000 * (received - emitted[int(vs.rsplit(" ", 1)[1])]) for vs, received in got)


def _p99(samples):
    if not samples:
        return None
    return samples[min(len(samples) - 1, int(round(0.99 * (len(samples) - 1))))]


# -- delivery latency (issue 21) ------------------------------------------------------------------------------
def bench_latency(workdir, rate, seconds, name, batch=None, sync_interval=None, deliver_first=None):
    """Readings fed at ``rate`` per second for ``seconds`` into the agent (in process, real clock, HTTP uplink) and
    delivered to a real ``edge-gateway receive`` process on loopback. Latency: from a reading's arrival (its
    ``emit``) to the receiver's commit of its batch (the ``received`` column). ``batch``/``sync_interval``: the
    settings (default: the config defaults; the old behaviour is linger = hold = max_age and sync_interval 0).
    Returns p50/max latency in s, readings per batch, wire bytes per reading, fsyncs per 1,000 readings."""
    from gateway.adapters.uplink.http import HttpUplink
    from gateway.app.agent import Agent
    from gateway.app.config import BatchSection, StoreSection
    from gateway.core.clock import SystemClock
    key = keys.SigningKey.generate()
    rx, url, rx_db = _receiver_process(workdir, {"keys": [key.jwk(GW)]}, "lat-" + name)
    batch = batch or BatchSection()
    sync_interval = StoreSection().sync_interval_s if sync_interval is None else sync_interval
    deliver_first = StoreSection().deliver_first if deliver_first is None else deliver_first
    arrived = []
    sent = []
    try:
        clock = SystemClock("synced")
        store = Store(os.path.join(workdir, "lat-%s.sqlite" % name), max_bytes=1 << 30, clock=clock,
                      sync_interval=sync_interval)
        agent = Agent(gw=GW, key=key, store=store, uplink=HttpUplink(url), clock=clock, batch=batch,
                      health_interval=1e9, on_sent=lambda b: sent.append((b.readings, len(b.data))),
                      deliver_first=deliver_first)

        async def main():
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            await asyncio.sleep(0.3)  # let the first-reading cut and start-up settle out of the figures
            fsyncs0 = store.fsyncs
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < seconds:
                due = int((time.monotonic() - start) * rate) + 1
                while n < due:
                    arrived.append(time.time())
                    agent.emit(Reading("s%d" % (n % 20), "v", n, None, clock.monotonic()))
                    n += 1
                await asyncio.sleep(min(0.005, 1.0 / rate))
            deadline = time.monotonic() + 15
            while agent.counters["readings_sent"] < n and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            fsyncs = store.fsyncs - fsyncs0
            stop.set()
            await task
            return fsyncs
        fsyncs = asyncio.run(main())
        store.close()
    finally:
        rx.send_signal(signal.SIGTERM)
        rx.wait(10)
    return _latency_figures(rx_db, rate, arrived, sent, fsyncs, agent.counters)


def _latency_figures(rx_db, rate, arrived, sent, fsyncs, counters):
    """``bench_latency``'s figures, from the receiver's database and what the agent sent."""
    db = sqlite3.connect(rx_db)
    rows = db.execute("SELECT r.v, b.received FROM records r JOIN batches b USING (gw, boot, seq) "
                      "WHERE r.n LIKE ? AND b.boot = (SELECT MAX(boot) FROM batches)", (GW + "/s%",)).fetchall()
    db.close()
    lat = sorted(received - arrived[int(v)] for v, received in rows if v is not None and int(v) < len(arrived))
    readings = sum(r for r, _ in sent) or 1
    return {"rate": rate, "readings": len(arrived), "delivered": len(lat),
            "p50_s": lat[len(lat) // 2] if lat else None, "max_s": lat[-1] if lat else None,
            "readings_per_batch": readings / max(1, len(sent)),
            "wire_bytes_per_reading": sum(b for _, b in sent) / readings,
            "fsyncs_per_1k_readings": 1000.0 * fsyncs / max(1, len(arrived)),
            "written_batches_share": counters["batches_committed"] / max(1, counters["batches_cut"])}


def bench_sd_wear(workdir, rate, seconds, name, batch_toml="", store_toml="", receiver=True):
    """SD-card wear of the real agent (``edge-gateway run``) fed ``rate`` line-protocol readings/s over a pty for
    ``seconds``: ``write_bytes`` of ``/proc/PID/io`` (what the kernel sends to the block device on the process's
    behalf) and its fsync/fdatasync calls (``strace -f``), scaled to a day. ``batch_toml``/``store_toml``: extra
    keys of those tables; ``receiver``: a real receiver on loopback, or a dead uplink (an outage)."""
    import pty  # noqa: F401 (os.openpty is enough; imported to fail early where ptys are missing)
    import shutil
    import threading
    import tty
    path = os.path.join(workdir, "wear-" + name)
    os.makedirs(path)
    key = keys.SigningKey.generate()
    keys.write_private(os.path.join(path, "key.pem"), key)
    rx = rx_db = None
    url = DEAD_UPLINK
    if receiver:
        rx, url, rx_db = _receiver_process(path, {"keys": [key.jwk(GW)]}, "rx")
    master, slave = os.openpty()
    tty.setraw(slave)
    config = _wear_config(path, batch_toml, store_toml, url, os.ttyname(slave))
    stop = threading.Event()
    trace = os.path.join(path, "strace.out")
    strace = shutil.which("strace")
    cmd = [sys.executable, "-m", "gateway.cli", "run", "--config", config]
    if strace:
        cmd = [strace, "-f", "-qq", "-e", "trace=fsync,fdatasync", "-o", trace] + cmd
    thread = threading.Thread(target=_feed, args=(master, rate, stop), daemon=True)
    thread.start()
    with open(os.path.join(path, "agent.log"), "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    pid = proc.pid
    try:
        time.sleep(3.0)  # start-up (boot epoch, first commit) is not the steady state being measured
        pid = _agent_pid(proc.pid)
        wb0, f0, t0 = _io_write_bytes(pid), _count_fsyncs(trace), time.monotonic()
        cw0 = _io_write_bytes(pid, "cancelled_write_bytes")
        time.sleep(seconds)
        wb1, f1, t1 = _io_write_bytes(pid), _count_fsyncs(trace), time.monotonic()
        cw1 = _io_write_bytes(pid, "cancelled_write_bytes")
    finally:
        stop.set()
        _stop_traced(proc, pid)
        thread.join(5)
        os.close(master)
        os.close(slave)
        if rx is not None:
            rx.send_signal(signal.SIGTERM)
            rx.wait(10)
    per_day = 86400.0 / (t1 - t0)
    readings = rate * (t1 - t0)
    delivered = None
    if rx_db:  # a sanity check of the run: the readings did flow
        db = sqlite3.connect(rx_db)
        delivered = db.execute("SELECT COUNT(*) FROM records WHERE n LIKE ?", (GW + "/s%",)).fetchone()[0]
        db.close()
    return {"rate": rate, "seconds": round(t1 - t0, 1), "receiver": receiver, "delivered": delivered,
            "mb_per_day": (wb1 - wb0) * per_day / 1e6,
            # dirtied, then dropped before write-back (a journal file unlinked in time): never reached the card
            "cancelled_mb_per_day": (cw1 - cw0) * per_day / 1e6,
            "fsyncs_per_day": (f1 - f0) * per_day if strace else None,
            "fsyncs_per_1k_readings": 1000.0 * (f1 - f0) / readings if strace else None}


def _wear_config(path, batch_toml, store_toml, url, port):
    """``bench_sd_wear``'s agent config, written to ``path/config.toml``; returns its path."""
    config = os.path.join(path, "config.toml")
    with open(config, "w") as f:
        f.write('[gateway]\nid = "%s"\nstate_dir = "%s"\nlog_level = "warning"\n[batch]\n%s\n[store]\n%s\n'
                '[uplink]\nurl = "%s"\nbackoff_max_s = 5\n[clock]\nmode = "synced"\n'
                '[[sources]]\ntype = "serial"\nname = "board"\nport = "%s"\nbaud = 115200\n'
                % (GW, path, batch_toml, store_toml, url, port))
    return config


def _feed(master, rate, stop):
    """Write ``rate`` line-protocol readings/s to the pty's ``master`` until ``stop`` is set."""
    n, start = 0, time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - start) * rate) + 1
        chunk = b"".join(b"id=s%d temp=%d.%02d\n" % (k % 20, 4 + k % 3, k % 100) for k in range(n, due))
        n = due
        if chunk:
            os.write(master, chunk)
        stop.wait(min(0.01, 1.0 / rate))


def _stop_traced(proc, pid):
    """Stop the agent ``pid`` that runs under ``proc`` (strace, or the agent itself)."""
    try:
        os.kill(pid, signal.SIGTERM)  # the agent itself: strace, signalled, would detach and leave it running
    except ProcessLookupError:
        pass
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        for victim in {pid, proc.pid}:  # the agent too: a tracee can outlive a killed strace
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def _agent_pid(pid):
    """The Python process under strace (its only child), or ``pid`` itself."""
    for _ in range(100):
        try:
            with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
                kids = f.read().split()
        except OSError:
            return pid
        if kids:
            return int(kids[0])
        time.sleep(0.02)
    return pid


def _io_write_bytes(pid, field="write_bytes"):
    """``write_bytes`` of ``/proc/PID/io`` (charged when a page is dirtied), or another of its fields:
    ``cancelled_write_bytes`` is what was dirtied and then truncated or unlinked before write-back (the journal)."""
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _count_fsyncs(trace):
    try:
        with open(trace) as f:
            return sum(1 for line in f if "fsync(" in line or "fdatasync(" in line)
    except OSError:
        return 0
