"""The directory ("sneakernet") uplink, and the uplink contract every registered uplink keeps.

A real demo agent writes batches to a directory and ``edge-gateway verify`` checks the files; the agent's uplink
loop meets a read-only directory (a retryable error, nothing lost) and delivers everything once it is writable.
As root a read-only (and a full) tmpfs is mounted; otherwise the directory is made read-only with chmod.
"""

import asyncio
import glob
import os
import subprocess
import sys
import time

import pytest

from backend.receiver import Receiver
from gateway.adapters import keys
from gateway.adapters.store import Store
from gateway.adapters.uplink import UPLINKS, Uplink, build_uplink, uplink_class, uplink_from_url
from gateway.adapters.uplink.directory import DirectoryUplink
from gateway.app import config
from gateway.app.agent import Agent
from gateway.core import wire
from gateway.core.clock import SystemClock
from gateway.core.errors import ConfigError, UplinkError
from gateway.core.model import EncodedBatch
from tools.bench_processes import GW, _backlog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EG = [sys.executable, "-m", "gateway.cli"]
CONTRACT = ("from_section", "from_url", "describe", "transport", "probe")


@pytest.mark.parametrize("kind", sorted(UPLINKS))
def test_every_registered_uplink_implements_the_whole_contract(kind):
    cls = uplink_class(kind)
    assert issubclass(cls, Uplink) and cls.kind == kind and cls.schemes
    own = cls.__mro__[:cls.__mro__.index(Uplink)]
    missing = [m for m in CONTRACT if not any(m in vars(k) for k in own)]
    assert not missing, "%s leaves %s to the base class" % (cls.__name__, missing)


def test_config_and_url_name_the_directory_uplink(tmp_path):
    cfg = config.loads('[uplink]\nkind = "directory"\nurl = "dir://%s"\n' % tmp_path)
    up = build_uplink(cfg.uplink)
    assert isinstance(up, DirectoryUplink) and up.path == str(tmp_path) and up.describe() == "dir://%s" % tmp_path
    assert isinstance(uplink_from_url("dir://%s" % tmp_path), DirectoryUplink)
    with pytest.raises(ConfigError) as err:
        config.loads('[uplink]\nkind = "directory"\nurl = "relative/spool"\n', "c.toml")
    assert err.value.key == "uplink.url"
    assert up.probe(1.0).status == "ok" and os.listdir(tmp_path) == []


def test_a_demo_run_writes_files_that_verify(tmp_path):
    out, store = tmp_path / "spool", tmp_path / "store"
    out.mkdir()
    proc = subprocess.run(EG + ["demo", "--duration", "2", "--rate", "5", "--uplink", "dir://%s" % out, "--store",
                                str(store)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    files = sorted(glob.glob(str(out / "*.cose")))
    assert files and all(os.path.basename(f).startswith("gw-demo-") for f in files)
    assert [f for f in os.listdir(out) if not f.endswith(".cose")] == []  # no temporary file left behind
    proc = subprocess.run(EG + ["verify", "--trust", str(store / "jwks.json")] + files, capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "verified %d batches in %d files" % (len(files), len(files)) in proc.stdout + proc.stderr


def _batch(key, seq, n=3):
    records = [{-2: GW + "/s1/temp", -3: 1.7e9, 2: 21.5 + i} for i in range(n)]
    return EncodedBatch(1, seq, wire.sign(wire.encode_payload(GW, 1, seq, True, records), key), 0, n)


def test_a_resend_is_acknowledged_and_other_bytes_are_a_conflict(tmp_path):
    key = keys.SigningKey.generate()
    up = DirectoryUplink(str(tmp_path))
    first = _batch(key, 0)
    assert up.send(first) == 201 and up.send(first) == 200
    with pytest.raises(UplinkError) as err:
        up.send(_batch(key, 0, n=4))
    assert not err.value.retryable and err.value.status == 409
    assert (tmp_path / ("%s-1-0.cose" % GW)).read_bytes() == first.data


@pytest.fixture
def limited_dir(tmp_path):
    """``make(read_only=..., size=...)`` -> a directory; ``writable()`` lifts the limit. tmpfs as root."""
    path = tmp_path / "spool"
    path.mkdir()
    mounted = []

    class Limited:
        def make(self, read_only=True, size="1m"):
            if os.geteuid() != 0:
                if not read_only:
                    pytest.skip("a full disk needs a small tmpfs (root)")
                os.chmod(path, 0o555)
                return str(path)
            opts = "size=%s%s" % (size, ",ro" if read_only else "")
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "edge-spool", str(path)], capture_output=True,
                                  text=True)
            if proc.returncode:
                pytest.skip("cannot mount a tmpfs here: %s" % proc.stderr.strip())
            mounted.append(path)
            return str(path)

        def writable(self):
            if mounted:
                subprocess.run(["mount", "-o", "remount,rw", str(path)], check=True)
            else:
                os.chmod(path, 0o755)

    yield Limited()
    for p in mounted:
        subprocess.run(["umount", str(p)], check=True)
    os.chmod(path, 0o755)


def test_a_read_only_directory_is_retryable_and_nothing_is_lost(tmp_path, limited_dir):
    """The agent's uplink loop meets a read-only directory: it backs off, keeps every batch, and delivers all of
    them, once each, when the directory is writable again."""
    spool = limited_dir.make(read_only=True)
    key = keys.SigningKey.generate()
    store = Store(str(tmp_path / "q.sqlite"))
    boot = store.next_boot()
    _backlog(store, key, boot, 5, 20)  # five batches of an earlier boot; the agent adds its own health batches
    up = DirectoryUplink(spool)
    with pytest.raises(UplinkError) as err:
        up.send(EncodedBatch(1, 0, _batch(key, 0).data))
    assert err.value.retryable and ("read-only" in str(err.value) or "not writable" in str(err.value))
    agent = Agent(gw=GW, key=key, store=store, uplink=up, clock=SystemClock("synced"), backoff=(0.05, 0.2))

    async def until(cond, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, "condition not met within %.0f s" % timeout
            await asyncio.sleep(0.01)

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await until(lambda: agent.counters["uplink_failures"] >= 2 and agent.uplink_state == "down")
        assert store.depth()[0] >= 5 and os.listdir(spool) == []  # kept, nothing half-written
        limited_dir.writable()
        await until(lambda: store.depth()[0] == 0)
        stop.set()
        await task

    try:
        asyncio.run(main())
    finally:
        store.close()
    trust = keys.TrustStore({"keys": [key.jwk(GW)]})
    files = sorted(glob.glob(os.path.join(spool, "*.cose")))
    verified = [wire.verify(open(f, "rb").read(), trust) for f in files]
    backlog = [v for v in verified if v.boot == boot]
    assert len(backlog) == 5 and sorted(v.seq for v in backlog) == list(range(5))
    assert all(os.path.basename(f) == "%s-%d-%d.cose" % (v.gw, v.boot, v.seq) for f, v in zip(files, verified))


def test_a_full_disk_is_retryable_and_leaves_no_partial_file(tmp_path, limited_dir):
    spool = limited_dir.make(read_only=False, size="8k")
    key = keys.SigningKey.generate()
    up = DirectoryUplink(spool)
    big = _batch(key, 1, n=400)
    assert len(big.data) > 8192
    with pytest.raises(UplinkError) as err:
        up.send(big)
    assert err.value.retryable and "is full" in str(err.value)
    assert os.listdir(spool) == []
    assert up.probe(1.0).status in ("ok", "fail")  # an empty probe file may still fit; it never raises


def test_the_receiver_stores_what_the_directory_holds(tmp_path):
    """The other end of the sneakernet: the files are the receiver's input, byte for byte."""
    key = keys.SigningKey.generate()
    up = DirectoryUplink(str(tmp_path))
    for seq in range(3):
        up.send(_batch(key, seq))
    rx = Receiver(str(tmp_path / "rx.sqlite"), keys.TrustStore({"keys": [key.jwk(GW)]}))
    try:
        statuses = [rx.process(open(f, "rb").read())[0] for f in sorted(glob.glob(str(tmp_path / "*.cose")))]
    finally:
        rx.close()
    assert statuses == [201, 201, 201]
