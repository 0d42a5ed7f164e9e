"""Issue 15, installer points: doctor tries what the agent will do (write in the state directory, reach a batch
endpoint), the reference receiver takes batches at /v1/batches only, and provision changes nothing it is not told
to change, nor anything at all when it refuses."""

import argparse
import http.client
import io
import json
import os
import shutil
import stat
import tempfile
import urllib.parse

import pytest

from backend.receiver import Receiver, ReceiverServer
from gateway.app import config, doctor
from gateway.core import senml, wire
from gateway.core.model import Reading
from tools import provision

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(tmp_path, trust):
    srv = ReceiverServer(Receiver(str(tmp_path / "rx.sqlite"), trust)).start()
    yield srv
    srv.stop()
    srv.receiver.close()


def request(url, method, path=None, body=None):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    try:
        conn.request(method, path or u.path, body=body, headers={"Content-Type": wire.HTTP_CONTENT_TYPE})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def a_batch(key, seq):
    readings = [Reading("s1", "temp", 4.5, "Cel", 1000.0)]
    return wire.sign(wire.encode_payload("gw-test", 1, seq, True, senml.encode_records(readings, (), "gw-test/")),
                     key)


# -- the receiver: one batch path -------------------------------------------------------------------------------
def test_receiver_takes_batches_at_v1_batches_only(server, signing_key):
    assert server.url.endswith("/v1/batches")
    for wrong in ("/", "/v1", "/v1/batch", "/ingest", "/stats"):
        status, _, body = request(server.url, "POST", wrong, a_batch(signing_key, 1))
        assert status == 404 and json.loads(body)["error"] == "not_found", wrong
    assert server.receiver.stats()["stored"] == 0
    assert request(server.url, "POST", body=a_batch(signing_key, 1))[0] == 201
    assert request(server.url, "POST", "/v1/batches/?x=1", a_batch(signing_key, 2))[0] == 201


def test_receiver_answers_options_on_the_batch_path_only(server):
    status, headers, body = request(server.url, "OPTIONS")
    assert status == 204 and body == b"" and "POST" in headers["Allow"]
    assert headers["Accept-Post"] == "application/cose"
    assert request(server.url, "OPTIONS", "/")[0] == 404
    assert server.receiver.stats()["received"] == 0  # a probe is no batch


# -- doctor: the uplink probe ------------------------------------------------------------------------------------
def gateway_config(tmp_path, uplink):
    state = tmp_path / "state"
    rec, _, _ = provision.provision_one(str(tmp_path / "prov"), "gw-doc", uplink=uplink, state_dir=str(state))
    state.mkdir(mode=0o700, exist_ok=True)
    return config.load(rec["config"])


def test_doctor_passes_the_batch_endpoint_and_fails_a_wrong_path(tmp_path, server):
    good = doctor.check_uplink(gateway_config(tmp_path, server.url))
    assert good.status == "PASS" and "HTTP 204" in good.detail, good.line()
    base = server.url.rsplit("/v1/batches", 1)[0]
    for wrong in (base + "/", base + "/v1/batch"):
        bad = doctor.check_uplink(gateway_config(tmp_path, wrong))
        assert bad.status == "FAIL" and "HTTP 404" in bad.detail, bad.line()
        assert "/v1/batches" in bad.fix and "no batch endpoint" in bad.detail


# -- doctor: the state directory ---------------------------------------------------------------------------------
def test_doctor_writes_and_removes_a_file_in_the_state_directory(tmp_path):
    cfg = gateway_config(tmp_path, "https://ingest.example/v1/batches")
    ok = doctor.check_state_dir(cfg)
    assert ok.status == "PASS" and os.listdir(cfg.gateway.state_dir) == []  # the probe file is gone
    shutil.rmtree(cfg.gateway.state_dir)
    gone = doctor.check_state_dir(cfg)
    assert gone.status == "FAIL" and "does not exist" in gone.detail and "mkdir" in gone.fix


def check_as(uid, cfg):
    """``check_state_dir`` in a forked child that runs as ``uid`` (None: this user); the check's line back."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, check, report, exit without running pytest's teardown
        code = 1
        try:
            os.close(read)
            if uid is not None:
                os.setgid(uid)
                os.setuid(uid)
            os.write(write, doctor.check_state_dir(cfg).line().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        line = f.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    return line


def test_doctor_fails_a_state_directory_the_service_user_cannot_write():
    """A state directory that is not the service user's: the agent's 'run' would exit 2, so doctor FAILs. Checked
    as an unprivileged user (root writes anywhere): uid 65534 when the tests run as root, else with mode 0500."""
    work = tempfile.mkdtemp(prefix="edge-doctor-")  # not under pytest's 0700 tmp: the other user must reach it
    try:
        os.chmod(work, 0o755)
        state = os.path.join(work, "state")
        os.mkdir(state, 0o755)
        cfg = config.loads('[gateway]\nid = "gw-ro"\nstate_dir = "%s"\n[uplink]\nurl = "https://h.example/v1"\n'
                           % state, "config.toml")
        as_root = os.geteuid() == 0
        if not as_root:
            os.chmod(state, 0o500)
        line = check_as(65534 if as_root else None, cfg)
        assert line.startswith("FAIL state    cannot write in %s" % state), line
        assert "chown -R edge-gateway" in line and os.listdir(state) == []
        os.chmod(state, 0o700)
        assert check_as(None, cfg).startswith("PASS state")  # this user may write there now
    finally:
        os.chmod(work, 0o700)
        for folder, dirs, _ in os.walk(work):
            for d in dirs:
                os.chmod(os.path.join(folder, d), 0o700)
        shutil.rmtree(work)


# -- provision: keep what is not changed; refuse without writing ---------------------------------------------------
def run(*argv):
    parser = argparse.ArgumentParser()
    provision.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["provision"] + list(argv))
    out = io.StringIO()
    rc = provision.cmd_provision(args, out)
    return rc, [json.loads(line) for line in out.getvalue().splitlines()]


def snapshot(folder):
    """Every file under folder with its bytes and mode: 'nothing changed' means this is equal."""
    out = {}
    for path, dirs, names in os.walk(folder):
        for name in dirs + names:
            full = os.path.join(path, name)
            st = os.lstat(full)
            data = open(full, "rb").read() if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(full, folder)] = (stat.S_IMODE(st.st_mode), data)
    return out


SENSORS = os.path.join(ROOT, "deploy", "sensors.example.toml")


def test_reprovisioning_keeps_sources_rules_pin_and_tuning(tmp_path, capsys):
    out = str(tmp_path / "prov")
    rc, (first,) = run("--gateway-id", "gw-k", "--uplink", "https://a.example/v1/batches", "--sensors", SENSORS,
                       "--pin", "470815", "--out", out)
    assert rc == 0
    cfg_path = first["config"]
    with open(cfg_path, "a") as f:
        f.write("\n[batch]\nmax_age_s = 2.5\n")
    text = open(cfg_path).read().replace('url = "https://a.example/v1/batches"',
                                         'url = "https://a.example/v1/batches"\ntimeout_s = 4.0')
    open(cfg_path, "w").write(text)
    before = config.load(cfg_path)
    rc, (again,) = run("--gateway-id", "gw-k", "--uplink", "https://b.example/v1/batches", "--out", out)
    after = config.load(cfg_path)
    assert rc == 0 and again["kid"] == first["kid"]
    assert after.uplink.url == "https://b.example/v1/batches"  # told to change
    assert after.sources == before.sources and len(after.sources) == 2  # not told: kept
    assert after.rules == before.rules and after.console.pin_hash == before.console.pin_hash != ""
    assert after.batch.max_age_s == 2.5 and after.uplink.timeout_s == 4.0
    assert set(again["kept"]) == {"console.pin_hash", "[[sources]] (2)", "[[rules]] (2)"}
    assert "kept from the existing config.toml" in capsys.readouterr().err
    # No uplink at all: the existing one is kept too.
    rc, (third,) = run("--gateway-id", "gw-k", "--out", out)
    assert rc == 0 and config.load(cfg_path).uplink.url == "https://b.example/v1/batches"
    assert "[uplink]" in third["kept"]
    # --sensors replaces the sensor set (sources and rules together).
    only = tmp_path / "one.toml"
    only.write_text('[[sources]]\ntype = "serial"\nname = "gps"\nport = "/dev/edge-gateway/gps"\n'
                    'protocol = "nmea"\n')
    assert run("--gateway-id", "gw-k", "--sensors", str(only), "--out", out)[0] == 0
    replaced = config.load(cfg_path)
    assert [s["name"] for s in replaced.sources] == ["gps"] and replaced.rules == []
    assert replaced.console.pin_hash == before.console.pin_hash


@pytest.mark.parametrize("argv, words", [
    (["--uplink", "https://h.example:99999/v1/batches"], "port must be a number from 1 to 65535"),
    (["--uplink", "https://h.example:0/v1/batches"], "port must be a number from 1 to 65535"),
    (["--uplink", "https://h.example:http/v1/batches"], "port must be a number from 1 to 65535"),
    (["--uplink", "https:///v1/batches"], "no host"),
    (["--mqtt", "mqtts://broker.example:70000/plant"], "port must be a number from 1 to 65535"),
    (["--uplink", "https://h.example/v1/batches", "--pin", "12"], "--pin refused"),
    (["--uplink", "https://h.example/v1/batches", "--bundle", "B", "--wheelhouse", "nowhere"], "not a directory"),
])
def test_a_refused_provision_changes_nothing(tmp_path, capsys, monkeypatch, argv, words):
    out = tmp_path / "prov"
    assert run("--gateway-id", "gw-r", "--uplink", "https://ok.example/v1/batches", "--sensors", SENSORS,
               "--out", str(out))[0] == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    rc, printed = run("--gateway-id", "gw-r", "--out", str(out), *argv)
    assert rc == 2 and printed == []
    assert words in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_a_failed_wheelhouse_build_changes_nothing(tmp_path, capsys, monkeypatch):
    from tools.wheelhouse import WheelhouseError

    def no_network(*args, **kwargs):
        raise WheelhouseError("pip download failed: no network (test)")
    monkeypatch.setattr(provision.wheelhouse_mod, "build_for_target", no_network)
    out = tmp_path / "prov"
    assert run("--gateway-id", "gw-w", "--uplink", "https://ok.example/v1/batches", "--out", str(out))[0] == 0
    before = snapshot(tmp_path)
    rc, _ = run("--gateway-id", "gw-w", "--uplink", "https://new.example/v1/batches", "--sensors", SENSORS,
                "--out", str(out), "--bundle", str(tmp_path / "bundle"), "--target", "rpi-arm64")
    assert rc == 2 and "no network" in capsys.readouterr().err
    assert snapshot(tmp_path) == before  # no rewritten config, no empty bundle directory, no temporary left


def test_an_unknown_target_is_refused_by_the_parser_with_the_values(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run("--gateway-id", "gw-t", "--uplink", "https://ok.example/v1/batches", "--out", str(tmp_path / "p"),
            "--bundle", str(tmp_path / "b"), "--target", "x")
    assert exc.value.code == 2 and "native" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_bad_csv_row_refuses_the_whole_fleet_before_writing(tmp_path, capsys):
    fleet = tmp_path / "fleet.csv"
    fleet.write_text("gateway_id,uplink\ngw-a,https://ok.example/v1/batches\ngw-b,https://ok.example:99999/v1\n")
    out = tmp_path / "prov"
    rc, printed = run("--csv", str(fleet), "--out", str(out))
    assert rc == 2 and printed == [] and "line 3 (gw-b)" in capsys.readouterr().err
    assert not out.exists()  # gw-a, checked first, was not written either; no trust store
