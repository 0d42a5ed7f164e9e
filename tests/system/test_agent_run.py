"""`edge-gateway run --config FILE`: a firmware node on a real pty, pyserial, the pipeline, HTTP to a receiver."""

import signal
import subprocess
import sys
import time


from tools.sim.harness import PtyNode
from gateway.adapters.keys import TrustStore
from backend.receiver import Receiver, ReceiverServer
from tests.support import write_agent_config

EG = [sys.executable, "-m", "gateway.cli"]


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_run_serial_node_to_receiver_and_sigterm(tmp_path):
    node = PtyNode("line_node", ["--sensors", 2, "--rate", 10, "--prefix", "unit"], link=str(tmp_path / "ttyB"))
    node.start()
    cfg, key = write_agent_config(tmp_path, node.path, "http://127.0.0.1:1/placeholder")
    receiver = Receiver(str(tmp_path / "rx.sqlite"), TrustStore({"keys": [key.jwk("gw-run")]}))
    server = ReceiverServer(receiver).start()
    text = open(cfg).read().replace("http://127.0.0.1:1/placeholder", server.url)
    open(cfg, "w").write(text)
    agent = subprocess.Popen(EG + ["run", "--config", cfg], stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: receiver.stats()["records"] >= 60, 20), receiver.stats()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(15) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
        node.stop()
        server.stop()
    rows = receiver.query("SELECT n, v FROM records WHERE n LIKE 'gw-run/unit-%/n'")
    temps = receiver.query("SELECT u FROM records WHERE n LIKE 'gw-run/unit-%/temp'")
    receiver.close()
    seen = {}
    for name, v in rows:
        seen.setdefault(name, []).append(int(v))
    assert set(seen) == {"gw-run/unit-1/n", "gw-run/unit-2/n"}
    for values in seen.values():
        assert sorted(values) == list(range(min(values), max(values) + 1))
    assert temps and {u for (u,) in temps} == {"Cel"}


def test_run_refuses_bad_config_and_missing_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[store]\nmax_bytes = \"lots\"\n")
    proc = subprocess.run(EG + ["run", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78 and "store.max_bytes" in proc.stderr and "must be an integer" in proc.stderr
    cfg.write_text('[gateway]\nstate_dir = "%s"\n[uplink]\nurl = "http://127.0.0.1:9/"\n' % (tmp_path / "s"))
    proc = subprocess.run(EG + ["run", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "provision" in proc.stderr
    assert "Traceback" not in proc.stderr
