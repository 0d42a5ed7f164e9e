"""The backend at fleet scale (issue 16): 200 simulated gateways (``edge-gateway fleet-sim``) for 60 s over a real
Mosquitto into 3 ``edge-gateway receive`` workers on one MQTT v5 shared subscription, all writing one real
PostgreSQL. One worker is SIGKILLed mid-run (during the reconnect storm) and restarted under its client id; 20% of
the gateways are cut off for 20 s and reconnect with their backlog. Every batch the simulator had acknowledged
(PUBACK) is in PostgreSQL exactly once: one ``batches`` row and exactly its records, no more.

Wall time: about 60 s of simulation, a few seconds of drain, ~10 s of start and stop (bounded throughout).
"""

import signal
import time

import pytest

from tests.support import wait_until
from tests.support.fleet import (assert_exactly_once, consuming, enrolled, final_stats, fleet_run, sim_finished,
                                 sim_results, start_workers, stored)
from tests.support.mosquitto import Broker, have_mosquitto
from tests.support.postgres import pg_url, postgres  # noqa: F401  (fixtures: a real PostgreSQL)

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")

GATEWAYS, SECONDS, RATE, RECORDS = 200, 60, 1.0, 10
CUT_SHARE, CUT_AT, CUT_FOR = 0.2, 15, 20
KILL_AT = CUT_AT + CUT_FOR + 2  # seconds into the run: the storm is being drained
DOWN_FOR = 3                    # the killed worker stays dead this long (the behaviour under test)
BOOT = 7


def test_fleet_over_shared_subscription_into_postgres(tmp_path, pg_url):  # noqa: F811
    broker = Broker(tmp_path / "broker").start()
    trust, sim_args = enrolled(tmp_path, GATEWAYS, 3, BOOT)
    workers = []
    try:
        workers = start_workers(tmp_path, trust, broker, pg_url, 3, "fleet", "rx-fleet")

        with fleet_run(tmp_path, sim_args, broker, RATE, RECORDS, SECONDS, "--cut-share", str(CUT_SHARE),
                       "--cut-at", str(CUT_AT), "--cut-for", str(CUT_FOR)) as sim:
            start = time.monotonic()
            victim = workers[1]
            time.sleep(KILL_AT)  # the schedule under test: the kill lands during the storm's drain
            victim.kill()
            time.sleep(DOWN_FOR)  # the worker stays dead a while; the broker keeps its session
            victim.start()
            wait_until(lambda: consuming(victim, 2), 20, "the restarted worker subscribed")
            sim_finished(sim, tmp_path, SECONDS + 60)
        elapsed = time.monotonic() - start
        report, acked = sim_results(tmp_path)

        # the simulator: everything it made was acknowledged; the outage happened and drained
        assert report["made"] == report["acked"] == len(acked) > GATEWAYS * SECONDS * RATE * 0.9
        assert report["pending"] == report["dropped"] == report["rejected"] == 0
        outage = report["outage"]
        assert outage["gateways"] == GATEWAYS * CUT_SHARE
        assert outage["backlog_at_reconnect"] >= outage["gateways"] * (CUT_FOR - 2) * RATE
        assert outage["caught_up"] == outage["gateways"] and outage["drain_s"] is not None

        # PostgreSQL: every acknowledged batch exactly once, with exactly its records
        batches, rows = stored(pg_url, BOOT, len(acked))
        assert_exactly_once(acked, batches, rows)
        # a batch stored but never acknowledged can only come from a send the simulator saw fail
        assert len(set(batches) - set(acked)) <= report["retries"]
        assert sum(rows.values()) == sum(batches.values())
        assert sum(n for n, *_ in acked.values()) == report["acked_records"]

        # the killed worker came back under its client id and took its share again
        for w in workers:
            w.stop()
        stats = []
        for w in workers:
            w.proc.wait(30)
            stats.append(final_stats(w))
        assert all(s["stored"] > 0 and s["store_failures"] == 0 and s["rejected"] == 0 for s in stats), stats
        assert elapsed < SECONDS + 45, "the run took %.0f s" % elapsed
    finally:
        for w in workers:
            if w.proc and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGKILL)
        broker.stop()
