"""Updating the agent in the field, in a temporary root: signed bundles of versions the test builds (0.1.0 as
installed, 0.1.1 good, 0.1.2 an agent that exits at start, 0.0.9 for a downgrade), installed with
``edge-gateway update`` run from the installed version, the supervisor (deploy/supervise.sh) run as the unit's
``ExecStartPre=`` would be, and the agent delivering to the reference receiver on loopback. The last test takes the
whole downlink path with real processes: ``command sign``/``send --http`` -> ``edge-gateway receive --operators`` ->
the running agent -> a bundle server on loopback -> ``update --staged`` -> the new agent -> the outcomes upstream.

Wheels are built once per session; each install is a real virtualenv filled offline by pip from the bundle
(~4 s). No systemd: the tests play its part (supervisor, then the agent; again when it exits).
"""

import hashlib
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tarfile

import cbor2
import pytest

from gateway.adapters import keys
from gateway.app.config import load
from gateway.app.update_install import STEPS, install
from gateway.core.update import UpdateError
from tests.support import ROOT, receiver_server, reserve_port, wait_until
from tests.support.downlink import await_commands, cli
from tests.support.faults import Receiver
from tests.support.update import CRASHING_RUN, version_wheelhouse
from tools.update_build import build

pytestmark = pytest.mark.integration

DEPLOY = os.path.join(str(ROOT), "deploy")
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
GW = "gw-up-1"


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, wheels):
    """Signed bundles of 0.1.1 (good), 0.1.2 (exits at start), 0.0.9 (older) and one by another operator key."""
    top = tmp_path_factory.getbasetemp() / "update-bundles"
    top.mkdir(exist_ok=True)
    op = keys.SigningKey.generate()
    other = keys.SigningKey.generate()
    keys.write_jwks(str(top / "operators.jwks.json"), {"keys": [op.jwk()]})
    out = {"operators": str(top / "operators.jwks.json"), "key": op}
    for version, patch, key, name in (("0.1.1", None, op, "0.1.1"), ("0.1.2", {"gateway/cli.py": CRASHING_RUN}, op,
                                      "0.1.2"), ("0.0.9", None, op, "0.0.9"), ("0.1.1", None, other, "foreign")):
        house = version_wheelhouse(wheels, str(top / ("wh-" + version + ("-crash" if patch else ""))), version, patch)
        out[name] = build(house, key, version, "0.1.0" if version != "0.0.9" else "0.0.1",
                          str(top / ("%s.bundle" % name)))[0]
    out["wheelhouse-0.1.1"] = str(top / "wh-0.1.1")
    return out


class Site:
    """One installed gateway in a temporary root, delivering to an in-process receiver; with ``operators`` (an
    operator JWK Set), to ``edge-gateway receive --operators`` as a process instead, and taking signed commands from
    its answers."""

    def __init__(self, tmp_path, wheels, bundles, uplink=None, operators=None):
        self.tmp = tmp_path
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.base = self.root / "opt/edge-gateway"
        self.state = self.root / "var/lib/edge-gateway"
        prov = tmp_path / "prov"
        run([sys.executable, "-m", "gateway.cli", "provision", "--gateway-id", GW, "--uplink", "http://127.0.0.1:9/",
             "--out", str(prov), "--state-dir", str(self.state)])
        if operators:
            self.receiver = Receiver(str(tmp_path), str(prov / "jwks.json"), reserve_port(),
                                     db=str(tmp_path / "recv.sqlite"), operators=operators)  # started below
            extra = '[clock]\nmode = "synced"\n\n[downlink]\noperators = "%s"\npoll_s = 5.0\n' % operators
        else:
            self.receiver = receiver_server(tmp_path / "recv.sqlite", keys.TrustStore.load(str(prov / "jwks.json")))
            extra = ""
        run(["sh", os.path.join(DEPLOY, "install.sh"), "--root", str(self.root), "--wheelhouse", wheels, "--config",
             str(prov / GW / "config.toml"), "--key", str(prov / GW / "key.pem"), "--python", BASE_PYTHON])
        self.cfg = str(self.root / "etc/edge-gateway/config.toml")
        text = open(self.cfg).read().replace("http://127.0.0.1:9/", uplink or self.receiver.url)
        with open(self.cfg, "w") as f:
            f.write(text + '\n[batch]\nmax_age_s = 0.5\n\n[update]\nbase = "%s"\noperators = "%s"\nprove_s = 4\n\n%s'
                    % (self.base, bundles["operators"], extra))
        self.proc = None
        if operators:
            self.receiver.start()

    def current(self):
        return os.readlink(self.base / "current")

    def cli(self, *args, check=True, env=None):
        """``edge-gateway`` of the installed current version (as the technician runs it on the gateway)."""
        return run([str(self.base / "current/bin/edge-gateway")] + list(args), check=check, env=env)

    def update(self, bundle, check=True, env=None):
        return self.cli("update", "--config", self.cfg, bundle, check=check, env=env)

    def supervise(self):
        return run(["sh", str(self.base / "supervise.sh"), "--root", str(self.root), "start"])

    def start(self):
        """What systemd does at each start: the supervisor, then the agent of whatever ``current`` now is."""
        self.supervise()
        self.log = open(self.tmp / "agent.log", "ab")
        self.proc = subprocess.Popen([str(self.base / "current/bin/edge-gateway"), "run", "--config", self.cfg],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd="/", env=clean_env())
        return self.proc

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        if self.proc is not None:
            self.log.close()
        return self.proc.returncode if self.proc else None

    def records(self, like):
        con = sqlite3.connect(str(self.tmp / "recv.sqlite"))
        try:
            return con.execute("SELECT n, vs FROM records WHERE n LIKE ? ORDER BY rowid", (like,)).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    def fields(self, name):
        with open(self.base / name) as f:
            return dict(line.split("=", 1) for line in f.read().splitlines())

    def close(self):
        self.stop()
        self.receiver.stop()
        if not isinstance(self.receiver, Receiver):
            self.receiver.receiver.close()


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def run(cmd, check=True, env=None, timeout=120):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or clean_env(), cwd="/")
    if check and proc.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s\n%s" % (" ".join(cmd[:3]), proc.returncode, proc.stdout,
                                                          proc.stderr))
    return proc


@pytest.fixture
def site(tmp_path, wheels, bundles):
    s = Site(tmp_path, wheels, bundles)
    yield s
    s.close()


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_a_good_update_switches_proves_itself_and_is_kept(site, bundles):
    key_before = digest(site.state / "key.pem")
    site.start()
    wait_until(lambda: site.records(GW + "/health/update.running"), 20, "the 0.1.0 agent's first delivery")
    assert site.stop() == 0
    out = site.update(bundles["0.1.1"]).stdout
    assert "switched to 0.1.1" in out and site.current() == "versions/0.1.1"
    assert site.fields("trial")["version"] == "0.1.1" and site.fields("update-outcome")["outcome"] == "switched"
    assert sorted(os.listdir(site.base / "versions")) == ["0.1.0", "0.1.1"]

    site.start()
    wait_until(lambda: (site.state / "update-proven").exists(), 20, "the proof of 0.1.1 (a delivered batch)")
    wait_until(lambda: any(vs.startswith("kept") for _, vs in site.records(GW + "/update/0.1.1")), 20,
               "the kept record upstream")
    assert site.stop() == 0
    states = [vs.split(":")[0] for _, vs in site.records(GW + "/update/0.1.1")]
    assert states == ["switched", "kept"]
    assert ("%s/health/update.running" % GW, "0.1.1") in site.records(GW + "/health/update.running")
    assert site.records(GW + "/health/update.previous")[-1][1] == "0.1.0"
    assert site.records(GW + "/health/last_stop.update")  # this start's reason: the update
    # The supervisor ends the trial at the next start; nothing rolls back; the key and the queue are the same.
    site.supervise()
    assert not (site.base / "trial").exists() and site.current() == "versions/0.1.1"
    assert site.fields("update-outcome")["outcome"] == "kept"
    assert digest(site.state / "key.pem") == key_before and (site.state / "queue.sqlite").exists()
    doctor = site.cli("doctor", "--quick", "--config", site.cfg).stdout
    assert "PASS update   running 0.1.1, previous 0.1.0, last: kept 0.1.1" in doctor, doctor


def test_a_version_that_exits_at_start_is_rolled_back_by_itself_and_reported(site, bundles):
    site.update(bundles["0.1.2"])
    assert site.current() == "versions/0.1.2"
    starts = 0
    while site.current() == "versions/0.1.2":  # systemd's Restart=on-failure, bounded
        assert starts <= 4, "still on 0.1.2 after %d starts" % starts
        assert site.start().wait(30) == 3
        starts += 1
        site.stop()
        site.supervise() if site.current() == "versions/0.1.2" and starts == 3 else None
    assert starts == 3 and site.current() == "versions/0.1.0"
    outcome = site.fields("update-outcome")
    assert outcome["outcome"] == "rolled_back" and "crash loop" in outcome["reason"]
    assert not (site.base / "trial").exists() and open(site.base / "previous").read().strip() == "versions/0.1.2"
    # The restored version reports what happened.
    site.start()
    wait_until(lambda: site.records(GW + "/update/0.1.2"), 20, "the rollback's record upstream")
    vs = site.records(GW + "/update/0.1.2")[0][1]
    assert vs.startswith("rolled_back: rolled_back 0.1.2 -> 0.1.0: not proven after 3 starts"), vs
    assert site.records(GW + "/health/last_stop.update")


def test_a_version_that_delivers_nothing_in_time_is_rolled_back(tmp_path, wheels, bundles):
    from tests.support import closed_port
    s = Site(tmp_path, wheels, bundles, uplink="http://127.0.0.1:%d/v1/batches" % closed_port())
    try:
        s.update(bundles["0.1.1"])
        assert s.start().wait(30) == 75  # gave up after update.prove_s (4 s) and asked to be restarted
        assert (s.state / "update-unproven").read_text().strip() == "0.1.1"
        s.supervise()
        assert s.current() == "versions/0.1.0"
        assert "no batch delivered within 4s" in s.fields("update-outcome")["reason"]
    finally:
        s.close()


def tampered(src, dest, member, offset):
    """A copy of bundle ``src`` with one byte of ``member`` changed."""
    with tarfile.open(src) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            if member(m.name):
                data = bytearray(data)
                data[offset] ^= 0x01
                data = bytes(data)
            tar.addfile(m, io.BytesIO(data))
    return dest


def test_bad_bundles_and_downgrades_are_refused_with_their_reasons(site, bundles, tmp_path):
    cfg = load(site.cfg)
    good = bundles["0.1.1"]
    with tarfile.open(good) as tar:
        manifest = tar.extractfile("manifest.cose").read()
    body = cbor2.loads(cbor2.loads(manifest).value[2])
    unsigned = tmp_path / "unsigned.bundle"
    with tarfile.open(unsigned, "w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("manifest.cose")
        data = cbor2.dumps(body)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    cases = {
        "digest": tampered(good, str(tmp_path / "wheel.bundle"), lambda n: n.startswith("edge_gateway"), 100),
        "bad_signature": tampered(good, str(tmp_path / "sig.bundle"), lambda n: n == "manifest.cose", -10),
        "unsigned": str(unsigned),
        "unknown_key": bundles["foreign"],
        "downgrade": bundles["0.0.9"],
    }
    for reason, bundle in cases.items():
        with pytest.raises(UpdateError) as err:
            install(bundle, cfg, say=lambda text: None)
        assert err.value.reason == reason, (reason, str(err.value))
        assert site.current() == "versions/0.1.0"
        assert site.fields("update-outcome")["outcome"] == "refused"
        assert site.fields("update-outcome")["reason"].startswith(reason + ":")
    assert sorted(os.listdir(site.base / "versions")) == ["0.1.0"]  # nothing left behind
    # The technician's command says why, and exits 1.
    r = site.update(bundles["0.0.9"], check=False)
    assert r.returncode == 1 and "0.0.9 is not newer than the running 0.1.0: refused" in r.stderr, r.stderr
    r = site.update(cases["digest"], check=False)
    assert r.returncode == 1 and "does not match its sha256 in the manifest" in r.stderr, r.stderr
    # Pinned to another version: refused; pinned to this one: taken (checked up to the manifest, no install).
    cfg.update.pin = "0.1.3"
    with pytest.raises(UpdateError, match="pinned to 0.1.3") as err:
        install(good, cfg, say=lambda text: None)
    assert err.value.reason == "pinned"


def test_sigkill_at_each_step_leaves_a_startable_install(site, bundles):
    key_before = digest(site.state / "key.pem")
    for step in STEPS:
        r = site.update(bundles["0.1.1"], check=False, env=clean_env(EDGE_GATEWAY_FAULT_KILL_AT=step))
        assert r.returncode == -signal.SIGKILL, (step, r.stdout, r.stderr)
        site.supervise()  # the next start, as systemd would run it
        expected = "versions/0.1.1" if STEPS.index(step) > STEPS.index("switch") else "versions/0.1.0"
        assert site.current() == expected, step
        assert site.cli("--version").stdout.strip() == "edge-gateway " + expected.split("/")[1]
        site.cli("doctor", "--quick", "--config", site.cfg)  # config and key as the started agent will see them
        if expected.endswith("0.1.1"):
            site.cli("update", "--rollback", "--config", site.cfg)
            assert site.current() == "versions/0.1.0"
    assert digest(site.state / "key.pem") == key_before
    site.update(bundles["0.1.1"])  # and after all that, an update goes through, leftovers cleaned
    assert sorted(os.listdir(site.base / "versions")) == ["0.1.0", "0.1.1"]
    assert not (site.base / "staging").exists()


class RangeServer:
    """A bundle over HTTP on loopback that honours Range, and (``cut``) cuts its first answer off half-way (a dropped
    link)."""

    def __init__(self, data, cut=True):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import threading
        self.ranges = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = int(rng.split("=")[1].rstrip("-")) if rng else 0
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:] if len(server.ranges) > 1 or not cut else data[:len(data) // 2]
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/edge-gateway-0.1.1.bundle" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_signed_update_command_fetches_resumes_stages_and_the_updater_installs(site, bundles):
    """The downlink path through its applier: a signed ``update`` command names the bundle's URL and digest; the
    first fetch is cut off (failed, reported), the next command resumes with Range, verifies and stages; the
    updater (``update --staged``, the path unit's job) installs it, and the new agent reports the switch."""
    import asyncio
    import collections

    from gateway.adapters.operators import SeqState
    from gateway.app.downlink import Downlink, update_action
    from gateway.core.clock import FakeClock
    from gateway.core.commands import sign_command

    class Agent:  # what Downlink uses of the agent: id, clock, counters, emit, cut
        gw, clock, counters, events = GW, FakeClock(synced=True), collections.Counter(), []
        emit, cut = events.append, staticmethod(lambda: None)

    data = open(bundles["0.1.1"], "rb").read()
    server = RangeServer(data)
    try:
        op = bundles["key"]
        downlink = Downlink(Agent, {op.kid_bytes: op.public}, SeqState(str(site.tmp / "seq.json")),
                            {"update": update_action(site.cfg)})
        args = {"url": server.url, "sha256": hashlib.sha256(data).hexdigest()}

        async def send(seq):
            return await downlink.handle(sign_command(op, GW, seq, int(Agent.clock.wall()) + 600, "update", args))
        assert asyncio.run(send(1)) == "failed"
        assert "the next try resumes" in Agent.events[-1].reason
        assert asyncio.run(send(2)) == "applied"
        assert server.ranges == [None, "bytes=%d-" % (len(data) // 2)]
        assert "fetched %d bytes; bundle 0.1.1 verified (replaces 0.1.0" % (len(data) - len(data) // 2) \
            in Agent.events[-1].reason
    finally:
        server.close()
    assert (site.state / "update/request").read_text().strip() == "bundle-0.1.1.tar"
    out = site.cli("update", "--staged", "--config", site.cfg).stdout
    assert "switched to 0.1.1" in out and site.current() == "versions/0.1.1"
    assert os.listdir(site.state / "update") == []  # the request consumed, the bundle removed
    assert site.cli("update", "--staged", "--config", site.cfg).stdout.strip() == "nothing staged"
    site.start()
    wait_until(lambda: site.records(GW + "/update/0.1.1"), 20, "the switch reported by the new agent")
    assert site.records(GW + "/update/0.1.1")[0][1].startswith("switched: switched 0.1.1 (from 0.1.0)")


@pytest.mark.timeout(300)
def test_a_signed_update_command_through_the_reference_receiver_updates_the_running_agent(tmp_path, wheels, bundles):
    """The downlink path end to end, with real processes: the operator signs ``update URL SHA256`` and queues it
    at ``edge-gateway receive --operators``; the running 0.1.0 agent gets it in the answer to a batch, fetches the
    bundle from a loopback HTTP server, verifies and stages it; the updater (``update --staged``, what the path
    unit runs) installs and switches; the restarted 0.1.1 proves itself; every outcome arrives at the receiver."""
    site = Site(tmp_path, wheels, bundles, operators=bundles["operators"])
    data = open(bundles["0.1.1"], "rb").read()
    server = RangeServer(data, cut=False)
    op_pem = str(tmp_path / "operator.pem")
    keys.write_private(op_pem, bundles["key"])
    db = site.receiver.db
    try:
        site.start()
        wait_until(lambda: ("%s/health/update.running" % GW, "0.1.0") in site.records(GW + "/health/update.running"),
                   20, "the 0.1.0 agent's first delivery")
        cmd = str(tmp_path / "update.cose")
        cli("command", "sign", "--key", op_pem, "--gw", GW, "--out", cmd, "update", server.url,
            digest(bundles["0.1.1"]))
        assert "queued" in cli("command", "send", "--http", site.receiver.url, cmd)
        command = (bundles["key"].kid, 1)  # (operator key, op_seq)
        row = await_commands(db, [command], "the update command's outcome", 60, gw=GW)[command]
        assert (row["action"], row["state"]) == ("update", "applied"), row
        assert "fetched %d bytes; bundle 0.1.1 verified (replaces 0.1.0" % len(data) in row["outcome"], row
        assert server.ranges == [None]  # one whole download
        assert (site.state / "update/request").read_text().strip() == "bundle-0.1.1.tar"
        assert site.current() == "versions/0.1.0"  # the agent stages; only root's updater installs

        # edge-gateway-update.path sees update/request and runs the updater while 0.1.0 still runs
        out = site.cli("update", "--staged", "--config", site.cfg).stdout
        assert "switched to 0.1.1" in out and site.current() == "versions/0.1.1", out
        assert os.listdir(site.state / "update") == []  # the request consumed, the bundle removed
        # its "systemctl restart": the agent stops, the supervisor starts the trial, 0.1.1 runs
        assert site.stop() == 0
        site.start()
        wait_until(lambda: any(vs.startswith("kept") for _, vs in site.records(GW + "/update/0.1.1")), 30,
                   "the new version's proof upstream")
        assert (site.state / "update-proven").read_text().strip() == "0.1.1"
        states = [vs.split(":")[0] for _, vs in site.records(GW + "/update/0.1.1")]
        assert states == ["switched", "kept"], states
        assert site.records(GW + "/health/update.running")[-1] == ("%s/health/update.running" % GW, "0.1.1")
        assert site.records(GW + "/health/update.previous")[-1][1] == "0.1.0"
        assert site.stop() == 0
        site.supervise()  # the next start ends the trial: kept
        assert site.fields("update-outcome")["outcome"] == "kept" and not (site.base / "trial").exists()
        table = cli("command", "status", "--db", db, "--gw", GW)  # what the operator reads
        assert re.search(r"\b1\s+update\s+applied\b", table), table
    finally:
        server.close()
        site.close()
