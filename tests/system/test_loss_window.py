"""The kill window (issue 21): a SIGKILL of the agent loses no reading that arrived more than 0.25 s before it.

Real processes: ``edge-gateway run`` with its config defaults (``batch.linger_s``, ``batch.hold_s``,
``store.sync_interval_s``) reads a line-protocol board on a pty that this test writes itself, and delivers to a
separate ``edge-gateway receive`` process, over HTTP or through a real Mosquitto. The test SIGKILLs the agent at
seeded random moments, at several rates, with the receiver up (most readings already delivered) and down (every
reading only in the agent's store, committed without an fsync), and restarts it on the same store.

"Arrived" is defined by the feed: the test writes ``id=board-1 n=<k>`` lines and notes when each ``write``
returned; a line is read by the agent after that, so "written more than 0.25 s before the kill" is a stricter
condition than "arrived more than 0.25 s before". Lines count only while the agent is known to be reading (from
the moment the agent, in a new boot epoch, has read every line waiting in the pty); while the agent is down the
feed writes only a slow probe sensor (``board-0``), so little backlog builds up in the pty. Over MQTT with the
receiver down, the broker still acknowledges (it queues for the receiver's persistent session), so the readings
are at risk in the broker's queue rather than in the agent's store; the broker is never killed here. Assertion: every counted line written
more than 0.25 s before a kill (and every line of the last, cleanly stopped run) is at the receiver.
"""

import os
import random
import signal
import time

import pytest

from gateway.adapters import boot_epoch
from tests.support import reserve_port as free_port
from tests.support.faults import Receiver, killpg, prepare_store, spawn
from tests.support import wait_until
from tests.support.feed import Feed, received_counter, stop_all, write_config
from tests.support.mosquitto import Broker, have_mosquitto

WINDOW = 0.25  # the promise: readings that arrived earlier than this before a kill survive it


def run_loss_window(tmp_path, uplink_toml, receiver, cycles, seed):
    store = str(tmp_path / "store")
    prepare_store(store)
    feed = Feed().start()
    config = write_config(store, feed.path, uplink_toml)
    log = open(os.path.join(str(tmp_path), "agent.log"), "ab")
    rng = random.Random(seed)
    rates = [20, 200, 1000]
    required = set()
    boot_file = os.path.join(store, "queue.sqlite.boot")
    proc = None
    try:
        for i in range(cycles + 1):
            last = i == cycles
            receiver_down = not last and i % 2 == 1  # odd cycles: the readings exist only in the agent's store
            if receiver_down and receiver.proc is not None and receiver.proc.poll() is None:
                receiver.kill()
            elif not receiver_down and (receiver.proc is None or receiver.proc.poll() is not None):
                receiver.start()
            previous = boot_epoch.read(boot_file)
            proc = spawn(["run", "--config", config], log)
            # Ready: the agent started a new boot epoch and has read every probe line written meanwhile (the
            # probes piled up in the pty while no agent ran).
            wait_until(lambda: boot_epoch.read(boot_file) != previous, 30, "a new boot epoch")
            wait_until(feed.drained, 30, "the agent to read the pty")
            assert proc.poll() is None, "agent exited early (%s)" % proc.returncode
            feed.rate = rates[i % len(rates)]
            start = len(feed.written)
            feed.counting = True
            if last:  # feed a while, wait until everything is delivered, stop cleanly
                time.sleep(1.5)
                feed.counting = False
                required.update(k for k, _ in feed.written[start:])
                deadline = time.monotonic() + 60  # then the assertion below names what is missing
                while not required <= received_counter(receiver.db) and time.monotonic() < deadline:
                    time.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
                break
            time.sleep(rng.uniform(0.4, 2.0))  # the random moment of the kill
            kill_at = time.monotonic()
            killpg(proc)
            feed.counting = False
            required.update(k for k, t in feed.written[start:] if t <= kill_at - WINDOW)
            print("cycle", i, feed.rate, len(feed.written) - start, len(required), receiver_down)
    finally:
        stop_all(feed, log, proc, receiver)
    got = received_counter(receiver.db)
    assert len(required) > 500
    missing = sorted(required - got)
    assert not missing, "%d of %d readings lost, e.g. %s" % (len(missing), len(required), missing[:10])


@pytest.mark.timeout(180)
def test_sigkill_over_http_loses_nothing_older_than_the_window(tmp_path):
    port = free_port()
    receiver = Receiver(str(tmp_path), str(tmp_path / "store" / "jwks.json"), port)
    uplink = '[uplink]\nurl = "http://127.0.0.1:%d/v1/batches"\nbackoff_min_s = 0.05\nbackoff_max_s = 0.5' % port
    run_loss_window(tmp_path, uplink, receiver, cycles=6, seed=21)


@pytest.mark.timeout(180)
@pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")
def test_sigkill_over_mqtt_loses_nothing_older_than_the_window(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    receiver = Receiver(str(tmp_path), str(tmp_path / "store" / "jwks.json"), free_port(),
                        mqtt=broker.url + "/edge", group="lw")
    uplink = ('[uplink]\nkind = "mqtt"\nbackoff_min_s = 0.05\nbackoff_max_s = 0.5\n[uplink.mqtt]\n'
              'host = "127.0.0.1"\nport = %d\ntopic_prefix = "edge"' % broker.port)
    try:
        run_loss_window(tmp_path, uplink, receiver, cycles=6, seed=22)
    finally:
        broker.stop()
