"""Issue 13 ("Nothing lost, nobody in"), the store and agent layer: a batch identity never repeats, a corrupt queue
is salvaged, a poison batch cannot wedge delivery, bad numbers never reach the batcher, nothing is left out of a
queue dump. Every test here failed on the code before the fix it names."""

import io
import math
import os
import types

import cbor2
import pytest

from gateway import keys, senml, wire
from gateway.agent import Agent
from gateway.clock import FakeClock
from gateway.console.view import AgentView
from gateway.model import EncodedBatch, Reading
from gateway.store import Store
from gateway.uplink import Uplink

GW = "gw-sec"


class NullUplink(Uplink):
    def send(self, batch):
        pass


def signed_batches(key, n, boot=1, readings=50, first_seq=0):
    out = []
    for b in range(first_seq, first_seq + n):
        rs = [Reading("s%d" % (i % 5), "temp", round(4 + (i % 37) / 100, 2), "Cel", 1.7e9 + b * 10 + i / 50, 0.01)
              for i in range(readings)]
        payload = wire.encode_payload(GW, boot, b, True, senml.encode_records(rs, (), GW + "/"))
        out.append(EncodedBatch(boot, b, wire.sign(payload, key), 0, readings, 0, 0.0))
    return out


def make_agent(tmp_path, clock=None, **extra):
    clock = clock or FakeClock()
    store = Store(tmp_path / "q.sqlite", clock=clock)
    batch = types.SimpleNamespace(max_readings=10 ** 6, max_age_s=1e9, time_quantum_s=1.0)
    return Agent(gw=GW, key=keys.SigningKey.generate(), store=store, uplink=NullUplink(), clock=clock,
                 batch=batch, **extra)


# -- finding 4: bad numbers never reach the batcher ------------------------------------------------------------
def test_bad_values_are_dropped_and_counted_at_emit(tmp_path):
    agent = make_agent(tmp_path)
    agent._first_cut = True  # keep everything in the batcher, where we can look at it
    good = [Reading("s", "temp", 4.25, "Cel", 1.0), Reading("s", "n", (1 << 63) - 1, None, 1.0),
            Reading("s", "n", -(1 << 63), None, 1.0), Reading("s", "state", "open", None, 1.0),
            Reading("s", "door", True, None, 1.0), Reading("s", "temp", 0, "Cel", 1.0),
            Reading("s", "temp", -0.0, "Cel", 1.0)]
    bad = [Reading("s", "temp", math.nan, "Cel", 1.0), Reading("s", "temp", math.inf, "Cel", 1.0),
           Reading("s", "temp", -math.inf, "Cel", 1.0), Reading("s", "n", 1 << 63, None, 1.0),
           Reading("s", "n", -(1 << 63) - 1, None, 1.0), Reading("s", "n", 10 ** 30, "Cel", 1.0),
           Reading("s", "temp", True, "Cel", 1.0), Reading("s", "temp", "4.2", "Cel", 1.0),
           Reading("s", "temp", None, "Cel", 1.0), Reading("s", "temp", [1.0], "Cel", 1.0)]
    for r in good + bad:
        agent.emit(r)
    readings, _ = agent.batcher.cut()
    assert readings == good
    assert agent.counters["readings_bad_value"] == len(bad)
    assert agent.counters["readings_in"] == len(good) + len(bad)
    health = {r.name: r.value for r in agent._health_readings(2.0)}
    assert health["readings_bad_value"] == len(bad)  # reported upstream
    agent.store.close()


# -- finding 5: flush-to-file includes quarantined batches -----------------------------------------------------
def test_flush_to_file_writes_queued_and_quarantined_batches(tmp_path):
    key = keys.SigningKey.generate()
    store = Store(tmp_path / "q.sqlite")
    batches = signed_batches(key, 14)
    ids = store.put_many(batches)
    for sid in ids[:11]:
        store.quarantine(sid, "409 conflict")
    view = AgentView(types.SimpleNamespace(store=store), board=None)
    target = str(tmp_path / "queue.cbor")
    reply = view.store_dump(target)
    assert reply.startswith("wrote 14 batches (") and reply.endswith(": 3 queued, 11 quarantined; the queue is "
                                                                      "unchanged")
    with open(target, "rb") as f:
        data = f.read()
    items, stream = [], io.BytesIO(data)
    while stream.tell() < len(data):
        items.append(cbor2.dumps(cbor2.load(stream)))
    assert sorted(items) == sorted(b.data for b in batches)  # every batch, bit for bit
    trust = keys.TrustStore({"keys": [key.jwk(GW)]})
    assert sorted(wire.verify(item, trust).seq for item in items) == list(range(14))
    assert store.depth()[0] == 3 and len(store.quarantined()) == 11  # the queue is unchanged
    store.close()
