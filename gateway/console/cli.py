"""Wiring for the technician's console: ``edge-gateway console`` and ``serve_console`` for the agent and the demo.

* ``edge-gateway console --port DEV --config FILE``: run the agent from FILE (as ``run`` does) and serve the
  console on DEV. ``restart`` stops it with exit status 75, so systemd's ``Restart=`` starts it again.
* ``edge-gateway console --set-pin [--config FILE]``: read a PIN twice without echo and print its salted scrypt
  hash; with ``--config`` write it to ``[console] pin_hash`` of FILE (atomically) instead.
* ``serve_console(agent, port, config_path, ...)``: start the console as an asyncio task next to ``agent.run``.
"""

import asyncio
import getpass
import logging
import os
import signal
import sys
import tomllib

from gateway.console.auth import AuditLog, LockState, PinLock, hash_pin
from gateway.console.board import SensorBoard
from gateway.console.commands import Console
from gateway.console.serial_io import ConsoleServer
from gateway.console.view import AgentView, RingLogHandler
from gateway.errors import ConfigError, KeyFileError, StoreError
from gateway.redact import install_log_redaction, redact_text

log = logging.getLogger(__name__)



def attach_board(agent, board):
    """Feed ``board`` with everything the sources emit (the agent calls each of ``agent.observers``)."""
    observers = getattr(agent, "observers", None)
    if observers is None:
        observers = agent.observers = []
    observers.append(board.observe)


def _default_restart():
    os.kill(os.getpid(), signal.SIGTERM)  # the daemon shell's SIGTERM handler stops the agent cleanly


def build_console(agent, port, config_path=None, *, board=None, request_restart=None, pin_hash=None,
                  idle_lock_s=None, baud=None, max_failures=5, lockout_s=900.0, backoff_s=1.0, audit_path=None,
                  lock_path=None, ring_capacity=500, **server_options):
    """Everything the console needs, not started: returns a ``ConsoleServer`` (``.run()`` is the coroutine).

    Settings come from ``[console]`` of ``config_path`` (``pin_hash``, ``idle_lock_s``, ``baud``); keyword
    arguments override them. With a config, the audit trail goes to ``<state_dir>/console-audit.log`` and the PIN
    lock's failures and wait to ``<state_dir>/console-lock.json`` (so a restart does not reset a lockout).
    """
    cfg = None
    if config_path:
        from gateway.config import load
        cfg = load(config_path)
    section = cfg.console if cfg else None
    pin_hash = pin_hash if pin_hash is not None else (section.pin_hash if section else "")
    idle_lock_s = idle_lock_s if idle_lock_s is not None else (section.idle_lock_s if section else 300.0)
    baud = baud or (section.baud if section else 115200)
    if audit_path is None and cfg is not None:
        audit_path = os.path.join(cfg.gateway.state_dir, "console-audit.log")
    if lock_path is None and cfg is not None:
        lock_path = os.path.join(cfg.gateway.state_dir, "console-lock.json")
    if board is None:
        board = SensorBoard()
        attach_board(agent, board)
    ring = RingLogHandler(ring_capacity)
    view = AgentView(agent, board, config_path, ring, request_restart or _default_restart)
    try:
        lock = PinLock(pin_hash, agent.clock, max_failures=max_failures, lockout_s=lockout_s, backoff_s=backoff_s,
                       idle_lock_s=idle_lock_s, state=LockState(lock_path) if lock_path else None)
    except ConfigError as exc:
        log.error("console: %s; write commands are disabled", exc)
        lock = PinLock("", agent.clock, idle_lock_s=idle_lock_s)
    view.lock = lock
    console = Console(view, lock, AuditLog(agent.clock, audit_path))
    server = ConsoleServer(port, console, baud=baud, **server_options)
    server.ring = ring
    return server


async def _serve(server):
    root = logging.getLogger()
    root.addHandler(server.ring)
    try:
        await server.run()
    finally:
        root.removeHandler(server.ring)


def serve_console(agent, port, config_path=None, **options):
    """Start the console on ``port`` as an asyncio task (call it inside the running loop, next to
    ``agent.run``); cancel the task to stop it. ``options`` go to ``build_console`` (e.g. ``request_restart``,
    a callable that stops the agent; by default the process sends itself SIGTERM). The task's ``server``
    attribute is the ``ConsoleServer``."""
    server = build_console(agent, port, config_path, **options)
    task = asyncio.create_task(_serve(server), name="console:" + port)
    task.server = server
    return task


# -- edge-gateway console ---------------------------------------------------------------------------------------
def register(subparsers):
    p = subparsers.add_parser("console", help="serve the technician's serial console (with the agent)")
    p.add_argument("--port", metavar="DEV", help="the console tty, e.g. /dev/ttyGS0 or /dev/serial0")
    p.add_argument("--config", metavar="FILE", help="the agent's config (default: run without write commands)")
    p.add_argument("--set-pin", action="store_true",
                   help="read a new PIN and print its hash (or write it to --config FILE)")
    p.set_defaults(func=cmd_console)
    return p


def cmd_console(args, stdin=None, out=None):
    out = out or sys.stdout
    if args.set_pin:
        return _set_pin(args.config, stdin, out)
    if not args.port or not args.config:
        print("edge-gateway: console needs --port DEV and --config FILE (or --set-pin)", file=sys.stderr)
        return 2
    from gateway.config import EX_CONFIG, load
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print("edge-gateway: config error: %s" % redact_text(str(exc)), file=sys.stderr)
        return EX_CONFIG
    logging.basicConfig(level=getattr(logging, cfg.gateway.log_level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    try:
        return asyncio.run(_run_with_console(cfg, args.port, args.config))
    except ConfigError as exc:
        print("edge-gateway: config error: %s" % redact_text(str(exc)), file=sys.stderr)
        return EX_CONFIG
    except (KeyFileError, StoreError) as exc:
        print("edge-gateway: %s" % redact_text(str(exc)), file=sys.stderr)
        return 2


async def _run_with_console(cfg, port, config_path):
    from gateway.service import run_service
    return await run_service(cfg, console_port=port)


def _set_pin(config_path, stdin, out):
    if stdin is not None or not sys.stdin.isatty():
        lines = (stdin or sys.stdin).read().split("\n")
        first, second = lines[0].strip(), (lines[1].strip() if len(lines) > 1 else "")
    else:
        first = getpass.getpass("new console PIN: ")
        second = getpass.getpass("again: ")
    if first != second:
        print("edge-gateway: the two PINs differ", file=sys.stderr)
        return 2
    try:
        encoded = hash_pin(first)
    except ValueError as exc:
        print("edge-gateway: %s" % exc, file=sys.stderr)
        return 2
    if not config_path:
        print(encoded, file=out)
        return 0
    from gateway.config import from_dict, to_toml, write_atomic
    try:
        with open(config_path, "rb") as f:
            raw = tomllib.load(f)
        raw.setdefault("console", {})["pin_hash"] = encoded
        from_dict(raw, config_path)
        mode = os.stat(config_path).st_mode & 0o777
        write_atomic(config_path, to_toml(raw), mode)
    except (OSError, tomllib.TOMLDecodeError, ConfigError) as exc:
        print("edge-gateway: cannot update %s: %s" % (config_path, exc), file=sys.stderr)
        return 2
    print("console PIN set in %s ([console] pin_hash)" % config_path, file=out)
    return 0
