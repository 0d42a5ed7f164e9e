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
reports); the rest are counted only (``downlink.unreported``). Every outcome text ends with ``[cmd <16 hex>]``,
the command's digest (``gateway.core.commands.command_digest``), so a backend matches it to the command it queued.

Transports (the uplink's ``downlink``): ``"subscribe"`` is MQTT (``gateway.adapters.downlink_mqtt``);
``"answer"`` is HTTP: the receiver hands commands over in its answers (``HttpUplink`` gives them to
``AnswerInbox``), and a gateway that delivered nothing for ``downlink.poll_s`` sends one small batch (the health
record ``health/downlink_poll``) so that its answer can carry them. The same command handed over again while it is
in hand (its outcome not yet upstream) is ignored for ``REPEAT_WINDOW_S``.

The action table (``build_actions``): ``name -> fn``. A plain function ``fn(cmd) -> (text, then)`` runs off the
loop; a coroutine function ``fn(cmd, handling) -> (text, then)`` runs on it (``config_set``, whose uplink changes
are checked: ``gateway.app.uplink_check``). ``then`` (or None) runs after the outcome is sealed. Raising
``ConfigError``/``ValueError``/``OSError`` reports ``failed``; ``Reverted`` reports ``reverted``.
"""

import asyncio
import collections
import inspect
import logging
from dataclasses import dataclass

from gateway.app.uplink_check import Reverted, UplinkCheck, needs_check, recover, report_recovered
from gateway.core.commands import CommandError, command_digest, verify_command
from gateway.core.errors import ConfigError, GatewayError
from gateway.core.model import Event, Reading
from gateway.core.pipeline import HEALTH_SENSOR

log = logging.getLogger(__name__)

QUEUE_MAX = 64
REPORT_BURST, REPORT_WINDOW_S = 10, 60.0
MAX_OUTCOME = 480  # characters of outcome text in the record (the [cmd ...] tag included)
RECENT = 16  # commands the console's ``commands`` shows
#: config sections a command may not change: the downlink's own settings (its trust root) stay with the installer.
#: ``uplink.*`` keys are applied, checked, kept or reverted (``gateway.app.uplink_check``).
REMOTE_REFUSED = ("downlink",)
#: single keys that stay with the installer too: the update trust root and where versions are installed (a command
#: that could swap them would let one operator key become code running as root)
REMOTE_REFUSED_KEYS = ("update.operators", "update.base")
REPEAT_WINDOW_S = 10.0  # an HTTP answer's command seen again within this is the same one, its outcome on the way
REPEAT_MEMORY = 64
POLL_HEALTH = "downlink_poll"


@dataclass
class Handling:
    """What an async action gets besides the command: its digest, its description and a way to report the
    non-final ``checking`` outcome."""
    digest: str
    what: str
    report: object

    def checking(self, text):
        self.report("checking", "%s: %s" % (self.what, text))


def build_actions(view, config_path, check=None):
    """action -> ``fn`` (see the module's docstring). ``check``: an ``UplinkCheck`` (None: uplink keys refused)."""
    def config_set_now(key, text):
        return view.config_set(key, text), None

    async def config_set(cmd, handling):
        key, value = cmd.arg("key"), cmd.arg("value")
        if not isinstance(key, str) or key.split(".")[0] in REMOTE_REFUSED or key in REMOTE_REFUSED_KEYS:
            raise ConfigError("not settable by a remote command (section %s and keys %s stay with the installer)"
                              % ("/".join(REMOTE_REFUSED), ", ".join(REMOTE_REFUSED_KEYS)), key=str(key))
        text = value if isinstance(value, str) else ("true" if value is True else "false" if value is False
                                                     else repr(value))
        if needs_check(key):
            if check is None or not view.config_path:
                raise ConfigError("uplink settings change from afar only on an agent with a config file", key=key)
            record = {"op_seq": cmd.op_seq, "digest": handling.digest, "what": handling.what}
            return await check.run(key, text, record, handling.checking), None
        return await asyncio.get_running_loop().run_in_executor(None, config_set_now, key, text)

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
        self.recent = collections.deque(maxlen=RECENT)  # the last commands and their outcomes (console, newest last)

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
        digest = command_digest(data) if isinstance(data, (bytes, bytearray, memoryview)) else None
        self._remember(data, digest)
        try:
            cmd = verify_command(data, self.operators, agent.gw, self.state.last, now)
        except CommandError as exc:
            self.counters["downlink.rejected." + exc.reason] += 1
            log.warning("downlink: command rejected (%s): %s", exc.reason, exc)
            self._report(exc.op_seq, "rejected", "%s: %s" % (exc.reason, exc), digest, limited=True)
            return "rejected: " + exc.reason, None
        loop = asyncio.get_running_loop()
        what = "%s %s (key %s, seq %d)" % (cmd.action, " ".join("%s=%s" % a for a in cmd.args), cmd.kid,
                                          cmd.op_seq)
        try:
            await loop.run_in_executor(None, self.state.advance, cmd.kid, cmd.op_seq)
        except (OSError, GatewayError) as exc:  # not recorded, so not applied: at most once
            self.counters["downlink.failed"] += 1
            log.error("downlink: cannot record %s, not applied: %s", what, exc)
            self._report(cmd.op_seq, "failed", "%s: not applied, the sequence could not be saved: %s" % (what, exc),
                         digest)
            return "failed", None
        action = self.actions[cmd.action]
        try:
            if inspect.iscoroutinefunction(action):
                handling = Handling(digest, what, lambda state, text: self._report(cmd.op_seq, state, text, digest))
                text, then = await action(cmd, handling)
            else:
                text, then = await loop.run_in_executor(None, action, cmd)
        except Reverted as exc:
            self.counters["downlink.reverted"] += 1
            self._report(cmd.op_seq, "reverted", "%s: %s" % (what, exc), digest)
            return "reverted", None
        except (OSError, ValueError, GatewayError) as exc:
            self.counters["downlink.failed"] += 1
            log.warning("downlink: %s failed: %s", what, exc)
            self._report(cmd.op_seq, "failed", "%s: %s" % (what, exc), digest)
            return "failed", None
        self.counters["downlink.applied"] += 1
        log.info("downlink: applied %s: %s", what, text)
        self._report(cmd.op_seq, "applied", "%s: %s" % (what, text), digest)
        return "applied", then

    # -- the record of recent commands (the console's ``commands``) ----------------------------------------------
    def _remember(self, data, digest):
        self.recent.append({"digest": digest, "t": self.agent.clock.monotonic(), "op_seq": None,
                            "state": "verifying", "text": ""})

    def _report(self, op_seq, state, reason, digest=None, limited=False):
        now = self.agent.clock.monotonic()
        self._note(op_seq, state, reason, digest)
        if limited:
            while self._reports and self._reports[0] <= now - REPORT_WINDOW_S:
                self._reports.popleft()
            if len(self._reports) >= REPORT_BURST:
                self.counters["downlink.unreported"] += 1
                return
            self._reports.append(now)
        name = "unverified" if op_seq is None else str(op_seq)
        tag = " [cmd %s]" % digest if digest else ""
        self.agent.emit(Event("downlink", name, state, reason[:MAX_OUTCOME - len(tag)] + tag, now))
        self.agent.cut()  # the outcome goes at once, in a batch of its own

    def _note(self, op_seq, state, text, digest):
        entry = next((e for e in reversed(self.recent) if digest and e["digest"] == digest), None)
        if entry is None:
            entry = {"digest": digest, "t": self.agent.clock.monotonic()}
            self.recent.append(entry)
        entry.update(op_seq=op_seq, state=state, text=text)


class AnswerInbox:
    """The HTTP uplink's command sink: each command an answer hands over goes to ``submit`` once; the same bytes
    again within ``REPEAT_WINDOW_S`` (the receiver hands a command over until its outcome arrives) are counted
    (``downlink.repeats``) and dropped. Called on the uplink's thread only."""

    def __init__(self, submit, counters, monotonic):
        self.submit = submit
        self.counters = counters
        self.monotonic = monotonic
        self.seen = collections.OrderedDict()  # digest -> monotonic time first seen

    def __call__(self, commands):
        now = self.monotonic()
        for data in commands:
            digest = command_digest(data)
            first = self.seen.get(digest)
            if first is not None and now - first < REPEAT_WINDOW_S:
                self.counters["downlink.repeats"] += 1
                continue
            self.seen[digest] = now
            self.seen.move_to_end(digest)
            while len(self.seen) > REPEAT_MEMORY:
                self.seen.popitem(last=False)
            self.submit(data)


async def poll(agent, every):
    """HTTP: commands come in the answers to batches, so a gateway that delivered nothing for ``every`` seconds
    sends one small batch (``health/downlink_poll`` = 1) to be answered; never while the uplink is down (it would
    only queue). At most one poll per ``every`` seconds."""
    last = agent.counters["batches_sent"]
    while True:
        await agent.clock.sleep(every)
        sent = agent.counters["batches_sent"]
        if sent == last and agent.uplink_state != "down":
            agent.counters["downlink.polls"] += 1
            agent.emit(Reading(HEALTH_SENSOR, POLL_HEALTH, 1, None, agent.clock.monotonic()))
            agent.cut()
        last = agent.counters["batches_sent"]


def start_downlink(agent, cfg, request_restart):
    """The downlink of a configured agent (``[downlink] operators`` set), started; None when it is off.

    Commands come the way the uplink carries them (its ``downlink``: ``"subscribe"`` MQTT, ``"answer"`` HTTP).
    Returns a handle for ``stop_downlink``. Raises ``KeyFileError`` for operator keys or a state file that cannot
    be used (the daemon exits 2 before any command is taken)."""
    section = cfg.downlink
    if not section.operators:
        return None
    from gateway.adapters.operators import SeqState, load_operators
    from gateway.app.console.view import AgentView
    operators = load_operators(section.operators)
    state = SeqState(cfg.state_path(section.state))
    view = AgentView(agent, None, cfg.file, request_restart=request_restart)
    check = UplinkCheck(agent, view, cfg.gateway.state_dir, section.check_s)
    downlink = Downlink(agent, operators, state, build_actions(view, cfg.file, check))
    agent.downlink = downlink
    downlink.bind(asyncio.get_running_loop())
    tasks = [asyncio.create_task(downlink.run(), name="downlink")]
    subscriber = None
    if agent.uplink.downlink == "subscribe":
        from gateway.adapters.downlink_mqtt import CommandSubscriber
        subscriber = CommandSubscriber.from_section(downlink.submit, agent.gw, cfg.uplink, section.client_id).start()
        where = subscriber.topic
    elif agent.uplink.downlink == "answer":
        agent.uplink.set_command_sink(AnswerInbox(downlink.submit, agent.counters, agent.clock.monotonic))
        tasks.append(asyncio.create_task(poll(agent, section.poll_s), name="downlink-poll"))
        where = "the answers of %s (a poll after %g s without a delivery)" % (agent.uplink.describe(),
                                                                             section.poll_s)
    else:
        raise ConfigError("the %s uplink carries no commands" % agent.uplink.kind, cfg.file, "downlink.operators")
    for task in tasks:
        task.add_done_callback(_died)
    log.info("downlink: %d operator keys, commands from %s", len(operators), where)
    return tasks, subscriber


def recover_check(cfg):
    """Before the agent is built: undo an uplink change whose check a stop interrupted (``uplink_check.recover``).
    Returns ``(cfg, pending)``; pass ``pending`` to ``report_recovered_check`` once the agent runs."""
    from gateway.app.config import load
    return recover(cfg, load)


def report_recovered_check(agent, pending):
    """The ``reverted`` outcome of that change, once the downlink runs (none when it is off now)."""
    if pending and agent.downlink is not None:
        agent.counters["downlink.reverted"] += 1
        report_recovered(agent.downlink._report, pending)


def _died(task):
    """A bug in the downlink must not pass silently: the commands stop (the message in hand stays unacknowledged,
    so the broker redelivers it after a restart, where its op_seq decides)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("downlink: stopped by an internal error; no more commands until a restart: %r", task.exception(),
                  exc_info=task.exception())


async def stop_downlink(handle):
    if handle is None:
        return
    tasks, subscriber = handle
    if subscriber is not None:
        await asyncio.get_running_loop().run_in_executor(None, subscriber.close)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
