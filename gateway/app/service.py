"""``edge-gateway run --config FILE``: the production daemon shell.

It builds the stages from a validated config, runs the agent, and exits cleanly on SIGTERM (flushing what the
batcher holds into the store first). Everything that can be wrong with the config or the key is reported before
any sensor is opened.
"""

import asyncio
import logging
import os
import signal

from drivers.sources import build_source
from gateway.adapters import keys
from gateway.app.agent import Agent
from gateway.app.downlink import start_downlink, stop_downlink
from gateway.core.clock import SystemClock
from gateway.core.errors import ConfigError, KeyFileError, StoreError
from gateway.adapters.store import Store
from gateway.adapters.uplink import SectionError, WARN, build_uplink, uplink_class

log = logging.getLogger(__name__)


def build_rules(cfg):
    if not cfg.rules:
        return None
    from gateway.core.model import Event
    from gateway.core.rules import RuleEngine
    try:
        return RuleEngine(cfg.rules, event_factory=Event)
    except ValueError as exc:
        raise ConfigError(str(exc), cfg.file, "rules") from exc


def build_agent(cfg, clock=None, **extra):
    """Build an ``Agent`` (not started) from a validated ``Config``."""
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
                  max_age=cfg.store.max_age_days * 86400.0, clock=clock)
    if store.recovered_from:  # the store logged what it salvaged and lost; this line is for the start-up summary
        log.error("store %s was corrupt; moved aside to %s (delete it once inspected) and started a new one: %s",
                  store.path, store.recovered_from, store.salvage.summary() if store.salvage else "nothing salvaged")
    return Agent(gw=cfg.gateway.id, key=key, store=store, uplink=uplink, sources=sources, clock=clock,
                 batch=cfg.batch, rules=build_rules(cfg), backoff=(cfg.uplink.backoff_min_s, cfg.uplink.backoff_max_s),
                 max_pending=cfg.store.memory_batches, **extra)


EXIT_RESTART = 75  # the console's `restart`: exit non-zero so systemd's Restart=on-failure starts us again


async def run_service(cfg, console_port=None):
    """Run the agent until SIGTERM/SIGINT, serving the technician console when a port is configured."""
    agent = build_agent(cfg)
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
    if port:
        from gateway.app.console.serve import serve_console
        console = serve_console(agent, port, cfg.file, request_restart=request_restart)
    try:
        await agent.run(stop)
    finally:
        await stop_downlink(downlink)
        if console is not None:
            console.cancel()
            await asyncio.gather(console, return_exceptions=True)
        agent.store.close()
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
