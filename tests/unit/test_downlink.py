"""The agent's side of the downlink (``gateway.app.downlink.Downlink``) on a fake clock and a fake agent: the op_seq is
durable before the action runs, a failed action spends its op_seq, a state that cannot be written applies nothing,
an unsynchronised clock refuses, and rejection reports are bounded while every rejection is counted."""

import asyncio
import collections
import json

import pytest

from gateway.adapters.keys import SigningKey
from gateway.adapters.operators import SeqState
from gateway.app.downlink import REPORT_BURST, Downlink
from gateway.core.clock import FakeClock
from gateway.core.commands import sign_command
from gateway.core.errors import ConfigError

pytestmark = pytest.mark.unit

KEY = SigningKey.from_seed(bytes(range(32)))
OPS = {KEY.kid_bytes: KEY.public}


class FakeAgent:
    def __init__(self, synced=True):
        self.gw = "gw-01"
        self.clock = FakeClock(synced=synced)
        self.counters = collections.Counter()
        self.events = []
        self.cuts = 0

    def emit(self, item):
        self.events.append(item)

    def cut(self):
        self.cuts += 1


def command(agent, seq, action="store_requeue", args=None, ttl=600):
    return sign_command(KEY, agent.gw, seq, int(agent.clock.wall()) + ttl, action, args)


def run(downlink, *messages):
    async def go():
        return [await downlink.handle(m) for m in messages]
    return asyncio.run(go())


def test_the_sequence_is_on_disk_before_the_action_runs_and_the_outcome_goes_up(tmp_path):
    agent, path = FakeAgent(), str(tmp_path / "seq.json")
    seen = []

    def requeue(cmd):
        with open(path) as f:
            seen.append(json.load(f))
        return "put 2 quarantined batches back", None
    downlink = Downlink(agent, OPS, SeqState(path), {"store_requeue": requeue})
    assert run(downlink, command(agent, 7), command(agent, 7)) == ["applied", "rejected: replayed"]
    assert seen == [{KEY.kid: 7}]
    assert [(e.sensor, e.name, e.state) for e in agent.events] == [("downlink", "7", "applied"),
                                                                   ("downlink", "7", "rejected")]
    assert "put 2 quarantined" in agent.events[0].reason and agent.events[1].reason.startswith("replayed")
    assert agent.cuts == 2 and agent.counters["downlink.applied"] == 1
    assert agent.counters["downlink.rejected.replayed"] == 1


def test_a_failed_action_spends_its_sequence(tmp_path):
    agent = FakeAgent()

    def config_set(cmd):
        raise ConfigError("must be a number", key="batch.max_age_s")
    downlink = Downlink(agent, OPS, SeqState(str(tmp_path / "seq.json")), {"config_set": config_set})
    args = {"key": "batch.max_age_s", "value": "soon"}
    assert run(downlink, command(agent, 1, "config_set", args), command(agent, 1, "config_set", args)) == [
        "failed", "rejected: replayed"]
    assert agent.events[0].state == "failed" and "must be a number" in agent.events[0].reason


def test_a_state_that_cannot_be_written_applies_nothing(tmp_path):
    agent, ran = FakeAgent(), []
    downlink = Downlink(agent, OPS, SeqState(str(tmp_path / "missing-dir" / "seq.json")),
                        {"store_requeue": lambda cmd: ran.append(cmd) or ("done", None)})
    assert run(downlink, command(agent, 1)) == ["failed"]
    assert ran == [] and agent.events[0].state == "failed" and "not applied" in agent.events[0].reason


def test_an_unsynchronised_clock_refuses_every_command(tmp_path):
    agent = FakeAgent(synced=False)
    downlink = Downlink(agent, OPS, SeqState(str(tmp_path / "seq.json")), {})
    assert run(downlink, command(agent, 1)) == ["rejected: clock_unsynced"]
    assert downlink.state.last == {}


def test_restart_runs_after_the_outcome_and_the_ack(tmp_path):
    agent, order = FakeAgent(), []

    def restart(cmd):
        return "restarting", lambda: order.append("restart")
    downlink = Downlink(agent, OPS, SeqState(str(tmp_path / "seq.json")), {"restart": restart})

    async def go():
        return await downlink.handle(command(agent, 1, "restart"), ack=lambda: order.append(
            "ack after %d events" % len(agent.events)))
    assert asyncio.run(go()) == "applied"
    assert order == ["ack after 1 events", "restart"]


def test_rejection_reports_are_bounded_every_rejection_is_counted(tmp_path):
    agent = FakeAgent()
    downlink = Downlink(agent, OPS, SeqState(str(tmp_path / "seq.json")), {})
    run(downlink, *[b"junk"] * (REPORT_BURST + 5))
    assert len(agent.events) == REPORT_BURST and all(e.name == "unverified" for e in agent.events)
    assert agent.counters["downlink.rejected.malformed"] == REPORT_BURST + 5
    assert agent.counters["downlink.unreported"] == 5
    agent.clock.advance(61)  # the window passed: reports resume
    run(downlink, b"junk")
    assert len(agent.events) == REPORT_BURST + 1


@pytest.mark.parametrize("key", ["downlink.operators", "update.operators", "update.base"])
def test_trust_roots_and_the_install_base_are_not_settable_from_afar(tmp_path, key):
    # An operator key may change the config, but not which keys it trusts for updates or where versions are
    # installed: that would let a command become code running as root. The view must never be reached.
    from gateway.app.downlink import build_actions

    class View:
        calls = []

        def config_set(self, key, text):
            self.calls.append(key)
            return "set"
    view = View()
    actions = build_actions(view, str(tmp_path / "config.toml"))
    agent = FakeAgent()
    downlink = Downlink(agent, OPS, SeqState(str(tmp_path / "seq.json")), actions)
    outcome, = run(downlink, command(agent, 1, "config_set", {"key": key, "value": "/tmp/evil"}))
    assert outcome.startswith("failed") and view.calls == []
    assert "stay with the installer" in agent.events[0].reason
