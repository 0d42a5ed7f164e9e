"""Local actions on the gateway: the pipeline's events switch actuator boards and run programs, with the uplink up
or down (issue 17, part 4). The matching and the rate limiting are pure (``gateway/core/actions.py``); this is the
IO around them.

The pipeline hands every event it produces to ``ActionRunner.submit`` (the agent wires it as the pipeline's
``on_event``), on the event loop, right after the event's batch was sealed: an action never delays the signed
uplink, and a board's command is queued, not awaited. ``run()`` is one more task of the agent: the boards' link
tasks and a ticker that gives the gates' deferred changes their time (on the agent's clock, so a fake clock drives
it in tests and scenarios). Each order is logged and kept in ``orders`` (the last 64, with the loop's time it was
given) for the status and the scenarios.
"""

import asyncio
import collections
import logging

from gateway.adapters.programs import ProgramRunner
from gateway.app.agent import sleep_or_wake
from gateway.core.actions import Planner, quantity_of

log = logging.getLogger(__name__)

#: the health records local actions add (docs/wire-format.md, "Health records"; the pipeline sends the names with
#: ``error`` or ``dropped`` in them)
HEALTH = ("actuator.<board>.error.<reason>", "program.<action>.error.<reason>", "program.<action>.dropped_busy")
#: a program action's counters (gateway/adapters/programs.py), as ``status()`` reports them
PROGRAM_COUNTERS = ("runs", "ok", "error.exit", "error.timeout", "error.spawn", "dropped_busy")


def event_env(event, action, gw):
    """The environment a program gets: the event, as ``EDGE_*`` variables (docs/configuration.md)."""
    env = {"EDGE_ACTION": action, "EDGE_GATEWAY": gw}
    if event is None:
        return env
    fields = {"EDGE_SENSOR": event.sensor, "EDGE_EVENT": event.name, "EDGE_STATE": event.state,
              "EDGE_REASON": event.reason, "EDGE_LEVEL": event.level, "EDGE_QUANTITY": quantity_of(event),
              "EDGE_VALUE": None if event.value is None else repr(event.value), "EDGE_TIME": "%.3f" % event.t}
    env.update({k: str(v) for k, v in fields.items() if v is not None})
    return env


class ActionRunner:
    def __init__(self, actions, boards, clock, gw, programs=None):
        self.planner = Planner(actions)
        self.boards = {b.name: b for b in boards}
        self.clock = clock
        self.gw = gw
        self.programs = programs or ProgramRunner()
        self.orders = collections.deque(maxlen=64)  # (loop time, Order) as given
        self._wake = None

    def connect(self, emit):
        """Where the boards' events go (the agent's ``emit``: they travel upstream like the rules' events)."""
        for board in self.boards.values():
            board.emit = emit

    # -- events in (on the loop, from the pipeline) -------------------------------------------------------------
    def submit(self, event, now=None):
        orders = self.planner.on_event(event, self.clock.monotonic() if now is None else now)
        for order in orders:
            self._give(order)
        if self._wake is not None:
            self._wake.set()  # a deferred change may be due sooner than the ticker sleeps

    def _give(self, order):
        self.orders.append((asyncio.get_running_loop().time(), order))
        if order.board is not None:
            log.info("action %s: %s/%s %s", order.action, order.board, order.channel, "on" if order.on else "off")
            self.boards[order.board].set(order.channel, order.on)
        else:
            log.info("action %s: running %s", order.action, order.program[0])
            self.programs.start(order.program, event_env(order.event, order.action, self.gw), order.timeout_s,
                                order.action)

    # -- the task ---------------------------------------------------------------------------------------------
    async def run(self, period=1.0):
        self._wake = asyncio.Event()
        boards = [asyncio.create_task(b.run(), name="actuator:" + b.name) for b in self.boards.values()]
        try:
            while True:
                self._wake.clear()
                now = self.clock.monotonic()
                deadline = self.planner.deadline()
                wait = period if deadline is None else max(0.0, min(period, deadline - now))
                await sleep_or_wake(self.clock, wait, self._wake)
                for order in self.planner.tick(self.clock.monotonic()):
                    self._give(order)
        finally:
            for task in boards:
                task.cancel()
            await asyncio.gather(*boards, return_exceptions=True)
            await self.programs.close()

    # -- what the agent reports -------------------------------------------------------------------------------
    def health_values(self):
        """Counters for the health records: ``actuator.<board>.<counter>``, ``program.<action>.<counter>`` and
        ``action.<name>.<counter>`` (only names with ``error``/``dropped`` in them travel upstream)."""
        values = {}
        for board in self.boards.values():
            for key, n in board.counters.items():
                values["actuator.%s.%s" % (board.name, key)] = n
        for key, n in self.programs.counters.items():
            values["program." + key] = n
        values.update(self.planner.counters())
        return values

    def status(self):
        programs = [dict(name=a.name, **{k: self.programs.counters["%s.%s" % (a.name, k)] for k in PROGRAM_COUNTERS})
                    for a in self.planner.actions if a.program]
        return {"boards": [b.status() for b in self.boards.values()],
                "outputs": {"%s/%s" % k: on for k, on in self.planner.wanted().items()},
                "programs": programs, "counters": self.health_values()}


def build_actions(cfg, clock):
    """The ``ActionRunner`` of a validated config (None without ``[[actions]]``): one ``ActuatorBoard`` per
    ``[[actuators]]`` table. The agent connects the boards' events to its ``emit``."""
    if not cfg.action_configs:
        return None
    from drivers.serial.actuator import ActuatorBoard
    boards = [ActuatorBoard(b, stamp=clock.monotonic) for b in cfg.actuator_configs]
    return ActionRunner(cfg.action_configs, boards, clock, cfg.gateway.id)
