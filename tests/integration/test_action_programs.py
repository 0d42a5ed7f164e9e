"""An action's program (gateway/adapters/programs.py through gateway/app/actions.py): real processes, an argv and no
shell, the event in the environment, the output in the log, the exit status counted, a timeout, a bound on runs."""

import asyncio
import logging
import sys

import pytest

from gateway.adapters.programs import ProgramRunner
from gateway.app.actions import ActionRunner
from gateway.core.actions import parse_actions
from gateway.core.clock import SystemClock
from gateway.core.model import Event

pytestmark = pytest.mark.timeout(60)

RAISED = Event("fridge-7", "alarm.high", "raised", "temp 9.40 above high 8.00 for 900 s", 1234.5, 9.4, "high", True)
SCRIPT = """
import os, sys
print("buzz for", os.environ["EDGE_SENSOR"], os.environ["EDGE_EVENT"], os.environ["EDGE_STATE"])
print("value", os.environ["EDGE_VALUE"], "level", os.environ["EDGE_LEVEL"], "quantity", os.environ["EDGE_QUANTITY"])
print("reason", os.environ["EDGE_REASON"], "on", os.environ["EDGE_GATEWAY"], "by", os.environ["EDGE_ACTION"])
print("leaked", sorted(k for k in os.environ if k.startswith("SECRET")))
sys.exit(int(sys.argv[1]))
"""


def runner(*programs, **bounds):
    tables = [{"name": name, "on": "alarm", "program": argv, "min_interval_s": 0.0, "timeout_s": timeout}
              for name, argv, timeout in programs]
    return ActionRunner(parse_actions([], tables)[1], [], SystemClock(), "gw-ward", ProgramRunner(**bounds))


def test_the_program_gets_the_event_and_its_output_is_logged(caplog, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")  # the agent's environment stays the agent's
    r = runner(("site-buzzer", [sys.executable, "-c", SCRIPT, "0"], 10.0), ("failing", [sys.executable, "-c",
                                                                                        SCRIPT, "3"], 10.0))

    async def main():
        r.submit(RAISED)
        await r.programs.close(timeout=30)
    with caplog.at_level(logging.INFO, logger="gateway.adapters.programs"):
        asyncio.run(main())
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "gateway.adapters.programs"]
    assert "program site-buzzer: buzz for fridge-7 alarm.high raised" in lines
    assert "program site-buzzer: value 9.4 level high quantity temp" in lines
    assert "program site-buzzer: reason temp 9.40 above high 8.00 for 900 s on gw-ward by site-buzzer" in lines
    assert "program site-buzzer: leaked []" in lines
    c = r.programs.counters
    assert (c["site-buzzer.runs"], c["site-buzzer.ok"], c["site-buzzer.error.exit"]) == (1, 1, 0)
    assert (c["failing.runs"], c["failing.ok"], c["failing.error.exit"]) == (1, 0, 1)
    assert r.programs.last_exit == {"site-buzzer": 0, "failing": 3}
    assert "program for action failing: %s exited with status 3" % sys.executable in lines
    assert r.health_values()["program.failing.error.exit"] == 1
    programs = {p["name"]: p for p in r.status()["programs"]}  # what the console's status shows
    assert (programs["failing"]["runs"], programs["failing"]["ok"], programs["failing"]["error.exit"]) == (1, 0, 1)
    assert (programs["site-buzzer"]["ok"], programs["site-buzzer"]["dropped_busy"]) == (1, 0)


def test_a_hung_program_is_killed_and_a_missing_one_counted():
    r = runner(("hangs", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], 0.5),
               ("missing", ["/nonexistent/buzz"], 5.0))

    async def main():
        loop = asyncio.get_running_loop()
        start = loop.time()
        r.submit(RAISED)
        await r.programs.close(timeout=30)
        return loop.time() - start
    took = asyncio.run(main())
    c = r.programs.counters
    assert c["hangs.error.timeout"] == 1 and c["hangs.ok"] == 0 and "hangs" not in r.programs.last_exit
    assert c["missing.error.spawn"] == 1 and c["missing.runs"] == 1
    assert took < 20  # killed at its 0.5 s timeout, not left to sleep its 60 s (a generous bound)
    assert ("hangs", "timeout", "started") in r.programs.recent


def test_runs_are_bounded():
    # one at a time, one waiting: a burst of five alarms on five sensors runs twice and drops three, counted
    r = runner(("slow", [sys.executable, "-c", "import time; time.sleep(0.3)"], 10.0), max_running=1, max_waiting=1)

    async def main():
        for k in range(5):
            r.submit(Event("fridge-%d" % k, "alarm.high", "raised", "temp 9.00 above high 8.00", 1.0, 9.0, "high",
                           True))
        await r.programs.close(timeout=30)
    asyncio.run(main())
    c = r.programs.counters
    assert (c["slow.runs"], c["slow.ok"], c["slow.dropped_busy"]) == (2, 2, 3)
