"""edge-gateway doctor: each check against the real thing (files, a loopback HTTPS server, BlueZ on a private bus)."""

import argparse
import dataclasses
import datetime
import http.server
import io
import json
import ipaddress
import os
import shutil
import ssl
import threading

import pytest

from gateway.app import doctor
from gateway.adapters import keys
from tools import provision
from gateway.app.config import load

pytestmark = pytest.mark.timeout(60)


def make_gateway(tmp_path, uplink="http://127.0.0.1:9/", sources=""):
    state = tmp_path / "state"
    rec, _, _ = provision.provision_one(str(tmp_path / "prov"), "gw-doc", uplink=uplink, state_dir=str(state))
    state.mkdir(mode=0o700)
    shutil.copy(rec["key"], state / "key.pem")
    os.chmod(state / "key.pem", 0o600)
    cfg = tmp_path / "config.toml"
    cfg.write_text(open(rec["config"]).read() + sources)
    return str(cfg), state / "key.pem"


def doctor_run(cfg, quick=False):
    parser = argparse.ArgumentParser()
    doctor.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["doctor", "--config", cfg] + (["--quick"] if quick else []))
    out = io.StringIO()
    rc = doctor.cmd_doctor(args, out)
    return rc, out.getvalue().splitlines()


def line(lines, name):
    found = [l for l in lines if l.split()[1:2] == [name]]
    assert found, "\n".join(lines)
    return found[0]


def test_quick_passes_on_a_provisioned_gateway_and_fails_on_open_key(tmp_path):
    cfg, key = make_gateway(tmp_path)
    rc, lines = doctor_run(cfg, quick=True)
    assert rc == 0 and line(lines, "config").startswith("PASS") and line(lines, "key").startswith("PASS")
    assert keys.load_private(str(key)).kid in line(lines, "key")
    os.chmod(key, 0o644)
    rc, lines = doctor_run(cfg, quick=True)
    assert rc == 1 and line(lines, "key").startswith("FAIL") and "chmod 600" in line(lines, "key")
    os.unlink(key)
    rc, lines = doctor_run(cfg, quick=True)
    assert rc == 1 and "does not exist" in line(lines, "key")


def test_bad_config_fails_with_file_and_key(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[store]\nmax_bytes = "lots"\n')
    rc, lines = doctor_run(str(cfg))
    assert rc == 1 and line(lines, "config").startswith("FAIL") and "store.max_bytes" in line(lines, "config")


def test_serial_missing_and_disk_bound(tmp_path):
    port = tmp_path / "ttyFAKE"
    cfg, _ = make_gateway(tmp_path, sources='\n[[sources]]\ntype = "serial"\nname = "b1"\nport = "%s"\n' % port)
    c = load(cfg)
    assert doctor.check_serial(c)[0].status == "FAIL"
    port.write_text("")
    os.chmod(port, 0o600)
    assert doctor.check_serial(c)[0].status == "PASS"
    free = shutil.disk_usage(tmp_path).free
    c.store.max_bytes = free * 4
    assert doctor.check_disk(c).status == "FAIL"
    c.store.max_bytes = 1 << 20
    assert doctor.check_disk(c).status == "PASS"


def test_clock_is_a_warning_not_a_failure():
    assert doctor.check_clock(synced=False).status == "WARN"
    assert doctor.check_clock(synced=True).status == "PASS"


# -- uplink over real loopback HTTP(S) --------------------------------------------------------------------------
def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "receiver.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp_path / "cert.pem", tmp_path / "cert.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return str(crt), str(pem)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_OPTIONS(self):  # doctor's probe
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def https_server(tmp_path):
    crt, pem = self_signed(tmp_path)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.status = 405
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, pem)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv, "https://127.0.0.1:%d/v1/batches" % srv.server_address[1], crt
    srv.shutdown()
    srv.server_close()


def test_uplink_tls_verified_with_ca_file_and_fails_without(tmp_path, https_server):
    srv, url, crt = https_server
    cfg, _ = make_gateway(tmp_path, uplink=url)
    c = load(cfg)
    bad = doctor.check_uplink(c)
    assert bad.status == "FAIL" and "certificate" in bad.detail
    c.uplink.ca_file = crt
    good = doctor.check_uplink(c)
    assert good.status == "PASS" and "HTTP 405" in good.detail and "TLS verified" in good.detail
    srv.status = 503
    assert doctor.check_uplink(c).status == "WARN"


def test_uplink_refused_is_a_failure(tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cfg, _ = make_gateway(tmp_path, uplink="http://127.0.0.1:%d/" % port)
    rc, lines = doctor_run(cfg)
    assert rc == 1 and line(lines, "uplink").startswith("FAIL") and "unreachable" in line(lines, "uplink")


# -- BLE over BlueZ on a private D-Bus ---------------------------------------------------------------------------
BLE_SOURCE = '\n[[sources]]\ntype = "ble"\nname = "tags"\n'


def test_ble_without_bluez_warns_or_fails_by_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=%s" % (tmp_path / "no-bus"))
    cfg, _ = make_gateway(tmp_path)
    assert doctor.check_ble(load(cfg)).status == "WARN"
    cfg2 = tmp_path / "ble.toml"
    cfg2.write_text(open(cfg).read() + BLE_SOURCE)
    assert doctor.check_ble(load(str(cfg2))).status == "FAIL"


@pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed")
def test_ble_adapter_powered_over_dbus(tmp_path):
    pytest.importorskip("dbusmock")
    dbus = pytest.importorskip("dbus")
    from tools.sim.bluez_mock import BluezMock
    cfg, _ = make_gateway(tmp_path)
    cfg2 = tmp_path / "ble.toml"
    cfg2.write_text(open(cfg).read() + BLE_SOURCE)
    c = load(str(cfg2))
    with BluezMock() as bt:
        ok = doctor.check_ble(c)
        assert ok.status == "PASS" and "hci0" in ok.detail
        bt._obj(bt._adapter_path()).UpdateProperties("org.bluez.Adapter1", {"Powered": dbus.Boolean(False)})
        off = doctor.check_ble(c)
        assert off.status == "FAIL" and "powered off" in off.detail


def test_operators_trust_store(tmp_path):
    """Doctor checks the downlink's trust root: present, valid public keys, none bound to a gateway, not writable
    by others; quick, so it also runs before an upgrade."""
    from gateway.adapters.keys import SigningKey
    cfg, _ = make_gateway(tmp_path)
    assert not [l for l in doctor_run(cfg, quick=True)[1] if l.split()[1:2] == ["operators"]]  # downlink off
    ops = tmp_path / "operators.jwks.json"
    with open(cfg, "a") as f:
        f.write('\n[downlink]\noperators = "%s"\n' % ops)
    rc, lines = doctor_run(cfg, quick=True)
    assert rc == 1 and "does not exist" in line(lines, "operators")
    key = SigningKey.generate()
    keys.write_jwks(str(ops), {"keys": [key.jwk()]})
    os.chmod(ops, 0o644)
    rc, lines = doctor_run(cfg, quick=True)
    assert rc == 0 and line(lines, "operators").startswith("PASS") and key.kid in line(lines, "operators")
    os.chmod(ops, 0o666)
    rc, lines = doctor_run(cfg, quick=True)
    assert rc == 1 and "chmod 644" in line(lines, "operators")
    os.chmod(ops, 0o644)
    for doc, words in (({"keys": [key.jwk("gw-doc")]}, "bound to gateway"), ({"nokeys": []}, "not a JWK Set"),
                       ({"keys": [dict(key.jwk(), x="AAAA")]}, "invalid x")):
        ops.write_text(json.dumps(doc))
        rc, lines = doctor_run(cfg, quick=True)
        assert rc == 1 and words in line(lines, "operators"), lines
    ops.write_text("{")
    assert "not valid JSON" in line(doctor_run(cfg, quick=True)[1], "operators")


# -- actuator boards, Home Assistant's broker, the metrics port ---------------------------------------------------
ACTIONS = '\n[[actuators]]\nname = "ward-3"\nport = "%s"\n\n[[actions]]\nname = "buzz"\non = "alarm"\n' \
          'actuator = "ward-3"\nchannel = "buzzer"\n'


def test_each_actuator_port_is_checked_like_a_serial_source(tmp_path):
    master, slave = os.openpty()  # a real pseudo-terminal, as a USB serial adapter is a tty
    try:
        cfg, _ = make_gateway(tmp_path, sources=ACTIONS % os.ttyname(slave))
        rc, lines = doctor_run(cfg)
        assert line(lines, "actuator") == "PASS actuator ward-3: %s" % os.path.realpath(os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)
    cfg, _ = make_gateway(tmp_path / "gone", sources=ACTIONS % "/dev/edge-gateway/usb-ward3-board")
    rc, lines = doctor_run(cfg)
    assert rc == 1 and line(lines, "actuator").startswith("FAIL actuator ward-3: /dev/edge-gateway/usb-ward3-board "
                                                          "does not exist")
    assert "ls -l /dev/edge-gateway/" in line(lines, "actuator")


def test_home_assistant_broker_reachable_or_a_failure_with_the_key(tmp_path):
    from tests.support import closed_port
    from tests.support.mosquitto import Broker
    cfg, _ = make_gateway(tmp_path)
    assert doctor.check_homeassistant(load(cfg)) is None  # off: no line
    with Broker(tmp_path / "mqtt") as broker:
        with open(cfg, "a") as f:
            f.write('\n[homeassistant]\nenabled = true\nbroker = "mqtt://ha:secret@127.0.0.1:%d"\n' % broker.port)
        ok = doctor.check_homeassistant(load(cfg))
        assert ok.status == "PASS" and "127.0.0.1:%d reachable" % broker.port in ok.detail
        os.chmod(cfg, 0o644)  # its password is in the config: others must not read it
        secrets = doctor.check_config_mode(load(cfg))
        assert secrets.status == "WARN" and "homeassistant.broker password" in secrets.detail
        tls = load(cfg)
        tls.homeassistant = dataclasses.replace(tls.homeassistant, broker="mqtts://127.0.0.1:%d" % broker.port)
        bad = doctor.check_homeassistant(tls)
        assert bad.status == "FAIL" and "TLS failed" in bad.detail  # a plain listener where TLS is expected
    c = load(cfg)
    c.homeassistant = dataclasses.replace(c.homeassistant, broker="mqtt://127.0.0.1:%d" % closed_port())
    rc_line = doctor.check_homeassistant(c).line()
    assert rc_line.startswith("FAIL homeassistant") and "unreachable" in rc_line and "homeassistant.broker" in rc_line


@pytest.fixture
def metrics_server():
    """A real metrics listener (the agent's ``MetricsServer``) on a loop thread, serving one gateway's build line."""
    import asyncio
    from gateway.adapters.metrics_http import MetricsServer
    from gateway.core.openmetrics import CONTENT_TYPE, Family, render
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def serve(gw):
        build = Family("edge_gateway_build", "info", "the agent's version and gateway id")
        build.add(1, version="0.1.0", gw=gw)
        server = MetricsServer(lambda: render([build]), CONTENT_TYPE)
        return asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(10)
    yield serve
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_metrics_port_free_served_by_this_agent_or_taken(tmp_path, metrics_server):
    import socket
    from tests.support import closed_port
    cfg, _ = make_gateway(tmp_path)
    assert doctor.check_metrics(load(cfg)) is None  # off: no line
    c = load(cfg)
    port = closed_port()
    c.metrics.listen = "127.0.0.1:%d" % port
    free = doctor.check_metrics(c)
    assert free.status == "PASS" and "free" in free.detail
    with socket.socket() as other:  # another program holds the port
        other.bind(("127.0.0.1", port))
        other.listen()
        taken = doctor.check_metrics(c)
    assert taken.status == "FAIL" and "in use by another program" in taken.detail and "exit 78" in taken.detail
    assert "sport = :%d" % port in taken.fix
    c.metrics.listen = "127.0.0.1:%d" % metrics_server("gw-doc").port  # this gateway's agent, running
    ours = doctor.check_metrics(c)
    assert ours.status == "PASS" and "served by the running agent" in ours.detail
    c.metrics.listen = "127.0.0.1:%d" % metrics_server("gw-other").port  # another gateway's agent
    assert doctor.check_metrics(c).status == "FAIL"
    c.metrics.listen, c.metrics.allow_remote = "192.0.2.7:9108", True  # TEST-NET-1: not an address of this machine
    absent = doctor.check_metrics(c)
    assert absent.status == "FAIL" and "cannot listen" in absent.detail and "ip -brief addr" in absent.fix
