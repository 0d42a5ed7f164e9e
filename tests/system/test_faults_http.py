"""Store-and-forward under real faults, over HTTP (GitHub issue 3).

Real processes: ``edge-gateway demo --store DIR --uplink URL --save-batches SAVED`` (MicroPython sensor boards on
ptys, the agent, a SQLite store) delivering to a separate ``edge-gateway receive`` process on 127.0.0.1. The agent
is killed with SIGKILL at seeded random moments and restarted on the same store; the receiver is SIGKILLed and
restarted twice; for one stretch a tiny server answers 503 + Retry-After in its place.

What "accepted" means here, honestly: ``--save-batches`` writes each batch right after its commit returns, so
every saved batch was accepted. A SIGKILL between a commit and its save leaves accepted batches without a file:
those can only be the newest batches of a killed boot epoch. Readings still in the batcher or in memory at a
SIGKILL were never accepted and may be lost.

Assertions: every saved batch is in the receiver with the same records, exactly once; every boot epoch's seqs at
the receiver are gap-free from 0; batches the receiver has beyond the saved ones are only at the end of a killed
epoch; every sensor's ``n`` counter is gap-free within each epoch; the store ends empty with zero drop counters
(so "missing == reported drops == 0").
"""

import json
import os
import random

import pytest

from tests.support.faults import (Busy503, Receiver, check_delivery, prepare_store, received_batches, reserve_port,
                                 run_kill_cycles, saved_batches, store_state, wait_drained)


@pytest.mark.timeout(150)
def test_sigkill_agent_and_receiver_outages_lose_no_accepted_reading(tmp_path):
    store, saved_dir, work = str(tmp_path / "store"), str(tmp_path / "saved"), str(tmp_path)
    trust = prepare_store(store)
    port = reserve_port()
    url = "http://127.0.0.1:%d/v1/batches" % port
    receiver = Receiver(work, os.path.join(store, "jwks.json"), port).start()
    rng = random.Random(20240603)
    log = open(os.path.join(work, "demo.log"), "ab")
    busy = {}
    outages = {"receiver_kills": 0}

    def on_cycle(i, phase):
        # Receiver SIGKILLed across cycles 2 and 6 (down while the agent runs and dies); 503s during cycle 4.
        if i in (2, 6) and phase == "running":
            receiver.kill()
            outages["receiver_kills"] += 1
        if i in (3, 7) and phase == "before" and receiver.proc.poll() is not None:
            receiver.start()
        if i == 4 and phase == "before":
            receiver.kill()
            busy["server"] = Busy503(port)
        if i == 4 and phase == "after":
            busy["hits"] = busy.pop("server").stop()
            receiver.start()

    try:
        killed = run_kill_cycles(store, saved_dir, url, rng, kills=11, on_cycle=on_cycle, log=log)
        wait_drained(store, receiver.db, saved_dir, trust)
    finally:
        log.close()
        receiver.stop()
        if "server" in busy:
            busy["server"].stop()
    assert len(killed) == 11 and outages["receiver_kills"] == 2 and receiver.starts == 4
    assert busy["hits"] > 0  # the agent really met the 503s and backed off
    saved, received = saved_batches(saved_dir, trust), received_batches(receiver.db)
    readings = check_delivery(saved, received, set(killed), min_readings=20000)
    left, meta = store_state(store)
    assert left == 0
    assert meta.get("dropped_batches", 0) == meta.get("dropped_readings", 0) == 0  # nothing was dropped...
    assert readings >= 20000  # ...and nothing is missing
    print(json.dumps({"kills": len(killed), "batches": len(received), "readings": readings}))
