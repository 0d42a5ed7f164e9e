"""What users run, measured from outside (issue 21): ``edge-gateway run`` as a process, fed line-protocol readings
over a real pty at fixed rates, delivering through a real Mosquitto (or HTTP) to a real ``edge-gateway receive``
process; the agent's footprint against the number of sensors and against the size of its backlog; and the BLE path
as deployed (bleak's BlueZ backend over D-Bus, against the mocked BlueZ). Part of ``edge-gateway bench``
(``--sections e2e,curves,ble``; docs/performance.md). The broker is the test suite's (``tests/support/mosquitto.py``),
so this runs from a checkout.

Everything is bounded: each run has a fixed duration and a bounded wait for the last deliveries.
"""

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tty

from gateway.adapters import keys
from tools.bench_processes import (DEAD_UPLINK, GW, _p99, _receiver_process, proc_cpu_s, proc_rss_mb,
                                    queue_readings)

E2E_RATES = (1, 20, 100, 1000, 4000)  # line-protocol readings per second, the range
E2E_SENSORS = 20
#: what each line carries, in order: (quantity, unit, start, step); a line of ``quantities`` quantities is that many
#: readings (the issue's 200 sensors x 2 quantities at 1 Hz is ``Feeder(400, 200, 2)``)
QUANTITIES = (("temp", "Cel", 4.0, 0.01), ("hum", "%RH", 50.0, 0.1))


# -- the parts: a byte-counting relay, a broker, a pty feeder, the agent --------------------------------------
class Relay:
    """A TCP relay on loopback that counts the bytes each way: what the agent writes to its socket (MQTT or HTTP
    framing included; before TLS, which the bench does not use) without asking the agent."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.up = self.down = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="relay-accept").start()

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _pump(self, src, dst, up):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._closed = True
        self.sock.close()


class Feeder:
    """Writes ``rate`` line-protocol readings per second, round-robin over ``sensors`` ids, each line carrying
    ``quantities`` readings (temperature, then humidity), to a pty's master side; keeps each line's write time per
    stream (the latency's start: the reading's arrival at the gateway)."""

    def __init__(self, rate, sensors, quantities=1):
        if not 1 <= quantities <= len(QUANTITIES):
            raise ValueError("quantities must be 1 to %d" % len(QUANTITIES))
        self.rate, self.sensors, self.quantities = rate, sensors, quantities
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.written = {}  # (sensor id, quantity) -> [write time, ...]
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="feeder")
        self.n = 0  # readings written
        rng = random.Random(21)
        self.kinds = QUANTITIES[:quantities]
        self.values = [[start + rng.random() * 100 * step for _, _, start, step in self.kinds]
                       for _ in range(sensors)]
        self.rng = rng

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        start = time.monotonic()
        lines_per_s = self.rate / self.quantities
        written = 0  # lines
        while not self.stop_event.is_set():
            due = int((time.monotonic() - start) * lines_per_s) + 1
            lines = []
            now = time.time()
            for k in range(written, due):
                i = k % self.sensors
                sid = "s%d" % i
                fields = []
                for q, (name, _, start_value, step) in enumerate(self.kinds):
                    # a fridge-like seeded random walk in the quantity's resolution: what real boards send, so
                    # deflate finds no pattern in the values that real data would not have
                    value = self.values[i][q] + step * self.rng.choice((-2, -1, 0, 1, 2))
                    self.values[i][q] = value = min(start_value + 600 * step, max(start_value, value))
                    fields.append(b"%s=%.*f" % (name.encode(), 2 if step < 0.1 else 1, value))
                    self.written.setdefault((sid, name), []).append(now)
                lines.append(b"id=%s %s\n" % (sid.encode(), b" ".join(fields)))
            written = max(written, due)
            self.n = written * self.quantities
            if lines:
                try:
                    os.write(self.master, b"".join(lines))
                except OSError:
                    return
            self.stop_event.wait(min(0.01, 1.0 / lines_per_s))

    def stop(self):
        self.stop_event.set()
        self.thread.join(5)

    def close(self):
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def units(self):
        """The ``units`` table of the serial source's config for this feed."""
        return "{%s}" % ", ".join('%s = "%s"' % (name, unit) for name, unit, _, _ in self.kinds)


def agent_config(path, port, uplink_toml, extra="", units='{temp = "Cel"}'):
    config = os.path.join(path, "config.toml")
    with open(config, "w") as f:
        f.write('[gateway]\nid = "%s"\nstate_dir = "%s"\nlog_level = "warning"\n%s\n%s\n[clock]\nmode = "synced"\n'
                '[[sources]]\ntype = "serial"\nname = "board"\nport = "%s"\nbaud = 115200\n'
                'units = %s\n' % (GW, path, uplink_toml, extra, port, units))
    return config








def start_agent(config, log_path):
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", config],
                                stdout=subprocess.DEVNULL, stderr=log)


def stop_process(proc, timeout=15):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stop_receiver(rx):
    """SIGTERM the receiver; its last stdout line is its counters as JSON."""
    rx.send_signal(signal.SIGTERM)
    try:
        out, _ = rx.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        rx.kill()
        out, _ = rx.communicate()
    for line in reversed((out or "").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    return {}


def _delivered(rx_db):
    """``{(sensor, quantity): [(reading time, commit time), ...]}`` from the receiver's database, in reading
    order."""
    out = {}
    if not os.path.exists(rx_db):
        return out
    db = sqlite3.connect(rx_db, timeout=5)
    try:
        rows = db.execute("SELECT r.n, r.t, b.received FROM records r JOIN batches b USING (gw, boot, seq) "
                          "WHERE r.n LIKE ? ORDER BY r.n, r.t, b.boot, b.seq, r.rowid", (GW + "/s%",)).fetchall()
    except sqlite3.Error:
        rows = []
    finally:
        db.close()
    for name, t, received in rows:
        out.setdefault(tuple(name.split("/")[1:3]), []).append((t, received))
    return out


# -- end to end -------------------------------------------------------------------------------------------------
def bench_e2e(workdir, rate, seconds, transport="mqtt", sensors=E2E_SENSORS, quantities=1, batch_toml=""):
    """One run: ``rate`` readings/s (``sensors`` sensors of ``quantities`` quantities each, round-robin) for
    ``seconds`` through the agent process and ``transport`` to the receiver. ``batch_toml``: extra config tables
    (an A/B of settings).

    Latency is from a line's write to the pty to the receiver's commit of the batch holding it (the ``received``
    column); readings of one sensor are matched in order. Per sensor, rows beyond the lines written are duplicates
    (a reading re-cut into another batch, which the receiver's dedup by ``(gw, boot, seq)`` cannot hide) and lines
    beyond the rows stored are lost (a loss and a duplicate of the same sensor would cancel out: the fault tests
    check readings one by one). CPU is the agent's ``utime + stime`` over the run."""
    path = os.path.join(workdir, "e2e-%s-%d-%dx%d" % (transport, rate, sensors, quantities))
    n = 0
    while os.path.exists(path + ("-%d" % n if n else "")):
        n += 1
    path += "-%d" % n if n else ""
    os.makedirs(path)
    key = keys.SigningKey.generate()
    keys.write_private(os.path.join(path, "key.pem"), key)
    broker = relay = rx = agent = None
    feeder = Feeder(rate, sensors, quantities)
    try:
        if transport == "mqtt":
            from tests.support.mosquitto import Broker  # the suite's broker helper (bench runs from a checkout)
            broker = Broker(os.path.join(path, "broker")).start()
            relay = Relay(broker.port)
            rx, _url, rx_db = _receiver_process(path, {"keys": [key.jwk(GW)]}, "rx",
                                                extra=["--mqtt", "mqtt://127.0.0.1:%d/edge" % broker.port])
            time.sleep(1.0)  # the consumer subscribes after the HTTP front listens
            uplink = '[uplink]\nkind = "mqtt"\nbackoff_max_s = 2\n[uplink.mqtt]\nport = %d\n' % relay.port
        else:
            rx, url, rx_db = _receiver_process(path, {"keys": [key.jwk(GW)]}, "rx")
            relay = Relay(int(url.rsplit(":", 1)[1].split("/")[0]))
            uplink = '[uplink]\nurl = "http://127.0.0.1:%d/v1/batches"\nbackoff_max_s = 2\n' % relay.port
        agent = start_agent(agent_config(path, feeder.port, uplink, batch_toml, feeder.units()),
                            os.path.join(path, "agent.log"))
        time.sleep(1.0)  # start-up (boot epoch, key, first connection) is not the steady state
        cpu0 = proc_cpu_s(agent.pid)
        feeder.start()
        rss = 0.0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rss = max(rss, proc_rss_mb(agent.pid))
            time.sleep(0.25)
        feeder.stop()
        written = feeder.n
        deadline = time.monotonic() + 15  # the last deliveries, bounded
        got = 0
        while time.monotonic() < deadline:
            got = sum(len(v) for v in _delivered(rx_db).values())
            if got >= written:
                break
            time.sleep(0.2)
        cpu = proc_cpu_s(agent.pid) - cpu0
        up = relay.up
        stop_process(agent)
        agent = None
        stats = _stop_receiver(rx)
        rx = None
        delivered = _delivered(rx_db)
    finally:
        feeder.stop()
        for proc in (agent, rx):
            if proc is not None:
                stop_process(proc)
        if relay:
            relay.close()
        if broker:
            broker.stop()
        feeder.close()
    latencies, count, dups, lost = [], 0, 0, 0
    for sid, times in feeder.written.items():
        rows = delivered.get(sid, [])
        count += min(len(rows), len(times))
        dups += max(0, len(rows) - len(times))
        lost += max(0, len(times) - len(rows))
        latencies += [received - wrote for (_, received), wrote in zip(rows, times)]
    latencies.sort()
    return {"transport": transport, "rate": rate, "sensors": sensors, "quantities": quantities, "seconds": seconds,
            "written": written, "delivered": count, "lost": lost, "duplicates": dups,
            "receiver_duplicate_batches": stats.get("duplicates"),
            "p50_s": latencies[len(latencies) // 2] if latencies else None,
            "p99_s": _p99(latencies), "max_s": latencies[-1] if latencies else None,
            "cpu_s_per_1k": 1000.0 * cpu / max(1, count), "rss_mb": rss,
            "socket_bytes_per_reading": up / max(1, count)}


# -- scale curves ---------------------------------------------------------------------------------------------------
def bench_sensors(workdir, sensors, seconds=20.0):
    """RSS and CPU of the agent process with ``sensors`` sensors reporting at 1 Hz each, delivering over HTTP to a
    real receiver."""
    path = os.path.join(workdir, "sensors-%d" % sensors)
    os.makedirs(path)
    key = keys.SigningKey.generate()
    keys.write_private(os.path.join(path, "key.pem"), key)
    rx, url, _ = _receiver_process(path, {"keys": [key.jwk(GW)]}, "rx")
    feeder = Feeder(float(sensors), sensors)
    agent = start_agent(agent_config(path, feeder.port, '[uplink]\nurl = "%s"\n' % url),
                        os.path.join(path, "agent.log"))
    try:
        feeder.start()
        time.sleep(min(10.0, seconds / 2))  # every sensor seen, steady state
        cpu0, t0 = proc_cpu_s(agent.pid), time.monotonic()
        rss = 0.0
        while time.monotonic() - t0 < seconds:
            rss = max(rss, proc_rss_mb(agent.pid))
            time.sleep(0.5)
        cpu = (proc_cpu_s(agent.pid) - cpu0) / (time.monotonic() - t0)
    finally:
        feeder.stop()
        stop_process(agent)
        _stop_receiver(rx)
        feeder.close()
    return {"sensors": sensors, "rss_mb": rss, "cpu_percent": 100.0 * cpu}


def build_backlog(state_dir, key, readings, per_batch=1000):
    """A queue of ``readings`` periodic readings in signed ``per_batch`` batches, as a day-long outage leaves it:
    200 sensors' fridge temperatures at 0.01 °C, each batch the next ``per_batch / 200`` seconds. One pack of
    readings is encoded once and only its base time (``bt``) and the sequence number change per batch, so 10^7
    readings take seconds to build, not minutes. (Times must move on: a backlog whose batches repeat the same times
    scatters the receiver's index inserts over the whole index and measures SQLite, not the agent.)"""
    from gateway.adapters.store import Store
    from gateway.core import senml, wire
    from gateway.core.model import EncodedBatch, Reading
    store = Store(os.path.join(state_dir, "queue.sqlite"), max_bytes=8 << 30, max_age=365 * 86400.0)
    boot = store.next_boot()
    signer = wire.Signer(key)
    records = senml.encode_records(
        [Reading("s%d" % (i % 200), "temp", round(4 + (i * 37 % 97) / 100, 2), "Cel", 1.7e9 + i / 200, 0.01)
         for i in range(per_batch)], (), GW + "/")
    BT = -3  # SenML base time (RFC 8428): the first record carries it
    batches = readings // per_batch
    chunk = []
    for seq in range(batches):
        first = dict(records[0])
        first[BT] = records[0][BT] + seq * per_batch / 200.0
        pack = [first] + records[1:]
        chunk.append(EncodedBatch(boot, seq, signer(wire.encode_payload(GW, boot, seq, True, pack)), 0,
                                  per_batch, 0, 0.0))
        if len(chunk) == 500 or seq == batches - 1:
            store.put_many(chunk)
            chunk = []
    store.close()
    return batches * per_batch


def _disk_bytes(state_dir):
    return sum(os.path.getsize(os.path.join(state_dir, f)) for f in os.listdir(state_dir)
               if f.startswith("queue.sqlite"))


def bench_backlog(workdir, readings, drain_limit_s=300.0):
    """The agent process started on a backlog of ``readings``: disk, start-up time (from launch to the first batch
    at the receiver: opening the queue and the first delivery), RSS while draining, and the drain rate to a real
    receiver process (the whole backlog, from launch)."""
    path = os.path.join(workdir, "backlog-%d" % readings)
    os.makedirs(path)
    key = keys.SigningKey.generate()
    keys.write_private(os.path.join(path, "key.pem"), key)
    t_build = time.monotonic()
    n = build_backlog(path, key, readings)
    build_s = time.monotonic() - t_build
    disk = _disk_bytes(path)
    rx, url, rx_db = _receiver_process(path, {"keys": [key.jwk(GW)]}, "rx")
    feeder = Feeder(5.0, 5)
    feeder.start()
    started = time.monotonic()
    agent = start_agent(agent_config(path, feeder.port, '[uplink]\nurl = "%s"\nbackoff_max_s = 2\n' % url),
                        os.path.join(path, "agent.log"))
    startup = drained_s = None
    rss = 0.0
    try:
        deadline = started + drain_limit_s
        while time.monotonic() < deadline:
            if agent.poll() is not None:
                break
            rss = max(rss, proc_rss_mb(agent.pid))
            received = _received_readings(rx_db)
            if startup is None and received:
                startup = time.monotonic() - started
            if received >= n:
                drained_s = time.monotonic() - started
                break
            time.sleep(0.25)
    finally:
        feeder.stop()
        stop_process(agent)
        _stop_receiver(rx)
        feeder.close()
    return {"backlog_readings": n, "build_s": round(build_s, 1), "disk_mb": disk / 1e6,
            "disk_bytes_per_reading": disk / max(1, n), "startup_s": startup, "rss_mb": rss,
            "drain_s": drained_s, "drain_readings_per_s": n / drained_s if drained_s else None}


def _received_readings(rx_db):
    if not os.path.exists(rx_db):
        return 0
    try:
        db = sqlite3.connect("file:%s?mode=ro" % rx_db, uri=True, timeout=0.2)
        try:
            return db.execute("SELECT COALESCE(SUM(records), 0) FROM batches WHERE boot = "
                              "(SELECT MIN(boot) FROM batches)").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


# -- BLE through bleak and D-Bus --------------------------------------------------------------------------------------
def bench_ble(workdir, devices=50, seconds=10.0, rate=300):
    """Adverts per second through bleak's BlueZ backend, as deployed: the mocked BlueZ on a private system bus emits
    a ``PropertiesChanged`` signal per advert of ``devices`` BTHome sensors, paced at up to ``rate`` per second; the
    agent process scans with bleak exactly as on a Pi and commits what it decodes. Figures: adverts sent per second,
    readings committed, the agent's CPU per 1,000 adverts, and the CPU of the bus daemon and of the mock (what
    dbus-daemon and bluetoothd would cost on the gateway; the mock is Python, so an upper bound for bluetoothd)."""
    from firmware_sim import ble_nodes
    from tools.sim.bluez_mock import BluezMock
    path = os.path.join(workdir, "ble")
    os.makedirs(path)
    key = keys.SigningKey.generate()
    keys.write_private(os.path.join(path, "key.pem"), key)
    macs = ["A4:C1:38:%02X:%02X:%02X" % (0xB0, i // 256, i % 256) for i in range(devices)]
    config = os.path.join(path, "config.toml")
    with open(config, "w") as f:
        f.write('[gateway]\nid = "%s"\nstate_dir = "%s"\nlog_level = "warning"\n[uplink]\nurl = "%s"\n'
                '[clock]\nmode = "synced"\n[[sources]]\ntype = "ble"\nname = "ble0"\n' % (GW, path, DEAD_UPLINK)
                + "".join('[[sources.sensors]]\nmac = "%s"\n' % mac for mac in macs))
    sent = 0
    with BluezMock() as bt:
        for i, mac in enumerate(macs):
            bt.add_device(mac, service_data={0xFCD2: ble_nodes.bthome_adv(0, 4.0, 50.0, 90)})
        agent = start_agent(config, os.path.join(path, "agent.log"))
        try:
            deadline = time.monotonic() + 20
            while not bt.discovering() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)
            pids = {"agent": agent.pid, "bus": bt._dbus.pid, "mock": bt._mock.process.pid}
            cpu0 = {k: proc_cpu_s(pid) for k, pid in pids.items()}
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                due = int((time.monotonic() - start) * rate) + 1
                while sent < due:
                    k = sent
                    bt.advertise(macs[k % devices], service_data={0xFCD2: ble_nodes.bthome_adv(
                        (k // devices + 1) % 256, 4.0 + (k % 50) / 100.0, 50.0 + (k % 20) / 10.0, 90)})
                    sent += 1
                time.sleep(0.002)
            elapsed = time.monotonic() - start
            time.sleep(2.0)  # the last adverts through the bus and the batcher
            cpu = {k: proc_cpu_s(pid) - cpu0[k] for k, pid in pids.items()}
            rss = proc_rss_mb(agent.pid)
        finally:
            stop_process(agent)
    committed = queue_readings(path, timeout=1)
    return {"devices": devices, "adverts": sent, "adverts_per_s": sent / elapsed, "readings_committed": committed,
            "agent_cpu_s_per_1k_adverts": 1000.0 * cpu["agent"] / max(1, sent),
            "bus_cpu_s_per_1k_adverts": 1000.0 * cpu["bus"] / max(1, sent),
            "mock_cpu_s_per_1k_adverts": 1000.0 * cpu["mock"] / max(1, sent),
            "agent_cpu_percent": 100.0 * cpu["agent"] / elapsed, "rss_mb": rss}


# -- the sections of ``edge-gateway bench`` -----------------------------------------------------------------------
def _rounded(d):
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def e2e_section(results, runs, quick, workdir, say, plots=None):
    """The agent process end to end at each rate, over MQTT (through Mosquitto) and HTTP. Headline figures are the
    worst over rates and transports: latency p50 and max, lost and duplicated readings; CPU per 1,000 delivered
    at 1,000/s and bytes on the socket per reading at 100/s and more, over MQTT; and the issue's 200 sensors x 2
    quantities at 1 Hz (bytes over MQTT, and over HTTP for reference)."""
    rates = (20, 1000) if quick else E2E_RATES
    seconds = 3.0 if quick else 10.0
    out = []
    for transport in ("mqtt", "http"):
        for rate in rates:
            say("end to end, %s, %d readings/s" % (transport, rate))
            out.append(_rounded(bench_e2e(workdir, rate, seconds, transport)))
    # the case: 200 sensors x 2 quantities at 1 Hz (400 readings/s), where each batch names its streams
    for transport in ("mqtt", "http"):
        say("end to end, %s, 200 sensors x 2 quantities at 1 Hz" % transport)
        # 60 s: the first second (before the byte budget learned its model) weighs 1/60, as in a long run
        out.append(_rounded(bench_e2e(workdir, 400, 6.0 if quick else 60.0, transport, 200, 2)))
    runs["e2e"] = out
    wide = [r for r in out if r["sensors"] == 200]
    results["e2e_socket_bytes_per_reading_200x2"] = next(
        (r["socket_bytes_per_reading"] for r in wide if r["transport"] == "mqtt"), None)
    results["e2e_socket_bytes_per_reading_200x2_http"] = next(
        (r["socket_bytes_per_reading"] for r in wide if r["transport"] == "http"), None)
    out = [r for r in out if r["sensors"] != 200] + wide  # plots: the rate curves, then the 200x2 points
    measured = [r for r in out if r["p50_s"] is not None]
    results["e2e_latency_p50_s"] = max(r["p50_s"] for r in measured) if measured else None
    results["e2e_latency_max_s"] = max(r["max_s"] for r in measured) if measured else None
    results["e2e_lost"] = sum(r["lost"] for r in out)
    results["e2e_duplicates"] = sum(r["duplicates"] for r in out)
    at_1000 = [r for r in out if r["transport"] == "mqtt" and r["rate"] == 1000]
    results["e2e_cpu_s_per_1k_at_1000"] = at_1000[0]["cpu_s_per_1k"] if at_1000 else None
    fast = [r["socket_bytes_per_reading"] for r in out if r["transport"] == "mqtt" and r["rate"] >= 100
            and r["sensors"] != 200]
    results["e2e_socket_bytes_per_reading_100_plus"] = max(fast) if fast else None
    if plots:
        from tools.plot_svg import write_plot
        for key, label, name in (("p50_s", "latency p50 (s)", "e2e-latency-p50"),
                                 ("max_s", "latency max (s)", "e2e-latency-max"),
                                 ("cpu_s_per_1k", "agent CPU-s per 1,000 delivered", "e2e-cpu"),
                                 ("socket_bytes_per_reading", "bytes on the socket per reading", "e2e-bytes")):
            write_plot(os.path.join(plots, name + ".svg"),
                       dict({t: [(r["rate"], r[key]) for r in out if r["transport"] == t and r["sensors"] != 200]
                             for t in ("mqtt", "http")},
                            **{"%s 200x2" % t: [(r["rate"], r[key]) for r in wide if r["transport"] == t]
                               for t in ("mqtt", "http")}),
                       "End to end: %s" % label, "readings per second (log)", label, logx=True)


def curves_section(results, runs, quick, workdir, say, plots=None, backlog_max=10 ** 6):
    """RSS and CPU against the number of sensors; disk, start-up, RSS and drain rate against the backlog."""
    sensors = (10, 100, 1000) if quick else (10, 100, 1000, 5000)
    curve = []
    for n in sensors:
        say("sensors curve, %d sensors at 1 Hz" % n)
        curve.append(_rounded(bench_sensors(workdir, n, 6.0 if quick else 20.0)))
    runs["sensors_curve"] = curve
    results["rss_mb_1000_sensors"] = next((c["rss_mb"] for c in curve if c["sensors"] == 1000), None)
    sizes = [10 ** e for e in range(4, 8) if 10 ** e <= backlog_max] or [10 ** 4]
    backlog = []
    for n in sizes:
        say("backlog curve, %d readings" % n)
        backlog.append(_rounded(bench_backlog(workdir, n, drain_limit_s=max(300.0, n / 20000.0))))
    runs["backlog_curve"] = backlog
    if plots:
        from tools.plot_svg import write_plot
        write_plot(os.path.join(plots, "sensors-rss.svg"), {"RSS (MB)": [(c["sensors"], c["rss_mb"]) for c in curve]},
                   "Agent RSS against sensors (1 Hz each)", "sensors (log)", "MB", logx=True)
        write_plot(os.path.join(plots, "sensors-cpu.svg"),
                   {"CPU (%)": [(c["sensors"], c["cpu_percent"]) for c in curve]},
                   "Agent CPU against sensors (1 Hz each)", "sensors (log)", "% of one core", logx=True)
        write_plot(os.path.join(plots, "backlog.svg"),
                   {"start-up (s)": [(b["backlog_readings"], b["startup_s"]) for b in backlog],
                    "drain (s)": [(b["backlog_readings"], b["drain_s"]) for b in backlog],
                    "RSS (MB)": [(b["backlog_readings"], b["rss_mb"]) for b in backlog],
                    "disk (MB)": [(b["backlog_readings"], b["disk_mb"]) for b in backlog]},
                   "Against the backlog", "backlog, readings (log)", "value (log)", logx=True, logy=True)


def ble_section(results, runs, quick, workdir, say):
    say("BLE through bleak and D-Bus")
    ble = _rounded(bench_ble(workdir, 20 if quick else 50, 4.0 if quick else 10.0))
    runs["ble"] = ble
    results["ble_adverts_per_s"] = ble["adverts_per_s"]
    results["ble_agent_cpu_s_per_1k_adverts"] = ble["agent_cpu_s_per_1k_adverts"]
