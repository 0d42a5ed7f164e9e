"""The journal of the open batch (``gateway/adapters/journal.py``) and the agent's replay of it (issue 21).

Files only (a temporary directory), no processes: what a kill leaves behind is simulated by not closing the
journal, by cutting its last record, or by a newer file that was never completed."""

import os

from gateway.adapters import keys
from gateway.adapters.journal import Journal
from gateway.adapters.store import Store
from gateway.adapters.uplink.base import Uplink
from gateway.app.agent import Agent
from gateway.core import wire
from gateway.core.clock import FakeClock
from gateway.core.model import EncodedBatch, Event, Reading

OFFSET = 1_750_000_000.0


def reading(k, t=100.0):
    return Reading("board-1", "n", k, None, t, None)


def batch(seq, prio=0):
    return EncodedBatch(5, seq, b"\xd2signed-%d" % seq, prio, 2, 0, 1_750_000_100.0)


def fresh(tmp_path, **kw):
    j = Journal(str(tmp_path / "queue.sqlite.journal"), **kw)
    assert not j.recover()
    j.start(100.0)
    j.complete()
    return j


def test_sealed_batches_and_the_items_after_the_last_consuming_seal_come_back(tmp_path):
    j = fresh(tmp_path)
    j.append([reading(0), reading(1), (batch(0), True), reading(2)], OFFSET)
    j.append([(batch(1, prio=1), False), Event("board-1", "door", "open", "switch", 101.0)], OFFSET)
    j.flush()  # no close: the process was killed
    got = Journal(j.path).recover()
    assert [(b.seq, b.priority, b.data) for b in got.sealed] == [(0, 0, b"\xd2signed-0"), (1, 1, b"\xd2signed-1")]
    # the alarm's batch consumed nothing: reading 2 and the event are still open, with wire times
    assert got.items == [reading(2, 100.0 + OFFSET), Event("board-1", "door", "open", "switch", 101.0 + OFFSET)]
    assert got.torn == 0


def test_a_torn_last_record_is_skipped_and_counted(tmp_path):
    j = fresh(tmp_path)
    j.append([reading(0), reading(1)], OFFSET)
    j.flush()
    name = "%s.%d" % (j.path, j.gen)
    with open(name, "r+b") as f:
        f.truncate(os.path.getsize(name) - 3)  # killed in the middle of a write
    got = Journal(j.path).recover()
    assert got.items == [reading(0, 100.0 + OFFSET)] and got.torn == 1


def test_a_newer_file_never_completed_is_ignored_and_replaced(tmp_path):
    j = fresh(tmp_path)
    j.append([reading(0)], OFFSET)
    j.flush()
    # a start that died while replaying: its new file holds copies but no completion mark
    k = Journal(j.path)
    assert k.recover().items == [reading(0, 100.0 + OFFSET)]
    k.start(200.0)
    k.append([reading(0, 200.0)], 0.0)
    k.flush()
    again = Journal(j.path)
    assert again.recover().items == [reading(0, 100.0 + OFFSET)]  # the complete older file, not both
    again.start(300.0)
    again.complete()
    assert sorted(os.listdir(tmp_path)) == ["queue.sqlite.journal.%d" % again.gen]


def test_rotation_keeps_what_is_live_and_drops_the_old_file(tmp_path):
    j = fresh(tmp_path, rotate_s=10.0, rotate_bytes=1 << 20)
    j.append([reading(0), (batch(0), True), reading(1), (batch(1), True), reading(2)], OFFSET)
    j.flush()
    assert not j.rotate_due(109.0) and j.rotate_due(110.0)
    old = "%s.%d" % (j.path, j.gen)
    j.rotate([batch(1)], [reading(2)], OFFSET, 110.0)  # batch 0 was acknowledged meanwhile
    assert not os.path.exists(old) and j.rotations == 1 and not j.rotate_due(110.0)
    got = Journal(j.path).recover()
    assert [b.seq for b in got.sealed] == [1] and got.items == [reading(2, 100.0 + OFFSET)]


def test_close_after_a_clean_stop_removes_the_file(tmp_path):
    j = fresh(tmp_path)
    j.append([reading(0)], OFFSET)
    j.close(remove=True)
    assert os.listdir(tmp_path) == []
    assert not Journal(j.path).recover()


class Refusing(Uplink):
    kind = "refusing"

    def send(self, batch):
        raise AssertionError("not started")

    def close(self):
        pass

    def describe(self):
        return "nowhere"


def test_the_agent_replays_sealed_batches_as_they_are_and_reseals_open_readings_under_its_boot(tmp_path):
    key = keys.SigningKey.generate()
    path = str(tmp_path / "queue.sqlite")
    clock = FakeClock(mono=500.0, wall=OFFSET + 500.0)
    store = Store(path, clock=clock)
    old_boot = store.next_boot()
    signer = wire.Signer(key)
    sealed = EncodedBatch(old_boot, 3, signer(wire.encode_payload("gw-1", old_boot, 3, True, [])), 0, 0, 0, 1.0)
    j = Journal(path + ".journal")
    j.recover()
    j.start(400.0)
    j.complete()
    # the last run: readings 0-1 in batch 3 (sealed, maybe sent), readings 2-4 still open when it was killed
    j.append([reading(0, 400.0), reading(1, 400.1), (sealed, True)] + [reading(k, 400.0 + k / 10) for k in (2, 3, 4)],
             OFFSET)
    j.flush()
    agent = Agent(gw="gw-1", key=key, store=store, uplink=Refusing(), clock=clock, journal=Journal(j.path),
                  deliver_first=True)
    assert agent.boot != old_boot
    stored = store.pending(10)
    assert [(b.boot, b.seq, b.data) for b in stored] == [(old_boot, 3, sealed.data)]  # the same identity and bytes
    # the open readings go back into the batcher under the new boot (the first is cut at once, as every run's
    # first reading is), with their wire times
    agent.cut()
    assert {b.boot for b in agent._pending} == {agent.boot}
    trust = keys.TrustStore({"keys": [key.jwk("gw-1")]})
    values = []
    for b in agent._pending:
        values += [r["v"] for r in wire.verify(b.data, trust).records if r["n"].endswith("board-1/n")]
    assert sorted(values) == [2, 3, 4]
    assert agent.counters["journal_replayed_batches"] == 1 and agent.counters["journal_replayed_items"] == 3
    # and the new journal holds the new batches before anything could send them; the old file is gone
    again = Journal(j.path).recover()
    assert [b.seq for b in again.sealed] == [b.seq for b in agent._pending] and again.items == []
    assert len(again.files) == 1 and not os.path.exists("%s.%d" % (j.path, j.gen))
    store.close()


def test_an_agent_whose_journal_cannot_be_written_runs_without_it(tmp_path):
    path = str(tmp_path / "queue.sqlite")
    clock = FakeClock(mono=500.0, wall=OFFSET + 500.0)
    store = Store(path, clock=clock)
    agent = Agent(gw="gw-1", key=keys.SigningKey.generate(), store=store, uplink=Refusing(), clock=clock,
                  journal=Journal(str(tmp_path / "gone" / "queue.sqlite.journal")),  # no such directory
                  batch=type("B", (), {"hold_s": 0.2, "linger_s": 0.1}))
    assert agent.journal is None and agent.counters["journal_errors"] == 1
    assert not agent.pipeline.batcher.journaled  # the byte budget's growth stops at hold_s again
    store.close()
