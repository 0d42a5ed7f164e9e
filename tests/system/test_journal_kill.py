"""The journal of the open batch after a real SIGKILL (issue 21): nothing lost, nothing duplicated.

``edge-gateway run`` reads a line-protocol pty (``tests/support/feed.py``) and delivers over HTTP to a separate
``edge-gateway receive``. Its batches stay open far longer than the kill window (``linger_s = hold_s = max_age_s =
30``), so a kill always finds readings that exist only in the batcher, and ``max_readings = 150`` seals a batch
every 0.75 s at 200 readings/s, so it also finds sealed batches, sent or not, in the journal. The test SIGKILLs the
agent at seeded random moments, restarts it on the same state directory, and at the end checks reading by reading:
every line written more than 0.25 s before a kill is at the receiver, and no line is there twice (a reading
re-batched under a new ``(boot, seq)`` after its first batch was delivered would be: the receiver's dedup by batch
identity cannot hide it). Without the journal the same run loses the open batch at every kill (the mutation check
at the end).
"""

import os
import random
import signal
import time

import pytest

from gateway.adapters import boot_epoch
from tests.support import reserve_port, wait_until
from tests.support.faults import GW, Receiver, killpg, prepare_store, spawn
from tests.support.feed import Feed, query, received_counter, stop_all, write_config

WINDOW = 0.25
OPEN_LONG = "[batch]\nlinger_s = 30\nhold_s = 30\nmax_age_s = 30\nmax_readings = 150\n"


def kill_cycles(tmp_path, cycles, seed, store_toml=""):
    store = str(tmp_path / "store")
    prepare_store(store)
    port = reserve_port()
    receiver = Receiver(str(tmp_path), os.path.join(store, "jwks.json"), port)
    uplink = '[uplink]\nurl = "http://127.0.0.1:%d/v1/batches"\nbackoff_min_s = 0.05\nbackoff_max_s = 0.5' % port
    feed = Feed().start()
    feed.rate = 200
    config = write_config(store, feed.path, uplink, OPEN_LONG + store_toml)
    log_path = os.path.join(str(tmp_path), "agent.log")
    log = open(log_path, "ab")
    rng = random.Random(seed)
    required, written = set(), set()
    boot_file = os.path.join(store, "queue.sqlite.boot")
    proc = None
    receiver.start()
    try:
        for i in range(cycles + 1):
            previous = boot_epoch.read(boot_file)
            proc = spawn(["run", "--config", config], log)
            wait_until(lambda: boot_epoch.read(boot_file) != previous, 30, "a new boot epoch")
            wait_until(feed.drained, 30, "the agent to read the pty")
            start = len(feed.written)
            feed.counting = True
            if i == cycles:  # the last run: feed a while, stop cleanly (the flush at SIGTERM seals the rest)
                time.sleep(1.0)
                feed.counting = False
                required.update(k for k, _ in feed.written[start:])
                wait_until(feed.drained, 10, "the agent to read the last lines")
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
                break
            time.sleep(rng.uniform(0.5, 2.0))
            kill_at = time.monotonic()
            killpg(proc)
            feed.counting = False
            required.update(k for k, t in feed.written[start:] if t <= kill_at - WINDOW)
        written.update(k for k, _ in feed.written)
        # the clean stop committed what it had not sent yet: one more start delivers it
        proc = spawn(["run", "--config", config], log)
        wait_until(lambda: required <= received_counter(receiver.db), 30, "every required reading")
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    except AssertionError:
        pass  # the assertions below say what is missing
    finally:
        stop_all(feed, log, proc, receiver)
    with open(log_path, "rb") as f:
        agent_log = f.read().decode(errors="replace")
    got = received_counter(receiver.db)
    twice = query(receiver.db, "SELECT v, COUNT(*) FROM records WHERE gw = ? AND n LIKE '%board-1/n' "
                               "GROUP BY v HAVING COUNT(*) > 1", GW)
    return required, written, got, twice, agent_log


@pytest.mark.timeout(180)
def test_sigkill_with_open_batches_loses_nothing_and_duplicates_nothing(tmp_path):
    required, written, got, twice, agent_log = kill_cycles(tmp_path, cycles=5, seed=7)
    assert len(required) > 500
    missing = sorted(required - got)
    assert not missing, "%d of %d readings lost, e.g. %s" % (len(missing), len(required), missing[:10])
    assert not twice, "readings at the receiver twice (re-batched after delivery): %s" % twice[:10]
    assert got <= written  # nothing invented
    assert agent_log.count("journal: the last run stopped without flushing") == 5  # each restart replayed


@pytest.mark.timeout(120)
def test_without_the_journal_the_open_batch_dies_with_the_agent(tmp_path):
    """The mutation check: the same cycles with ``store.journal = false`` lose readings."""
    required, _, got, _, _ = kill_cycles(tmp_path, cycles=2, seed=7, store_toml="[store]\njournal = false\n")
    assert required - got
