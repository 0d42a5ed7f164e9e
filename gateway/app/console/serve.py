"""Wiring for the technician's console: ``serve_console`` for the agent (``gateway.app.service``) and the demo.

``serve_console(agent, port, config_path, ...)`` starts the console as an asyncio task next to ``agent.run``.
The ``edge-gateway console`` command is ``gateway.app.console.command``.
"""

import asyncio
import logging
import os
import signal

from gateway.app.console.auth import AuditLog, LockState, PinLock
from gateway.app.console.board import SensorBoard
from gateway.app.console.commands import Console
from gateway.app.console.serial_io import ConsoleServer
from gateway.app.console.view import AgentView, RingLogHandler
from gateway.core.errors import ConfigError

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
        from gateway.app.config import load
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
    view = AgentView(agent, board, config_path, ring, request_restart or _default_restart, console_port=port)
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
