"""Store-and-forward under real faults, over MQTT through a real Mosquitto (persistence off).

The demo agent publishes at QoS 1 to ``edge/gw-demo/batches``; ``edge-gateway receive --mqtt`` consumes with the
MQTT v5 shared subscription ``$share/fleet/edge/+/batches`` and acknowledges after storing. The agent is SIGKILLed
and restarted, the broker is SIGKILLed and restarted on the same port (losing every session and in-flight
message: only the agent's store can guarantee delivery), and the receiver is down for a stretch (no subscriber:
the broker's PUBACK says "no matching subscribers", which the agent does not take as delivery). Same acceptance
checks as the HTTP fault test (``tests.support.faults.check_delivery``).
"""

import os
import random
import time

import pytest

from tests.support.faults import (Receiver, check_delivery, prepare_store, received_batches, reserve_port,
                                 run_kill_cycles, saved_batches, store_state, wait_drained)
from tests.support.mosquitto import Broker, have_mosquitto

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")


@pytest.mark.timeout(150)
def test_sigkill_agent_broker_restarts_and_receiver_outage_lose_nothing(tmp_path):
    store, saved_dir, work = str(tmp_path / "store"), str(tmp_path / "saved"), str(tmp_path)
    trust = prepare_store(store)
    broker = Broker(tmp_path / "broker").start()
    url = broker.url + "/edge"
    receiver = Receiver(work, os.path.join(store, "jwks.json"), reserve_port(), mqtt=url, group="fleet").start()
    rng = random.Random(7)
    log = open(os.path.join(work, "demo.log"), "ab")
    faults = {"broker_kills": 0, "receiver_kills": 0}

    def on_cycle(i, phase):
        if i in (1, 4) and phase == "running":  # the broker dies under a running agent and comes back
            broker.kill()
            faults["broker_kills"] += 1
            time.sleep(rng.uniform(0.3, 1.0))  # kept: the broker stays dead a random while (the fault)
            broker.start()
        if i == 2 and phase == "running":
            receiver.kill()
            faults["receiver_kills"] += 1
        if i == 3 and phase == "before":
            receiver.start()

    try:
        killed = run_kill_cycles(store, saved_dir, url, rng, kills=6, on_cycle=on_cycle, log=log, sensors=6,
                                 rate=40, alive=(1.0, 2.0), final_duration=3.0)
        wait_drained(store, receiver.db, saved_dir, trust)
    finally:
        log.close()
        receiver.stop()
        broker.stop()
    assert faults == {"broker_kills": 2, "receiver_kills": 1} and broker.starts == 3
    saved, received = saved_batches(saved_dir, trust), received_batches(receiver.db)
    check_delivery(saved, received, set(killed), min_readings=6000)
    left, meta = store_state(store)
    assert left == 0 and meta.get("dropped_batches", 0) == 0
