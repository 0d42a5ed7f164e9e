"""The metrics endpoint (``[metrics] listen``): what a running agent exposes to Prometheus, and the listener.

``collect(agent)`` reads the agent on its event loop (store snapshot, counters, sources, the run marker's counts,
``/proc`` for memory, CPU and disk writes) and returns the families that ``gateway.core.openmetrics.render``
writes; ``start_metrics(agent, cfg)`` serves them on ``GET /metrics`` (``gateway.adapters.metrics_http``). Every
name is in ``METRICS`` with its type and help text, and docs/operations.md ("Health records and metrics") says
what each means and what to do about it; a test scrapes a real agent and checks that every documented name is
there. Scraping costs ~0.2 ms of agent CPU (docs/performance.md, "Metrics endpoint").
"""

import logging

from gateway import __version__
from gateway.adapters import procstats
from gateway.adapters.metrics_http import MetricsServer
from gateway.adapters.restart_reason import KINDS
from gateway.app.config import parse_listen
from gateway.core.openmetrics import CONTENT_TYPE, Family, render

log = logging.getLogger(__name__)

PREFIX = "edge_gateway_"
UPLINK_STATES = ("starting", "idle", "up", "down")
#: the BLE adapter's states (drivers/ble/recovery.py ADAPTER_STATES; repeated here so loading the metrics never
#: imports a driver)
BLE_STATES = ("starting", "scanning", "silent", "power_cycling", "needs_reset")
#: reason label -> (counter, where it is kept) for ``dropped_readings_total``/``dropped_batches_total``
DROPPED_READINGS = {"store_full": "dropped_readings", "memory_full": "memory_dropped_readings",
                    "bad_value": "readings_bad_value"}
DROPPED_BATCHES = {"store_full": "dropped_batches", "store_full_alarm": "dropped_alarm_batches",
                   "expired": "expired_batches", "memory_full": "memory_dropped_batches",
                   "quarantined": "quarantined", "lost": "lost_batches"}

#: name -> (type, help). The names without the prefix are the ``process_*`` standard ones.
METRICS = {
    "edge_gateway_build": ("info", "the agent's version and gateway id"),
    "edge_gateway_uptime_seconds": ("gauge", "seconds since the agent started"),
    "edge_gateway_clock_synced": ("gauge", "1 while the wall clock is synchronised (NTP)"),
    "edge_gateway_queue_batches": ("gauge", "batches in the store waiting for delivery"),
    "edge_gateway_queue_readings": ("gauge", "readings in those batches"),
    "edge_gateway_queue_bytes": ("gauge", "bytes of those batches on disk"),
    "edge_gateway_queue_alarm_batches": ("gauge", "alarm batches among them"),
    "edge_gateway_queue_oldest_age_seconds": ("gauge", "age of the oldest batch not yet delivered (0: none)"),
    "edge_gateway_memory_batches": ("gauge", "sealed batches waiting in RAM for the disk or their first send"),
    "edge_gateway_readings_in": ("counter", "readings and events each source emitted"),
    "edge_gateway_readings_sent": ("counter", "readings the upstream acknowledged"),
    "edge_gateway_batches_sent": ("counter", "batches the upstream acknowledged"),
    "edge_gateway_dropped_readings": ("counter", "readings dropped, by reason"),
    "edge_gateway_dropped_batches": ("counter", "batches dropped or set aside unsent, by reason"),
    "edge_gateway_decode_errors": ("counter", "frames or adverts that did not decode, by source and reason"),
    "edge_gateway_uplink_state": ("gauge", "1 for the uplink's current state"),
    "edge_gateway_uplink_failures": ("counter", "failed sends (the batch was kept and retried)"),
    "edge_gateway_uplink_last_ack_timestamp_seconds": ("gauge", "wall time of the last acknowledgement"),
    "edge_gateway_delivery_latency_seconds": ("histogram", "from a batch's cut to its acknowledgement"),
    "edge_gateway_store_fsyncs": ("counter", "fsyncs of the queue file (SD card wear)"),
    "edge_gateway_disk_written_bytes": ("counter", "bytes written to the storage device (/proc/self/io)"),
    "edge_gateway_restarts": ("counter", "runs of the agent that ended, by reason (kept in the state directory)"),
    "edge_gateway_last_stop": ("gauge", "1 for why the previous run ended"),
    "edge_gateway_ble_adapter_state": ("gauge", "1 for each BLE scanner's adapter state"),
    "edge_gateway_ble_power_cycles": ("counter", "BLE adapter power cycles through BlueZ, by result"),
    "edge_gateway_ble_adapter_needs_reset": ("counter", "times a BLE adapter stayed silent through every power cycle"),
    "edge_gateway_ble_scan_restarts": ("counter", "restarts of a BLE scan"),
    "edge_gateway_ble_last_advert_age_seconds": ("gauge", "seconds since the scanner's last advertisement"),
    "edge_gateway_metrics_scrapes": ("counter", "scrapes of this endpoint"),
    "process_resident_memory_bytes": ("gauge", "resident memory of the agent"),
    "process_cpu_seconds": ("counter", "user and system CPU time of the agent"),
}


def _families():
    return {name: Family(name, kind, text) for name, (kind, text) in METRICS.items()}


def collect(agent, scrapes=0):
    """The families of one scrape, read from ``agent`` (on its event loop)."""
    f = _families()
    now = agent.clock.monotonic()
    wall = agent.clock.wall()
    f["edge_gateway_build"].add(1, version=__version__, gw=agent.gw)
    f["edge_gateway_uptime_seconds"].add(round(now - agent.started, 3))
    f["edge_gateway_clock_synced"].add(int(bool(agent.pipeline.timebase.synced)))
    snapshot = agent.store.snapshot
    n, readings, size, alarms = snapshot.depth
    f["edge_gateway_queue_batches"].add(n)
    f["edge_gateway_queue_readings"].add(readings)
    f["edge_gateway_queue_bytes"].add(size)
    f["edge_gateway_queue_alarm_batches"].add(alarms)
    created = [c for c in (snapshot.oldest, agent._pending[0].created if agent._pending else None) if c]
    f["edge_gateway_queue_oldest_age_seconds"].add(round(max(0.0, wall - min(created)), 3) if created else 0)
    f["edge_gateway_memory_batches"].add(len(agent._pending))
    for src in agent.sources:
        f["edge_gateway_readings_in"].add(agent.readings_in[src.name], source=src.name)
    counters = agent.counters
    f["edge_gateway_readings_sent"].add(counters["readings_sent"])
    f["edge_gateway_batches_sent"].add(counters["batches_sent"])
    kept = dict(snapshot.counters)
    for fam, table in (("edge_gateway_dropped_readings", DROPPED_READINGS),
                       ("edge_gateway_dropped_batches", DROPPED_BATCHES)):
        for reason, key in table.items():
            f[fam].add(kept.get(key, counters[key]), reason=reason)
    f["edge_gateway_dropped_batches"].add(kept.get("poison_batches", 0), reason="poison")
    for src in agent.sources:
        for key, value in src.counters.items():
            if key.startswith("error."):
                f["edge_gateway_decode_errors"].add(value, source=src.name, reason=key[6:])
    for state in UPLINK_STATES:
        f["edge_gateway_uplink_state"].add(int(agent.uplink_state == state), state=state)
    f["edge_gateway_uplink_failures"].add(counters["uplink_failures"])
    if agent.last_ack is not None:
        f["edge_gateway_uplink_last_ack_timestamp_seconds"].add(round(agent.last_ack, 3))
    f["edge_gateway_delivery_latency_seconds"].samples.extend(agent.latency.samples())
    f["edge_gateway_store_fsyncs"].add(agent.store.fsyncs)
    written = procstats.write_bytes()
    if written is not None:
        f["edge_gateway_disk_written_bytes"].add(written)
    for kind in KINDS:  # every reason, 0 included: a rate() over a label that appears later misses its first stop
        if kind != "first":
            f["edge_gateway_restarts"].add(agent.restarts.get(kind, 0), reason=kind)
    if agent.last_stop_kind is not None:
        f["edge_gateway_last_stop"].add(1, reason=agent.last_stop_kind)
    _ble(f, agent.sources)
    f["edge_gateway_metrics_scrapes"].add(scrapes)
    rss = procstats.rss_bytes()
    if rss is not None:
        f["process_resident_memory_bytes"].add(rss)
    f["process_cpu_seconds"].add(round(procstats.cpu_seconds(), 3))
    return list(f.values())


def _ble(f, sources):
    """The BLE scanners: any source with an adapter recovery (``drivers/ble/adapter.py`` BleScanSource)."""
    for src in sources:
        recovery = getattr(src, "recovery", None)
        if recovery is None:
            continue
        labels = {"source": src.name, "adapter": src.adapter}
        for state in BLE_STATES:
            f["edge_gateway_ble_adapter_state"].add(int(recovery.state == state), state=state, **labels)
        c = src.counters
        failed = c.get("power_cycle_failed", 0)
        f["edge_gateway_ble_power_cycles"].add(c.get("power_cycles", 0) - failed, result="ok", **labels)
        f["edge_gateway_ble_power_cycles"].add(failed, result="failed", **labels)
        f["edge_gateway_ble_adapter_needs_reset"].add(c.get("adapter_needs_reset", 0), **labels)
        f["edge_gateway_ble_scan_restarts"].add(c.get("restarts", 0), **labels)
        if src.last_advert is not None:
            f["edge_gateway_ble_last_advert_age_seconds"].add(
                round(src.clock.monotonic() - src.last_advert, 3), **labels)


async def start_metrics(agent, section):
    """Serve ``GET /metrics`` on ``section.listen`` (``host:port``) until ``close()``; None when it is empty."""
    if not section.listen:
        return None
    host, port = parse_listen(section.listen)
    server = MetricsServer(lambda: render(collect(agent, server.scrapes)), CONTENT_TYPE)
    await server.start(host, port)
    log.info("metrics: serving http://%s/metrics", section.listen)
    return server

