"""Signed commands from operators, applied at most once, each outcome reported upstream (docs/security.md,
"Downlink"; the format is docs/wire-format.md, "Commands").

A message from the transport (``gateway.adapters.downlink_mqtt``, on its own thread) goes to ``submit``, which
hands it to the agent's event loop. ``run`` takes one at a time:

1. ``gateway.core.commands.verify_command`` against the operator keys, this gateway's id, the last applied
   ``op_seq`` per key and the wall clock (None while it is not synchronised: every command is refused then);
2. the command's ``op_seq`` is written durably (``SeqState.advance``) **before** its action runs;
3. the action runs off the loop (``ACTIONS``: the console's own ``config set`` / ``store requeue`` / ``restart``
   through ``AgentView``, and doctor's quick checks for ``diagnose``);
4. the outcome becomes an event record ``<gw>/downlink/<op_seq>`` (``unverified`` when no signature vouched
   for the number) with ``vs`` ``"applied: ..."``, ``"failed: ..."`` or ``"rejected: <reason>: ..."``, sealed
   into a batch at once and sent upstream like any other; then the message is acknowledged to the broker.

Rejections are counted (``downlink.rejected.<reason>`` in the agent's counters) and reported, at most
``REPORT_BURST`` per ``REPORT_WINDOW_S`` (whoever can publish to the topic could otherwise fill the queue with
reports); the rest are counted only (``downlink.unreported``).
"""

import asyncio
import collections
import logging

from gateway.core.commands import CommandError, verify_command
from gateway.core.errors import ConfigError, GatewayError
from gateway.core.model import Event

log = logging.getLogger(__name__)

QUEUE_MAX = 64
REPORT_BURST, REPORT_WINDOW_S = 10, 60.0
MAX_OUTCOME = 480  # characters of outcome text in the record
#: config sections a command may not change yet: a wrong uplink would cut the very channel that could undo it
#: (apply-check-revert is not built), and the downlink's own settings stay with the installer.
REMOTE_REFUSED = ("uplink", "downlink")


def build_actions(view, config_path):
    """action -> ``fn(command) -> (outcome text, then)``; ``then`` (or None) runs after the outcome is sealed."""
    def config_set(cmd):
        key, value = cmd.arg("key"), cmd.arg("value")
        if not isinstance(key, str) or key.split(".")[0] in REMOTE_REFUSED:
            raise ConfigError("not settable by a remote command (sections %s stay local until apply-check-revert "
                              "exists)" % "/".join(REMOTE_REFUSED), key=str(key))
        text = value if isinstance(value, str) else ("true" if value is True else "false" if value is False
                                                     else repr(value))
        return view.config_set(key, text), None

    def store_requeue(cmd):
        return view.store_requeue(), None

    def diagnose(cmd):
        from gateway.app.doctor import run_checks
        if not config_path:
            raise ConfigError("no config file: nothing to check")
        return " | ".join(c.line() for c in run_checks(config_path, quick=True)), None

    def restart(cmd):
        return "restarting", view.restart

    return {"config_set": config_set, "store_requeue": store_requeue, "diagnose": diagnose, "restart": restart,
            "update": update_action(config_path)}


def update_action(config_path):
    """``update URL SHA256``: fetch the bundle (resuming an earlier try), check its digest and its signed manifest,
    and stage it for the root updater (gateway/app/update_agent.py); the install's own outcome follows as an
    ``<gw>/update/<version>`` record."""
    def update(cmd):
        from gateway.app.update_agent import fetch_and_stage
        if not config_path:
            raise ConfigError("no config file: nothing to update")
        return fetch_and_stage(config_path, cmd.arg("url"), cmd.arg("sha256")), None
    return update


class Downlink:
    def __init__(self, agent, operators, state, actions):
        self.agent = agent
        self.operators = operators
        self.state = state
        self.actions = actions
        self.counters = agent.counters
        self._queue = None
        self._loop = None
        self._reports = collections.deque()  # monotonic times of recent rejection reports

    # -- from the transport's thread ----------------------------------------------------------------------------
    def submit(self, data, ack=None):
        """Hand one message to the loop (any thread). Dropped unacknowledged when the queue is full or the loop
        is not running: the broker redelivers it on the next session."""
        loop, queue = self._loop, self._queue
        if loop is None or loop.is_closed():
            self.counters["downlink.dropped"] += 1
            return

        def put():
            if queue.full():
                self.counters["downlink.dropped"] += 1
            else:
                queue.put_nowait((data, ack))
        loop.call_soon_threadsafe(put)

    # -- on the loop --------------------------------------------------------------------------------------------
    def bind(self, loop):
        """Take messages for ``loop`` from now on (before the transport starts, so none is dropped)."""
        self._loop = loop
        self._queue = asyncio.Queue(QUEUE_MAX)

    async def run(self):
        if self._loop is None:
            self.bind(asyncio.get_running_loop())
        while True:
            data, ack = await self._queue.get()
            await self.handle(data, ack)

    async def handle(self, data, ack=None):
        """Verify, persist, apply, report one command, then ``ack`` it (and only then restart, when that was the
        action: a message acknowledged before the stop is not redelivered). Returns ``applied``, ``failed`` or
        ``rejected: <reason>``."""
        outcome, then = await self._handle(data)
        if ack is not None:
            ack()
        if then is not None:
            await asyncio.get_running_loop().run_in_executor(None, then)
        return outcome

    async def _handle(self, data):
        agent, clock = self.agent, self.agent.clock
        now = clock.wall() if clock.synced() else None
        try:
            cmd = verify_command(data, self.operators, agent.gw, self.state.last, now)
        except CommandError as exc:
            self.counters["downlink.rejected." + exc.reason] += 1
            log.warning("downlink: command rejected (%s): %s", exc.reason, exc)
            self._report(exc.op_seq, "rejected", "%s: %s" % (exc.reason, exc), limited=True)
            return "rejected: " + exc.reason, None
        loop = asyncio.get_running_loop()
        what = "%s %s (key %s, seq %d)" % (cmd.action, " ".join("%s=%s" % a for a in cmd.args), cmd.kid,
                                          cmd.op_seq)
        try:
            await loop.run_in_executor(None, self.state.advance, cmd.kid, cmd.op_seq)
        except (OSError, GatewayError) as exc:  # not recorded, so not applied: at most once
            self.counters["downlink.failed"] += 1
            log.error("downlink: cannot record %s, not applied: %s", what, exc)
            self._report(cmd.op_seq, "failed", "%s: not applied, the sequence could not be saved: %s" % (what, exc))
            return "failed", None
        try:
            text, then = await loop.run_in_executor(None, self.actions[cmd.action], cmd)
        except (OSError, ValueError, GatewayError) as exc:
            self.counters["downlink.failed"] += 1
            log.warning("downlink: %s failed: %s", what, exc)
            self._report(cmd.op_seq, "failed", "%s: %s" % (what, exc))
            return "failed", None
        self.counters["downlink.applied"] += 1
        log.info("downlink: applied %s: %s", what, text)
        self._report(cmd.op_seq, "applied", "%s: %s" % (what, text))
        return "applied", then

    def _report(self, op_seq, state, reason, limited=False):
        now = self.agent.clock.monotonic()
        if limited:
            while self._reports and self._reports[0] <= now - REPORT_WINDOW_S:
                self._reports.popleft()
            if len(self._reports) >= REPORT_BURST:
                self.counters["downlink.unreported"] += 1
                return
            self._reports.append(now)
        name = "unverified" if op_seq is None else str(op_seq)
        self.agent.emit(Event("downlink", name, state, reason[:MAX_OUTCOME], now))
        self.agent.cut()  # the outcome goes at once, in a batch of its own


def start_downlink(agent, cfg, request_restart):
    """The downlink of a configured agent (``[downlink] operators`` set), started; None when it is off.

    Returns ``(task, subscriber)``; ``stop_downlink`` ends both. Raises ``KeyFileError`` for operator keys or a
    state file that cannot be used (the daemon exits 2 before any command is taken)."""
    section = cfg.downlink
    if not section.operators:
        return None
    from gateway.adapters.downlink_mqtt import CommandSubscriber
    from gateway.adapters.operators import SeqState, load_operators
    from gateway.app.console.view import AgentView
    operators = load_operators(section.operators)
    state = SeqState(cfg.state_path(section.state))
    view = AgentView(agent, None, cfg.file, request_restart=request_restart)
    downlink = Downlink(agent, operators, state, build_actions(view, cfg.file))
    downlink.bind(asyncio.get_running_loop())
    task = asyncio.create_task(downlink.run(), name="downlink")
    task.add_done_callback(_died)
    subscriber = CommandSubscriber.from_section(downlink.submit, agent.gw, cfg.uplink, section.client_id).start()
    log.info("downlink: %d operator keys, commands on %s", len(operators), subscriber.topic)
    return task, subscriber


def _died(task):
    """A bug in the downlink must not pass silently: the commands stop (the message in hand stays unacknowledged,
    so the broker redelivers it after a restart, where its op_seq decides)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("downlink: stopped by an internal error; no more commands until a restart: %r", task.exception(),
                  exc_info=task.exception())


async def stop_downlink(handle):
    if handle is None:
        return
    task, subscriber = handle
    await asyncio.get_running_loop().run_in_executor(None, subscriber.close)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
