"""deploy/: the hardened systemd unit, udev rules, and install/upgrade/uninstall into a temporary root.

The wheelhouse is built once per session (the ``wheels`` fixture) with ``tools.wheelhouse.from_environment``
(offline: this machine's installed wheels repacked), and install.sh makes a real virtualenv from it with ``pip install --no-index``. That
is the path a gateway takes, minus the network, and costs ~3 s; ``--system-site-packages`` + ``--no-deps`` would be
faster but would not prove that the wheelhouse is complete.
"""

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile

import pytest

from tools import wheelhouse
from tests.support import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
UNIT = os.path.join(DEPLOY, "systemd", "edge-gateway.service")
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
PY = sys.executable
needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


def tree(root):
    """Every path under root (relative), with its kind: what 'the file tree' means for install/uninstall."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(folder, name)
            kind = "l" if os.path.islink(full) else "d" if os.path.isdir(full) else "f"
            out[os.path.relpath(full, root)] = kind
    return out


def sh(script, *args, env=None, check=True, timeout=60):
    proc = subprocess.run(["sh", os.path.join(DEPLOY, script)] + list(args), capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))
    if check and proc.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s\n%s" % (script, proc.returncode, proc.stdout, proc.stderr))
    return proc


def provision(out, gw, uplink, *extra):
    proc = subprocess.run([PY, "-m", "gateway.cli", "provision", "--gateway-id", gw, "--uplink", uplink,
                           "--out", out] + list(extra), capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc


# -- the unit ----------------------------------------------------------------------------------------------------
def verify_copy(tmp_path, text):
    """systemd-analyze verify needs ExecStart to exist: check a copy that points at a real binary."""
    path = tmp_path / "edge-gateway.service"
    path.write_text(text.replace("/opt/edge-gateway/current/bin/edge-gateway", shutil.which("true")))
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True,
                          timeout=60)


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path):
    text = open(UNIT).read()
    good = verify_copy(tmp_path, text)
    assert good.returncode == 0, good.stderr
    assert "edge-gateway.service" not in good.stderr, good.stderr
    # The same check does catch a broken unit, so the pass above means something.
    bad = verify_copy(tmp_path, text.replace("Restart=on-failure", "Restart=sometimes"))
    assert "restart specifier" in bad.stderr and "edge-gateway.service:" in bad.stderr


@needs_systemd_analyze
def test_unit_exposure_is_at_most_2(capsys):
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", UNIT],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for edge-gateway\.service: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout[-2000:] + proc.stderr
    score = float(m.group(1))
    with capsys.disabled():
        print("\nsystemd-analyze security: overall exposure %.1f" % score)
    assert score <= 2.0


def test_unit_hardening_settings_present():
    text = open(UNIT).read()
    settings = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            settings.setdefault(k, []).append(v)
    assert settings["User"] == ["edge-gateway"]
    assert set(settings["SupplementaryGroups"][0].split()) == {"dialout", "bluetooth"}
    assert settings["CapabilityBoundingSet"] == [""]
    assert settings["ProtectSystem"] == ["strict"] and settings["StateDirectory"] == ["edge-gateway"]
    assert "AF_UNIX" in settings["RestrictAddressFamilies"][0] and settings["MemoryDenyWriteExecute"] == ["yes"]
    assert {"char-ttyUSB rw", "char-ttyACM rw", "char-ttyAMA rw", "char-ttyGS rw"} <= set(settings["DeviceAllow"])
    # The agent speaks sd_notify (gateway/app/watchdog.py): readiness, and keep-alives from its event loop.
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert settings["WatchdogSec"] == ["30s"]
    # After every stop, systemd's verdict is kept for the next start's "last stop" (restart_reason.py).
    # Then the update supervisor, as root and independent of every installed version (deploy/supervise.sh).
    assert settings["ExecStopPost"] == ["-/opt/edge-gateway/current/bin/edge-gateway record-stop --config "
                                        "/etc/edge-gateway/config.toml",
                                        "-+/bin/sh /opt/edge-gateway/supervise.sh stopped"]
    assert settings["ExecStartPre"] == ["-+/bin/sh /opt/edge-gateway/supervise.sh start"]
    # A config error exits 78 (EX_CONFIG), a bad key 2: systemd must not restart either in a loop.
    assert {"2", "78"} <= set(settings["RestartPreventExitStatus"][0].split())


def test_runtime_works_without_writable_executable_memory():
    """MemoryDenyWriteExecute=yes: run key generation, signing, CBOR, cffi and dbus-fast under PR_SET_MDWE."""
    code = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:   # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    print("NO-MDWE"); sys.exit(0)
import mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("MDWE-NOT-ENFORCED"); sys.exit(3)
except OSError:
    pass
import cffi, cbor2, dbus_fast, serial, paho.mqtt.client
from gateway.adapters.keys import SigningKey, TrustStore
from gateway.core import wire
from gateway.core.clock import kernel_clock_synced
key = SigningKey.generate()
data = wire.sign(wire.encode_payload("gw-1", 1, 0, True, [{0: "s1/temp", 1: "Cel", 2: 1.5}]), key)
b = wire.verify(data, TrustStore({"keys": [key.jwk("gw-1")]}))
kernel_clock_synced()
print("OK", b.seq)
"""
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    if "NO-MDWE" in proc.stdout:
        pytest.skip("kernel without PR_SET_MDWE")
    assert proc.returncode == 0 and "OK 0" in proc.stdout, proc.stdout + proc.stderr


def test_udev_rules_are_well_formed():
    ops = re.compile(r'^\s*(?:[A-Z]+(?:\{[^}]+\})?)\s*(==|!=|\+=|=|:=)\s*"[^"]*"\s*$')
    names = []
    for line in open(os.path.join(DEPLOY, "udev", "99-edge-gateway-serial.rules")):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for part in line.split(", "):
            assert ops.match(part), "bad udev clause %r in %r" % (part, line)
        names += re.findall(r'SYMLINK\+="edge-gateway/([^"]+)"', line)
    assert "console" in names and any(n.startswith("usb-") for n in names)
    assert 'KERNEL=="ttyGS0"' in open(os.path.join(DEPLOY, "udev", "99-edge-gateway-serial.rules")).read()


# -- install, run, doctor, uninstall -----------------------------------------------------------------------------
def start_receiver(trust, db):
    # The backend runs from this checkout (it is not in the gateway's wheel): the test's own interpreter.
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "receive", "--listen", "127.0.0.1:0",
                             "--trust", trust, "--db", db, "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"receiving on (http://\S+)", line)
    assert m, line + proc.stderr.read()
    return proc, m.group(1)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def count_records(db, gw):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*) FROM records WHERE gw = ?", (gw,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def test_install_run_doctor_uninstall(tmp_path, wheels):
    from tools.sim.harness import PtyNode
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("gw\n")  # a host file install must not touch
    before = tree(root)
    prov, dev = str(tmp_path / "prov"), tmp_path / "dev"
    dev.mkdir()
    state = str(root / "var" / "lib" / "edge-gateway")
    node = PtyNode("line_node", ["--sensors", "2", "--rate", "5"], link=str(dev / "board1")).start()
    receiver = agent = None
    try:
        sensors = tmp_path / "sensors.toml"
        sensors.write_text('[[sources]]\ntype = "serial"\nname = "board1"\nport = "%s"\nprotocol = "lines"\n'
                           'baud = 115200\n' % node.path)
        t0 = time.monotonic()
        first = provision(prov, "gw-site-1", "http://127.0.0.1:9/", "--state-dir", state, "--sensors", str(sensors))
        r = sh("install.sh", "--root", str(root), "--wheelhouse", wheels, "--config", prov + "/gw-site-1/config.toml",
               "--key", prov + "/gw-site-1/key.pem", "--python", BASE_PYTHON)
        install_s = time.monotonic() - t0
        venv_bin = str(root / "opt" / "edge-gateway" / "current" / "bin")
        assert "edge-gateway 0.1.0" in r.stdout
        manifest = [l.split("\t") for l in (root / "opt/edge-gateway/install-manifest").read_text().splitlines()]
        assert ["f", "/var/lib/edge-gateway/key.pem"] in manifest
        key = root / "var/lib/edge-gateway/key.pem"
        assert oct(os.stat(key).st_mode & 0o777) == "0o600"
        assert os.path.realpath(root / "usr/local/bin/edge-gateway") == os.path.realpath(venv_bin + "/edge-gateway")
        # The installed venv is self-contained: it does not import from this checkout.
        where = subprocess.run([venv_bin + "/python", "-c", "import gateway; print(gateway.__file__)"],
                               capture_output=True, text=True, cwd=str(tmp_path)).stdout
        assert str(root) in where and ROOT not in where

        # The gateway's install holds no backend: its 'receive' says so instead of failing.
        gone = subprocess.run([venv_bin + "/edge-gateway", "receive", "--listen", "127.0.0.1:0", "--trust", "x",
                               "--db", "y"], capture_output=True, text=True, cwd=str(tmp_path), timeout=30)
        assert gone.returncode == 2 and "not on a gateway" in gone.stderr, gone.stderr
        receiver, url = start_receiver(prov + "/jwks.json", str(tmp_path / "recv.sqlite"))
        # Re-provision with the receiver's real URL: idempotent, same key.
        again = provision(prov, "gw-site-1", url, "--state-dir", state, "--sensors", str(sensors))
        assert json.loads(again.stdout)["kid"] == json.loads(first.stdout)["kid"]
        cfg = root / "etc/edge-gateway/config.toml"
        cfg.write_text(open(prov + "/gw-site-1/config.toml").read() + "\n[batch]\nmax_age_s = 0.5\n")

        doc = subprocess.run([venv_bin + "/python", "-m", "gateway.cli", "doctor", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=30,
                             env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS="unix:path=" + str(tmp_path / "nobus")))
        print(doc.stdout)
        assert doc.returncode == 0, doc.stdout + doc.stderr
        lines = doc.stdout.splitlines()
        assert any(l.startswith("PASS uplink") and "HTTP 204" in l for l in lines)  # the batch endpoint
        assert any(l.startswith("PASS state") for l in lines)
        assert any(l.startswith("PASS serial") for l in lines) and any(l.startswith("PASS key") for l in lines)
        assert any(l.startswith("WARN ble") for l in lines) and not any(l.startswith("FAIL") for l in lines)

        agent = subprocess.Popen([venv_bin + "/edge-gateway", "run", "--config", str(cfg)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def ten_records():
            assert agent.poll() is None, agent.stderr.read()
            return count_records(str(tmp_path / "recv.sqlite"), "gw-site-1") >= 10
        wait_until(ten_records, 20, "ten records from the installed agent at the receiver", interval=0.2)
        assert count_records(str(tmp_path / "recv.sqlite"), "gw-site-1") >= 10
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(15) == 0
    finally:
        for p in (agent, receiver):
            if p is not None:
                stop(p)
        node.stop()
    installed = tree(root)
    sh("uninstall.sh", "--root", str(root))
    after = tree(root)
    added = set(installed) - set(before)
    assert set(before) <= set(after)  # nothing of the host's was removed
    left = set(after) - set(before)
    # What stays is only what the agent itself wrote (its queue) and the directories holding it.
    assert left and all(p == "var" or p.startswith("var/lib") for p in left), sorted(left)
    assert not any(p.endswith("key.pem") or p.startswith(("opt", "etc/", "usr")) for p in left)
    assert len(added) > 100  # the venv really was there
    print("install took %.1f s" % install_s)


def test_firstboot_leaves_no_secret_on_the_boot_partition(tmp_path, wheels):
    """The bundle on the (FAT, world-readable) boot partition holds the key and the config with the PIN hash:
    after first boot both live only under /var/lib and /etc/edge-gateway, 0600, and the boot copies are gone."""
    root = tmp_path / "root"
    boot = root / "boot" / "firmware"
    bundle = boot / "edge-gateway"
    boot.mkdir(parents=True)
    hook = " systemd.run=/boot/firmware/edge-gateway/firstboot.sh systemd.run_success_action=reboot"
    (boot / "cmdline.txt").write_text("console=serial0,115200 root=PARTUUID=1-02 rootwait" + hook + "\n")
    provision(str(tmp_path / "prov"), "gw-fb-1", "https://ingest.example/v1/batches", "--pin", "135790",
              "--bundle", str(bundle), "--wheelhouse", wheels)
    pin_hash = [l for l in (bundle / "config.toml").read_text().splitlines() if l.startswith("pin_hash")][0]
    assert "scrypt$" in pin_hash
    env = {"DESTDIR": str(root), "PYTHON": BASE_PYTHON, "FIRSTBOOT_LOG": str(tmp_path / "firstboot.log")}
    proc = subprocess.run(["sh", str(bundle / "firstboot.sh")], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **env))
    log = (tmp_path / "firstboot.log").read_text()
    assert proc.returncode == 0, log
    cfg, key = root / "etc/edge-gateway/config.toml", root / "var/lib/edge-gateway/key.pem"
    assert pin_hash in cfg.read_text() and oct(os.stat(cfg).st_mode & 0o777) == "0o600"
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert not (bundle / "config.toml").exists() and not (bundle / "key.pem").exists()
    for folder, _, names in os.walk(boot):
        for name in names:
            data = open(os.path.join(folder, name), "rb").read()
            assert pin_hash.split("$")[-1].encode() not in data and b"PRIVATE KEY" not in data, name
    assert "firstboot.sh" not in (boot / "cmdline.txt").read_text()  # the hook runs once
    again = subprocess.run(["sh", str(bundle / "firstboot.sh")], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, **env))
    assert again.returncode == 0 and "already installed" in (tmp_path / "firstboot.log").read_text()


def fake_broken_wheel(dest, version="0.1.1"):
    """An edge-gateway wheel whose CLI crashes at start: the upgrade must refuse it and keep the old venv."""
    files = {"gateway/__init__.py": b"__version__ = %r\n" % version,
             "gateway/cli.py": b"def main():\n    raise SystemExit('broken build')\n"}
    info = {"METADATA": b"Metadata-Version: 2.1\nName: edge-gateway\nVersion: %s\n" % version.encode(),
            "WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            "entry_points.txt": b"[console_scripts]\nedge-gateway = gateway.cli:main\n"}
    return wheelhouse.write_wheel(dest, "edge-gateway", version, "py3-none-any", files, info)


def installed_venvs(base):
    return sorted("%s/%s" % (d, n) for d in ("versions", "venvs") if (base / d).is_dir() for n in os.listdir(base / d))


def test_upgrade_keeps_previous_and_rolls_back(tmp_path, wheels):
    root = tmp_path / "root"
    root.mkdir()
    before = tree(root)
    prov = str(tmp_path / "prov")
    provision(prov, "gw-up-1", "http://127.0.0.1:9/", "--state-dir", str(root / "var/lib/edge-gateway"))
    sh("install.sh", "--root", str(root), "--wheelhouse", wheels, "--config", prov + "/gw-up-1/config.toml",
       "--key", prov + "/gw-up-1/key.pem", "--python", BASE_PYTHON)
    base = root / "opt/edge-gateway"
    first = os.readlink(base / "current")

    time.sleep(1.1)  # kept: venv names carry a timestamp in seconds, so the upgrade must start in a later second
    sh("upgrade.sh", "--root", str(root), "--wheelhouse", wheels, "--python", BASE_PYTHON)
    second = os.readlink(base / "current")
    assert second != first and (base / "previous").read_text().strip() == first
    # install.sh's versions/<version> and upgrade.sh's venvs/<stamp> side by side; older ones pruned
    assert first == "versions/0.1.0" and installed_venvs(base) == sorted([first, second])

    broken = tmp_path / "broken"
    shutil.copytree(wheels, broken)
    fake_broken_wheel(str(broken))
    r = sh("upgrade.sh", "--root", str(root), "--wheelhouse", str(broken), "--python", BASE_PYTHON, check=False)
    assert r.returncode != 0 and "still running" in r.stderr
    assert os.readlink(base / "current") == second  # untouched
    assert len(installed_venvs(base)) == 2  # the failed venv was removed
    ok = subprocess.run([str(base / "current/bin/edge-gateway"), "--version"], capture_output=True, text=True)
    assert "0.1.0" in ok.stdout

    sh("upgrade.sh", "--root", str(root), "--rollback")
    assert os.readlink(base / "current") == first

    sh("uninstall.sh", "--root", str(root), "--purge")
    assert tree(root) == before


def test_install_refuses_twice_and_uninstall_needs_manifest(tmp_path, wheels):
    root = tmp_path / "root"
    r = sh("uninstall.sh", "--root", str(tmp_path), check=False)
    assert r.returncode == 1 and "nothing installed" in r.stderr
    root.mkdir()
    (root / "opt/edge-gateway").mkdir(parents=True)
    (root / "opt/edge-gateway/install-manifest").write_text("")
    r = sh("install.sh", "--root", str(root), "--wheelhouse", wheels, check=False)
    assert r.returncode == 1 and "already installed" in r.stderr


def test_wheelhouse_wheels_are_valid_zip_with_record(wheels):
    names = os.listdir(wheels)
    assert any(n.startswith("edge_gateway-0.1.0-py3-none-any") for n in names)
    assert any(n.startswith("cryptography-") for n in names) and any(n.startswith("pip-") for n in names)
    with zipfile.ZipFile(os.path.join(wheels, [n for n in names if n.startswith("edge_gateway")][0])) as zf:
        listing = zf.namelist()
        record = zf.read("edge_gateway-0.1.0.dist-info/RECORD").decode()
    assert "gateway/app/agent.py" in listing and "gateway/app/agent.py,sha256=" in record
    assert "drivers/serial/nmea.py" in listing
    # What does not run on a gateway does not ship in its wheel (docs/architecture.md).
    assert not any(n.split("/")[0] in ("backend", "tools", "firmware_sim") for n in listing), sorted(
        {n.split("/")[0] for n in listing})
    assert not any("__pycache__" in n or n.startswith("tests/") for n in listing)
