"""`edge-gateway bench --quick --json`: every figure present and physically sane. Targets are not asserted here
(timings on a shared 2-core machine are noisy); docs/performance.md holds them beside the measured medians."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

FIGURES = ["pipeline_readings_per_s", "wire_bytes_per_reading", "rss_mb_200_sensors", "idle_cpu_percent",
           "startup_s", "drain_readings_per_s", "fsyncs_per_1k_readings", "disk_bytes_per_reading",
           "alarm_latency_ms_p99", "swinging_door_ratio", "bthome_adverts_per_s", "nmea_sentences_per_s",
           "rule_evals_per_s"]


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bench():
    start = time.monotonic()
    # Work beside the checkout, on a real disk: /tmp may be a tmpfs, where no byte reaches a block device.
    workdir = os.path.join(ROOT, ".bench-tmp")
    os.makedirs(workdir, exist_ok=True)
    try:
        proc = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "--quick", "--json"],
                              capture_output=True, text=True, timeout=240, env=dict(os.environ, BENCH_DIR=workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout), time.monotonic() - start


def test_every_figure_is_reported(bench):
    results, _ = bench
    missing = [f for f in FIGURES if results.get(f) is None]
    assert not missing
    assert set(results["ceilings"]) == {"ed25519_signs_per_s", "cbor2_records_per_s", "sqlite_full_commits_per_s"}
    assert set(results["targets"]) <= set(results) | {"disk_to_wire_ratio"}


def test_figures_are_physically_sane(bench):
    r, elapsed = bench
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
    assert r["disk_bytes_per_reading"] > 0 and r["fsyncs_per_1k_readings"] > 0
    assert all(isinstance(v, list) and v for k, v in r["runs"].items() if k.endswith("_per_s"))
    assert elapsed < 120  # --quick is meant to finish in under 60 s on a quiet machine
