"""`edge-gateway bench --quick --json`: every figure present and physically sane. Targets are not asserted here
(timings on a shared 2-core machine are noisy); docs/performance.md holds them beside the measured medians."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

FIGURES = ["pipeline_readings_per_s", "wire_bytes_per_reading", "rss_mb_200_sensors", "idle_cpu_percent",
           "startup_s", "drain_readings_per_s", "fsyncs_per_1k_readings", "disk_bytes_per_reading",
           "alarm_latency_ms_p99", "swinging_door_ratio", "bthome_adverts_per_s", "nmea_sentences_per_s",
           "rule_evals_per_s", "metrics_scrape_cpu_ms"]


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _shown(pytestconfig):
    """Write a line to the terminal (or CI's plain log) while the test runs, past pytest's output capture, so that
    a step of a minute shows it is alive even under ``-q``."""
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def show(line):
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    return show


@pytest.fixture(scope="module")
def bench(pytestconfig, tmp_path_factory):
    start = time.monotonic()
    show = _shown(pytestconfig)
    # Work beside the checkout, on a real disk: /tmp may be a tmpfs, where no byte reaches a block device.
    workdir = os.path.join(ROOT, ".bench-tmp")
    os.makedirs(workdir, exist_ok=True)
    out_path = tmp_path_factory.mktemp("bench") / "stdout.json"
    err = []
    show("test_bench: running 'edge-gateway bench --quick --json' (about a minute); its steps:")
    try:
        with open(out_path, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "bench", "--quick", "--json"], stdout=out,
                                    stderr=subprocess.PIPE, text=True, env=dict(os.environ, BENCH_DIR=workdir))
            watchdog = threading.Timer(240, proc.kill)  # bounded: a stuck bench ends the stream below
            watchdog.start()
            try:
                for line in proc.stderr:  # the bench's progress lines ("... pipeline"), shown as they come
                    err.append(line)
                    if line.startswith("... "):
                        show("  bench %s (%.0f s)" % (line[4:].rstrip(), time.monotonic() - start))
                proc.wait()
            finally:
                watchdog.cancel()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert proc.returncode == 0, "".join(err)[-2000:]
    steps = [line[4:].strip() for line in err if line.startswith("... ")]
    return json.loads(out_path.read_text()), time.monotonic() - start, steps


def test_the_bench_reports_progress_on_stderr_with_json_too(bench):
    # the fixture showed each step as it came; stdout held nothing but the JSON object (parsed there)
    results, _, steps = bench
    assert results["quick"] is True
    assert len(steps) >= 8 and steps[0] == "wire bytes" and steps[-1] == "metrics scrape", steps


def test_every_figure_is_reported(bench):
    results, _, _ = bench
    missing = [f for f in FIGURES if results.get(f) is None]
    assert not missing
    assert set(results["ceilings"]) == {"ed25519_signs_per_s", "cbor2_records_per_s", "sqlite_full_commits_per_s"}
    assert set(results["targets"]) <= set(results) | {"disk_to_wire_ratio"}


def test_figures_are_physically_sane(bench):
    r, elapsed, _ = bench
    assert 3 < r["wire_bytes_per_reading"] < 20
    assert 0 < r["pipeline_readings_per_s"] < 5_000_000
    # the pipeline signs one batch per 1000 readings, so it cannot beat 1000 x the raw signing rate
    assert r["pipeline_readings_per_s"] < 1000 * r["ceilings"]["ed25519_signs_per_s"]
    assert 5 < r["rss_mb_200_sensors"] < 500
    assert 0 <= r["idle_cpu_percent"] < 100
    assert 0.05 < r["startup_s"] < 15
    assert r["drain_readings_per_s"] > 100
    assert 0 < r["alarm_latency_ms_p99"] < 60_000
    assert r["swinging_door_ratio"] > 1
    # the rules engine's throughput (threshold + hysteresis + deadband) is measured here, not asserted in a unit test
    assert 0 < r["rule_evals_per_s"] < 50_000_000 and r["runs"]["rule_evals_per_s"]
    assert 0 < r["metrics_scrape_cpu_ms"] < 100 and r["runs"]["metrics_scrape"]["bytes"] > 1000
    assert r["disk_bytes_per_reading"] > 0 and r["fsyncs_per_1k_readings"] > 0
    assert all(isinstance(v, list) and v for k, v in r["runs"].items() if k.endswith("_per_s"))
    assert elapsed < 120  # --quick is meant to finish in under 60 s on a quiet machine


def test_the_end_to_end_section_delivers_every_reading_through_mosquitto_and_http(tmp_path, pytestconfig):
    """``bench --sections e2e --quick``: the agent process fed over a pty, through a real Mosquitto and over HTTP to
    a real receiver process. Every line written is delivered once, and each figure is measured, not made up."""
    show = _shown(pytestconfig)
    show("test_bench: running 'edge-gateway bench --sections e2e --quick' (about a minute)")
    plots = tmp_path / "plots"
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "--sections", "e2e", "--quick", "--json",
                           "--plots", str(plots)], capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, BENCH_DIR=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    runs = results["runs"]["e2e"]
    # 20 sensors at 20 and 1,000 readings/s, and the 200 sensors x 2 quantities at 1 Hz (400 readings/s)
    assert {(r["transport"], r["rate"]) for r in runs} == {(t, r) for t in ("mqtt", "http") for r in (20, 400, 1000)}
    for run in runs:
        assert run["written"] >= 0.8 * run["rate"] * run["seconds"], run
        assert run["delivered"] == run["written"] and run["lost"] == 0 and run["duplicates"] == 0, run
        assert 0 < run["p50_s"] <= run["p99_s"] <= run["max_s"] < 15, run
        assert run["cpu_s_per_1k"] > 0 and 10 < run["rss_mb"] < 500, run
        # bytes counted on the relay between agent and broker/receiver: more per reading in small batches
        assert run["socket_bytes_per_reading"] > 1, run
    by = {(r["transport"], r["rate"]): r for r in runs}
    for t in ("mqtt", "http"):
        assert by[(t, 20)]["socket_bytes_per_reading"] > by[(t, 1000)]["socket_bytes_per_reading"]
    assert results["e2e_lost"] == 0 and set(results["met"]) >= {"e2e_latency_p50_s", "e2e_lost"}
    assert sorted(p.name for p in plots.iterdir()) == ["e2e-bytes.svg", "e2e-cpu.svg", "e2e-latency-max.svg",
                                                      "e2e-latency-p50.svg"]


def test_an_unknown_section_is_refused_with_the_list():
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "--sections", "core,warp"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown section warp" in proc.stderr and "e2e" in proc.stderr
