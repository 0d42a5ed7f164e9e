"""The metrics endpoint of a real `edge-gateway run` process, scraped over loopback: a line-protocol node on a pty
and a BLE scanner on the mocked BlueZ (a private D-Bus) feed it, a receiver acknowledges. Every documented metric
is there, the exposition parses as OpenMetrics (prometheus_client's parser) and the figures move as readings flow.
The scrape's CPU cost is measured by `edge-gateway bench` (docs/performance.md), not here."""

import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from backend.receiver import Receiver, ReceiverServer
from gateway.adapters import keys
from gateway.adapters.keys import TrustStore
from gateway.app.metrics import METRICS
from tests.support import reserve_port, wait_for_port, wait_until
from tools.sim.harness import PtyNode

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]
if shutil.which("dbus-daemon") is None:
    pytest.skip("dbus-daemon is not installed (Debian package dbus)", allow_module_level=True)
from firmware_sim import ble_nodes  # noqa: E402
from tools.sim.bluez_mock import BluezMock  # noqa: E402

CONFIG = """
[gateway]
id = "gw-metrics"
state_dir = "%(state)s"
[batch]
max_age_s = 0.5
[uplink]
url = "%(url)s"
backoff_min_s = 0.1
backoff_max_s = 1
[clock]
mode = "synced"
[metrics]
listen = "127.0.0.1:%(port)d"
[[sources]]
type = "serial"
name = "board"
port = "%(tty)s"
baud = 115200
units = {temp = "Cel", hum = "%%RH"}
[[sources]]
type = "ble"
name = "ble0"
"""


def scrape(port, path="/metrics", method="GET"):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.headers["Content-Type"], resp.read().decode("utf-8")


def samples(text):
    """{(sample name, frozenset(labels)): value} of one exposition, parsed by prometheus_client."""
    fams = list(text_string_to_metric_families(text))
    return {f.name for f in fams}, {(s.name, frozenset(s.labels.items())): s.value for f in fams for s in f.samples}


def value(got, name, **labels):
    return got[(name, frozenset(labels.items()))]


def test_a_running_agent_exposes_every_documented_metric_and_they_move(tmp_path, signing_key):
    state = tmp_path / "state"
    state.mkdir()
    keys.write_private(str(state / "key.pem"), signing_key)
    receiver = Receiver(str(tmp_path / "rx.sqlite"), TrustStore({"keys": [signing_key.jwk("gw-metrics")]}))
    server = ReceiverServer(receiver).start()
    port = reserve_port()
    node = PtyNode("line_node", ["--sensors", 2, "--rate", 10, "--checksum", 1, "--fault", "badsum@40"],
                   link=str(tmp_path / "tty"))
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG % {"state": state, "url": server.url, "port": port, "tty": tmp_path / "tty"})
    log = open(tmp_path / "agent.log", "wb")
    with BluezMock() as bt, node:  # the agent inherits DBUS_SYSTEM_BUS_ADDRESS: its bleak talks to the mock
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg)], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, alive=lambda: proc.poll() is None, what="the metrics endpoint")
            wait_until(lambda: value(samples(scrape(port)[1])[1], "edge_gateway_ble_adapter_state", source="ble0",
                                     adapter="hci0", state="scanning"), 30, "the BLE scan")
            bt.add_device("A4:C1:38:00:00:01", service_data={0xFCD2: ble_nodes.bthome_adv(1, 21.5, 45.0, 90)})
            first = {}

            def sent_some():
                first.update(samples(scrape(port)[1])[1])
                return (value(first, "edge_gateway_readings_sent_total") > 0
                        and ("edge_gateway_decode_errors_total", frozenset(
                            {"source": "board", "reason": "bad_checksum"}.items())) in first
                        and value(first, "edge_gateway_readings_in_total", source="ble0") > 0)
            wait_until(sent_some, 30, "readings acknowledged, a bad checksum counted, an advert decoded")
            wait_until(lambda: value(samples(scrape(port)[1])[1], "edge_gateway_readings_in_total", source="board")
                       > value(first, "edge_gateway_readings_in_total", source="board") + 10, 30, "more readings")
            content_type, text = scrape(port)
            names, got = samples(text)
            with pytest.raises(urllib.error.HTTPError) as not_found:
                scrape(port, "/")
            with pytest.raises(urllib.error.HTTPError) as not_allowed:
                scrape(port, method="POST")
        finally:
            proc.terminate()
            proc.wait(20)
            log.close()
    server.stop()
    receiver.close()
    assert proc.returncode == 0, (tmp_path / "agent.log").read_text()
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert names == set(METRICS), "missing: %s" % sorted(set(METRICS) - names)
    assert not_found.value.code == 404 and not_allowed.value.code == 405
    # the figures move with the readings
    assert value(got, "edge_gateway_readings_sent_total") > value(first, "edge_gateway_readings_sent_total")
    assert value(got, "edge_gateway_batches_sent_total") > value(first, "edge_gateway_batches_sent_total")
    assert value(got, "edge_gateway_delivery_latency_seconds_count") >= value(got, "edge_gateway_batches_sent_total")
    assert value(got, "edge_gateway_decode_errors_total", source="board", reason="bad_checksum") == 1
    assert value(got, "edge_gateway_uplink_state", state="up") + value(got, "edge_gateway_uplink_state",
                                                                       state="idle") == 1
    assert value(got, "edge_gateway_ble_adapter_state", source="ble0", adapter="hci0", state="scanning") == 1
    assert value(got, "edge_gateway_restarts_total", reason="power_loss") == 0
    assert value(got, "edge_gateway_last_stop", reason="first") == 1
    assert value(got, "edge_gateway_metrics_scrapes_total") >= 3
    assert 5e6 < value(got, "process_resident_memory_bytes") < 500e6
    assert value(got, "edge_gateway_build_info", version=__import__("gateway").__version__, gw="gw-metrics") == 1
