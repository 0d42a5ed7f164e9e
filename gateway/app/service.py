"""``edge-gateway run --config FILE``: the production daemon shell.

It builds the stages from a validated config, runs the agent, and exits cleanly on SIGTERM (flushing what the
batcher holds into the store first). Everything that can be wrong with the config or the key is reported before
any sensor is opened. Under systemd it reports readiness and keeps the watchdog fed from the event loop
(``gateway.app.watchdog``), and at each start it finds out why the previous run ended and reports it
(``gateway.adapters.restart_reason``; docs/operations.md, "Why it restarted").
"""

import asyncio
import logging
import os
import signal

from drivers.sources import build_source
from gateway.adapters import keys
from gateway.adapters.restart_reason import RunMarker, record_stop
from gateway.app.actions import build_actions
from gateway.adapters.versions import Layout
from gateway.app.agent import Agent
from gateway.app.watchdog import Notifier, supervise
from gateway.app.downlink import recover_check, report_recovered_check, start_downlink, stop_downlink
from gateway.app.update_agent import restart_note, start_update_watch
from gateway.core.clock import SystemClock
from gateway.core.errors import ConfigError, KeyFileError, StoreError
from gateway.core.model import Reading
from gateway.core.pipeline import HEALTH_SENSOR
from gateway.adapters.journal import SUFFIX as JOURNAL_SUFFIX, Journal
from gateway.adapters.store import Store
from gateway.adapters.uplink import SectionError, WARN, build_uplink, uplink_class

log = logging.getLogger(__name__)


def build_rules(cfg):
    """The pipeline's rules stage: the rules engine (None without ``[[rules]]``), behind presence when
    ``[presence]`` gives this gateway zones."""
    rules = None
    if cfg.rules:
        from gateway.core.model import Event
        from gateway.core.rules import RuleEngine
        try:
            rules = RuleEngine(cfg.rules, event_factory=Event)
        except ValueError as exc:
            raise ConfigError(str(exc), cfg.file, "rules") from exc
    if cfg.presence is not None:
        return presence_stage(cfg.presence, cfg.gateway.id, rules)
    return rules


def presence_stage(section, gw, rules=None):
    """A ``PresenceStage`` for the zones of ``section`` (a ``PresenceSection``) that gateway ``gw`` tracks, in
    front of ``rules``; just ``rules`` when none of the zones is this gateway's."""
    from gateway.core.presence import PresenceStage, PresenceTracker
    zones = section.zones_for(gw)
    if not zones:
        log.warning("[presence]: no zone is for gateway %s (each names another gateway); presence is off", gw)
        return rules
    tracker = PresenceTracker([{"name": z.name, "beacons": z.beacons, "sensors": z.sensors, "enter_dbm": z.enter_dbm,
                                "leave_dbm": z.leave_dbm, "timeout_s": z.timeout_s or None} for z in zones],
                              alpha=section.alpha, timeout_s=section.timeout_s, mode=section.mode)
    return PresenceStage(tracker, rules, report_s=section.report_s)


def build_agent(cfg, clock=None, homeassistant=None, **extra):
    """Build an ``Agent`` (not started) from a validated ``Config``. ``homeassistant``: a Home Assistant publisher
    that sees what the rules stage forwards (``gateway/app/homeassistant.py``), or None."""
    clock = clock or SystemClock(cfg.clock.mode)
    os.makedirs(cfg.gateway.state_dir, mode=0o700, exist_ok=True)
    key = keys.load_private(cfg.state_path(cfg.gateway.key))
    try:
        uplink = build_uplink(cfg.uplink)
    except SectionError as exc:
        raise ConfigError(str(exc), cfg.file, exc.key) from exc
    except (ValueError, OSError) as exc:
        raise ConfigError(str(exc), cfg.file, "uplink") from exc
    # typed configs parsed once at load (a Config built by hand may hold only the tables: they are parsed here)
    specs = cfg.source_configs or cfg.sources
    sources = [build_source(spec, clock, cfg.file, i, cfg.gateway.state_dir) for i, spec in enumerate(specs)]
    store = Store(cfg.state_path(cfg.store.path), max_bytes=cfg.store.max_bytes,
                  max_age=cfg.store.max_age_days * 86400.0, clock=clock, sync_interval=cfg.store.sync_interval_s)
    if store.recovered_from:  # the store logged what it salvaged and lost; this line is for the start-up summary
        log.error("store %s was corrupt; moved aside to %s (delete it once inspected) and started a new one: %s",
                  store.path, store.recovered_from, store.salvage.summary() if store.salvage else "nothing salvaged")
    rules = build_rules(cfg)
    if homeassistant is not None:
        from gateway.app.homeassistant import HomeAssistantTap
        rules = HomeAssistantTap(rules, homeassistant)
    journal = Journal(store.path + JOURNAL_SUFFIX) if cfg.store.journal else None
    return Agent(gw=cfg.gateway.id, key=key, store=store, uplink=uplink, sources=sources, clock=clock,
                 batch=cfg.batch, rules=rules, backoff=(cfg.uplink.backoff_min_s, cfg.uplink.backoff_max_s),
                 max_pending=cfg.store.memory_batches, deliver_first=cfg.store.deliver_first,
                 actions=build_actions(cfg, clock), journal=journal, frame_bytes=uplink.frame_bytes, **extra)


def report_last_stop(agent, previous, counts=None):
    """Why the previous run ended: logged, shown by the console's ``status``, and sent upstream as the health record
    ``health/last_stop.<kind>[.<detail>] = 1`` in the first batch of this run (docs/wire-format.md); ``counts``
    (stops by kind, from the run marker) become the health records ``restarts.<kind>`` and the metrics."""
    text = previous.describe()
    (log.info if previous.kind in ("clean", "first", "update") else log.warning)("previous run ended: %s", text)
    agent.last_stop = text
    agent.last_stop_kind = previous.kind
    agent.restarts = dict(counts or {})
    agent.emit(Reading(HEALTH_SENSOR, previous.health_name(), 1, None, agent.clock.monotonic()))


def _mark(write, *args):
    """Update the run marker at the end of a run; a failed write (a full or failing card) must not turn a clean
    stop into a crash, nor hide the exception that ended the run: the next start then says ``power loss``."""
    try:
        write(*args)
    except OSError as exc:
        log.error("cannot update the run marker: %s (the next start will report power loss or kill -9)", exc)


async def _start_metrics(agent, cfg):
    """The ``[metrics]`` endpoint, when ``listen`` is set; a port already taken is a config error (exit 78)."""
    if not cfg.metrics.listen:
        return None
    from gateway.app.metrics import start_metrics
    try:
        return await start_metrics(agent, cfg.metrics)
    except OSError as exc:
        agent.store.close()
        raise ConfigError("cannot listen on %s: %s" % (cfg.metrics.listen, exc.strerror or exc), cfg.file,
                          "metrics.listen") from exc


EXIT_RESTART = 75  # the console's `restart`: exit non-zero so systemd's Restart=on-failure starts us again


async def run_service(cfg, console_port=None):
    """Run the agent until SIGTERM/SIGINT, serving the technician console when a port is configured."""
    cfg, interrupted_check = recover_check(cfg)  # an uplink change a stop interrupted: the previous config is back
    from gateway.app.homeassistant import build_publisher, report_gateway
    publisher = build_publisher(cfg)  # None unless [homeassistant] enabled = true
    agent = build_agent(cfg, homeassistant=publisher)
    metrics = await _start_metrics(agent, cfg)  # before the run marker: a port in use is like a config error
    marker = RunMarker(cfg.gateway.state_dir)
    try:
        previous = marker.start(update=restart_note(Layout(cfg.update.base, cfg.gateway.state_dir)))
    except OSError as exc:
        raise StoreError("cannot write the run marker %s: %s" % (marker.path, exc)) from exc
    report_last_stop(agent, previous, marker.counts)
    transport = uplink_class(cfg.uplink.kind).transport(cfg.uplink)
    if transport.status == WARN:
        log.warning("%s", transport.message)  # the URL in it is redacted (gateway.core.redact)
    stop = asyncio.Event()
    restart = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console = None
    port = console_port or cfg.console.port

    def request_restart():
        restart.append(1)
        loop.call_soon_threadsafe(stop.set)
    downlink = start_downlink(agent, cfg, request_restart)  # None unless [downlink] operators is set
    update = start_update_watch(agent, cfg, request_restart)  # None unless update.base holds an install
    report_recovered_check(agent, interrupted_check)
    if port:
        from gateway.app.console.serve import serve_console
        console = serve_console(agent, port, cfg.file, request_restart=request_restart)
    notifier = Notifier.from_env()
    supervisor = asyncio.create_task(supervise(notifier, stop), name="sd_notify")  # runs once agent.run awaits
    reporter = None
    if publisher is not None:
        publisher.start()  # its own threads: a local broker that is down costs the agent nothing
        reporter = asyncio.create_task(report_gateway(agent, publisher, cfg.homeassistant.status_s),
                                       name="homeassistant")
    try:
        await agent.run(stop)
    except BaseException as exc:  # recorded for the next start's "last stop", then raised on
        _mark(marker.crash, exc)
        raise
    finally:
        for task in (supervisor, update):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (supervisor, update) if t is not None), return_exceptions=True)
        if publisher is not None:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
            await asyncio.to_thread(publisher.close)  # "offline" on the availability topic: a clean stop
        notifier.close()
        await stop_downlink(downlink)
        if metrics is not None:
            await metrics.close()
        if console is not None:
            console.cancel()
            await asyncio.gather(console, return_exceptions=True)
        agent.store.close()
    _mark(marker.clean)
    log.info("agent stopped: %s", dict(agent.counters))
    return EXIT_RESTART if restart else 0


def run_from_config(config_path, console_port=None):
    """``edge-gateway run`` and ``edge-gateway console``: load the config, set up logging, run until stopped.

    Returns the exit status: 0 after SIGTERM; 78 (EX_CONFIG) for a config error, which systemd does not restart
    (``RestartPreventExitStatus=``); 2 for a key or store that cannot be used; 75 for the console's ``restart``.
    """
    import sys

    from gateway.app.config import EX_CONFIG, load
    from gateway.core.redact import install_log_redaction, redact_text
    try:
        cfg = load(config_path)
    except ConfigError as exc:
        print("edge-gateway: config error: %s" % redact_text(str(exc)), file=sys.stderr)
        return EX_CONFIG
    logging.basicConfig(level=getattr(logging, cfg.gateway.log_level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    try:
        return asyncio.run(run_service(cfg, console_port=console_port))
    except ConfigError as exc:
        print("edge-gateway: config error: %s" % redact_text(str(exc)), file=sys.stderr)
        return EX_CONFIG
    except (KeyFileError, StoreError) as exc:
        print("edge-gateway: %s" % redact_text(str(exc)), file=sys.stderr)
        return 2


def record_stop_from_config(config_path):
    """``edge-gateway record-stop``, the unit's ``ExecStopPost=``: keep systemd's ``$SERVICE_RESULT``,
    ``$EXIT_CODE`` and ``$EXIT_STATUS`` in the state directory, so the next start can tell a watchdog kill or the
    OOM killer from power loss (gateway/adapters/restart_reason.py)."""
    import sys

    from gateway.app.config import EX_CONFIG, load
    from gateway.core.redact import redact_text
    try:
        cfg = load(config_path)
    except ConfigError as exc:
        print("edge-gateway: config error: %s" % redact_text(str(exc)), file=sys.stderr)
        return EX_CONFIG
    try:
        record = record_stop(cfg.gateway.state_dir, os.environ)
    except OSError as exc:
        print("edge-gateway: cannot record the stop in %s: %s" % (cfg.gateway.state_dir, exc), file=sys.stderr)
        return 1
    print("edge-gateway: stop recorded: %s" % " ".join("%s=%s" % kv for kv in sorted(record.items())),
          file=sys.stderr)
    return 0
