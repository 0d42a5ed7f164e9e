"""edge-gateway provision: keys, configs, the trust store, bulk CSV, rotation, retirement and the first-boot bundle."""

import argparse
import io
import json
import os
import stat
import subprocess

import pytest

from gateway.app import config
from gateway.adapters import keys
from tools import provision, wheelhouse
from gateway.core import wire
from gateway.core.errors import VerifyError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*argv):
    parser = argparse.ArgumentParser()
    provision.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["provision"] + list(argv))
    out = io.StringIO()
    rc = provision.cmd_provision(args, out)
    return rc, [json.loads(l) for l in out.getvalue().splitlines()]


def batch(key, gw, seq=0):
    return wire.sign(wire.encode_payload(gw, 1, seq, True, [{0: "s1/temp", 1: "Cel", 2: 21.5}]), key)


def test_single_gateway_key_config_enrollment_and_trust(tmp_path):
    out = str(tmp_path / "out")
    rc, (rec,) = run("--gateway-id", "gw-001", "--uplink", "https://ingest.example/v1/batches", "--out", out)
    assert rc == 0
    key_path = os.path.join(out, "gw-001", "key.pem")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    key = keys.load_private(key_path)
    assert rec["kid"] == key.kid and rec["fingerprint"] == keys.fingerprint(key.public)
    assert rec["jwk"] == key.jwk("gw-001") and rec["jwk"]["gw"] == "gw-001"
    cfg = config.load(os.path.join(out, "gw-001", "config.toml"))
    assert cfg.gateway.id == "gw-001" and cfg.uplink.url == "https://ingest.example/v1/batches"
    assert cfg.state_path(cfg.gateway.key) == "/var/lib/edge-gateway/key.pem"
    trust = keys.TrustStore.load(os.path.join(out, "jwks.json"))
    assert wire.verify(batch(key, "gw-001"), trust).gw == "gw-001"
    with pytest.raises(VerifyError):  # the JWK's gw binds the key to its gateway
        wire.verify(batch(key, "gw-002"), trust)


def test_rerun_is_idempotent_and_never_replaces_the_key(tmp_path):
    out = str(tmp_path / "out")
    _, (a,) = run("--gateway-id", "gw-1", "--uplink", "http://a.example/", "--out", out)
    pem = open(os.path.join(out, "gw-1", "key.pem"), "rb").read()
    _, (b,) = run("--gateway-id", "gw-1", "--uplink", "http://b.example/", "--out", out)
    assert a["kid"] == b["kid"] and open(os.path.join(out, "gw-1", "key.pem"), "rb").read() == pem
    assert config.load(b["config"]).uplink.url == "http://b.example/"  # config follows the new arguments
    assert len(json.load(open(os.path.join(out, "jwks.json")))["keys"]) == 1


def test_mqtt_sensors_and_bad_input(tmp_path):
    sensors = tmp_path / "s.toml"
    sensors.write_text('[[sources]]\ntype = "serial"\nname = "gps"\nport = "/dev/edge-gateway/gps"\n')
    rc, (rec,) = run("--gateway-id", "gw-m", "--mqtt", "mqtts://broker.example:8884/plant", "--sensors",
                     str(sensors), "--out", str(tmp_path / "o"))
    cfg = config.load(rec["config"])
    assert (cfg.uplink.kind, cfg.uplink.mqtt.host, cfg.uplink.mqtt.port, cfg.uplink.mqtt.topic_prefix,
            cfg.uplink.mqtt.tls) == ("mqtt", "broker.example", 8884, "plant", True)
    assert cfg.sources[0]["port"] == "/dev/edge-gateway/gps"
    assert run("--gateway-id", "bad id!", "--uplink", "http://x/", "--out", str(tmp_path / "o"))[0] == 2
    assert run("--gateway-id", "gw-x", "--uplink", "ftp://x/", "--out", str(tmp_path / "o"))[0] == 2
    sensors.write_text('[[sources]]\ntype = "laser"\n')
    assert run("--gateway-id", "gw-y", "--uplink", "http://x/", "--sensors", str(sensors),
               "--out", str(tmp_path / "o"))[0] == 2
    assert not os.path.exists(tmp_path / "o" / "gw-y")  # nothing half-written for a rejected config


def test_pin_uses_console_hash_when_available(tmp_path):
    try:
        from gateway.app.console.auth import hash_pin  # noqa: F401 (written in parallel by the console helper)
    except ImportError:
        rc, _ = run("--gateway-id", "gw-p", "--uplink", "http://x/", "--pin", "123456", "--out", str(tmp_path))
        assert rc == 2  # never silently leaves the console without its PIN
        return
    rc, (rec,) = run("--gateway-id", "gw-p", "--uplink", "http://x/", "--pin", "123456", "--out", str(tmp_path))
    pin_hash = config.load(rec["config"]).console.pin_hash
    assert rc == 0 and pin_hash and "123456" not in pin_hash


def test_bulk_50_gateways_one_trust_store_and_rotation(tmp_path):
    csv_path = tmp_path / "fleet.csv"
    rows = ["gateway_id,uplink,mqtt"]
    for i in range(50):
        rows.append("site-%02d,https://ingest.example/v1/batches,%s" % (i, "mqtt://b.example:1883/e" if i % 5 == 0
                                                                         else ""))
    csv_path.write_text("\n".join(rows) + "\n")
    out = str(tmp_path / "fleet")
    rc, recs = run("--csv", str(csv_path), "--out", out)
    assert rc == 0 and len(recs) == 50 and len({r["kid"] for r in recs}) == 50
    trust = keys.TrustStore.load(os.path.join(out, "jwks.json"))
    old_batches = {}
    for r in recs:
        assert stat.S_IMODE(os.stat(r["key"]).st_mode) == 0o600
        key = keys.load_private(r["key"])
        data = batch(key, r["gateway_id"])
        assert wire.verify(data, trust).gw == r["gateway_id"]
        old_batches[r["gateway_id"]] = (data, r["kid"])
    assert config.load(recs[5]["config"]).uplink.kind == "mqtt"

    # Rotate the whole fleet: new keys, old kids kept (retired-pending) so queued batches still verify.
    rc, rotated = run("--csv", str(csv_path), "--out", out, "--rotate")
    doc = json.load(open(os.path.join(out, "jwks.json")))
    assert rc == 0 and len(doc["keys"]) == 100
    trust = keys.TrustStore.load(os.path.join(out, "jwks.json"))
    for r in rotated:
        old, old_kid = old_batches[r["gateway_id"]]
        assert r["rotated_from"] == old_kid and r["kid"] != old_kid
        assert wire.verify(old, trust).gw == r["gateway_id"]
        assert wire.verify(batch(keys.load_private(r["key"]), r["gateway_id"], 1), trust).seq == 1
    status = {k["kid"]: k.get("status") for k in doc["keys"]}
    assert status[old_batches["site-07"][1]] == "retired-pending" and status[rotated[7]["kid"]] is None

    # Retire one old kid: its batches stop verifying, everyone else's still do.
    rc, _ = run("--retire", old_batches["site-07"][1], "--out", out)
    assert rc == 0
    trust = keys.TrustStore.load(os.path.join(out, "jwks.json"))
    with pytest.raises(VerifyError):
        wire.verify(old_batches["site-07"][0], trust)
    assert wire.verify(old_batches["site-08"][0], trust).gw == "site-08"
    # A current key cannot be retired by mistake.
    assert run("--retire", rotated[8]["kid"], "--out", out)[0] == 2


def test_bulk_rejects_bad_csv(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("gateway_id,uplink,colour\ngw-1,http://x/,red\n")
    assert run("--csv", str(bad), "--out", str(tmp_path / "o"))[0] == 2
    bad.write_text("gateway_id,uplink\ngw-1,http://x/\ngw-1,http://y/\n")
    assert run("--csv", str(bad), "--out", str(tmp_path / "o"))[0] == 2


def test_first_boot_bundle(tmp_path, tmp_path_factory):
    wheels = tmp_path_factory.getbasetemp() / "wheelhouse"
    if not wheels.exists():
        tmp = tmp_path_factory.getbasetemp() / "wheelhouse.tmp-p"
        wheelhouse.from_environment(str(tmp))
        tmp.rename(wheels)
    bundle = tmp_path / "boot" / "edge-gateway"
    rc, (rec,) = run("--gateway-id", "gw-pi-1", "--uplink", "https://ingest.example/v1/batches", "--out",
                     str(tmp_path / "o"), "--bundle", str(bundle), "--wheelhouse", str(wheels))
    assert rc == 0 and rec["bundle"] == str(bundle)
    for name in ("firstboot.sh", "user-data.example", "config.toml", "key.pem", "deploy/install.sh",
                 "deploy/systemd/edge-gateway.service", "deploy/udev/99-edge-gateway-serial.rules", "SHA256SUMS"):
        assert (bundle / name).exists(), name
    assert stat.S_IMODE(os.stat(bundle / "key.pem").st_mode) == 0o600
    assert keys.load_private(str(bundle / "key.pem")).kid == rec["kid"]
    assert any(n.startswith("edge_gateway-") for n in os.listdir(bundle / "wheelhouse"))
    sums = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=str(bundle), capture_output=True)
    assert sums.returncode == 0
    (bundle / "config.toml").write_text("tampered")
    assert subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=str(bundle),
                          capture_output=True).returncode != 0
    assert "firstboot.sh" in (bundle / "user-data.example").read_text()


def test_update_trust_never_rebinds_a_kid_to_another_gateway(tmp_path):
    from gateway.adapters.keys import SigningKey
    from tools.provision import ProvisionError, update_trust
    path = str(tmp_path / "jwks.json")
    key = SigningKey.generate()
    update_trust(path, add=[key.jwk("gw-a")])
    with pytest.raises(ProvisionError, match="refusing to rebind"):
        update_trust(path, add=[key.jwk("gw-b")])
    import json
    assert [k["gw"] for k in json.load(open(path))["keys"]] == ["gw-a"]
