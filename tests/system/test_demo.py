"""`edge-gateway demo` end to end, as a user runs it: real processes, real pty, real HTTP, checked by pycose."""

import glob
import json
import shutil
import subprocess
import sys

import cbor2
import pytest

from gateway.core import senml, wire
from gateway.adapters.keys import TrustStore
from backend.receiver import Receiver
from tests.support.wire_vectors import pycose_verify

EG = [sys.executable, "-m", "gateway.cli"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    out, store = base / "batches", base / "store"
    # --tick-counter: the board numbers its lines (n), so a test can tell that no reading was lost
    proc = subprocess.run(EG + ["demo", "--duration", "3", "--rate", "5", "--save-batches", str(out), "--store",
                                str(store), "--tick-counter", "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), out, store


def test_summary_counts(demo_run):
    summary, out, _ = demo_run
    assert summary["batches_sent"] >= 2
    assert summary["batches_verified"] == summary["batches_sent"]
    assert summary["batches_rejected"] == 0 and summary["queue_left"] == 0
    assert summary["readings_generated"] >= 3 * 3 * 5 * 2  # 3 sensors x 3 quantities (n, temp, hum) x 5 Hz x >= 2 s
    # every reading taken in was delivered, and the records sent are those plus the health records
    assert summary["readings_delivered"] == summary["readings_generated"] - summary["readings_bad_value"]
    assert summary["readings_sent"] == summary["readings_delivered"] + summary["health_delivered"]
    assert summary["receiver"]["records"] == summary["readings_sent"]
    assert len(glob.glob(str(out / "*.cose"))) == summary["batches_sent"]


def test_every_batch_verifies_with_pycose_and_decodes_as_senml(demo_run):
    _, out, _ = demo_run
    jwk = json.load(open(out / "jwks.json"))["keys"][0]
    files = sorted(glob.glob(str(out / "*.cose")))
    assert files
    for path in files:
        data = open(path, "rb").read()
        assert pycose_verify(data, jwk) is True
        payload = cbor2.loads(cbor2.loads(data).value[2])
        for rec in payload["senml"]:
            # RFC 8428 integer labels, plus format 2's two must-understand extensions (docs/wire-format.md)
            assert set(rec) <= set(senml.LABELS) | {senml.BE, senml.DT}, rec
        names = {r["n"] for r in senml.resolve(payload["senml"])}
        assert names and all(n.startswith("gw-demo/") for n in names)


def test_no_reading_lost_between_board_and_receiver(demo_run):
    _, out, store = demo_run
    rx = Receiver(str(store / "receiver.sqlite"), TrustStore.load(str(out / "jwks.json")))
    rows = rx.query("SELECT n, v FROM records WHERE n LIKE 'gw-demo/board-%/n'")
    rx.close()
    per_sensor = {}
    for name, v in rows:
        per_sensor.setdefault(name, []).append(int(v))
    assert len(per_sensor) == 3
    for name, seen in per_sensor.items():
        assert sorted(seen) == list(range(min(seen), max(seen) + 1)), name  # contiguous: nothing lost
        assert len(seen) == len(set(seen)), name  # and nothing stored twice


def test_cli_verify_prints_records_and_rejects_any_flipped_byte(demo_run, tmp_path):
    _, out, _ = demo_run
    files = sorted(glob.glob(str(out / "*.cose")))
    proc = subprocess.run(EG + ["verify", "--trust", str(out / "jwks.json")] + files, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    trust = TrustStore.load(str(out / "jwks.json"))
    assert len(lines) == sum(len(wire.verify(open(f, "rb").read(), trust).records) for f in files)
    assert all({"gw", "boot", "seq", "n", "t"} <= set(line) for line in lines)
    data = open(files[0], "rb").read()
    for pos in (0, 5, len(data) // 2, len(data) - 70, len(data) - 1):
        bad = tmp_path / ("flip%d.cose" % pos)
        flipped = bytearray(data)
        flipped[pos] ^= 0x04
        bad.write_bytes(bytes(flipped))
        proc = subprocess.run(EG + ["verify", "--trust", str(out / "jwks.json"), str(bad)], capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode != 0 and "rejected (" in proc.stderr and proc.stdout == ""


def test_demo_resumes_with_the_same_store(demo_run, tmp_path):
    _, out, store = demo_run
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    proc = subprocess.run(EG + ["demo", "--duration", "1", "--store", str(copy), "--json"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout.strip().splitlines()[-1])
    first = json.load(open(out / "jwks.json"))["keys"][0]["kid"]
    assert again["kid"] == first  # same key
    assert again["boot"] >> 32 == 2  # boot epoch persisted and bumped (start counter << 32 | 32 random bits)
