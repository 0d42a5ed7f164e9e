"""The gateway's side of HTTP delivery and of apply-check-revert, on a fake clock and injected uplinks: answers
parsed and bounded, repeats of a command in hand ignored, the poll only when idle, an uplink change kept after
a delivery and reverted (config file byte for byte, old uplink back) when none comes within ``check_s``, and an
interrupted check undone at the next start."""

import asyncio
import base64
import collections
import json
import os

import pytest

from gateway.adapters.uplink.base import Uplink
from gateway.app import uplink_check
from gateway.app.config import load
from gateway.app.console.view import AgentView
from gateway.app.downlink import POLL_HEALTH, REPEAT_MEMORY, REPEAT_WINDOW_S, AnswerInbox, poll
from gateway.app.uplink_check import CheckedUplink, Reverted, UplinkCheck, recover, report_recovered
from gateway.core import commands
from gateway.core.clock import FakeClock
from gateway.core.errors import ConfigError, UplinkError

pytestmark = pytest.mark.unit


# -- the answer --------------------------------------------------------------------------------------------------
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_commands_come_from_the_answer_and_a_bad_answer_is_refused_whole():
    cmds = [b"\xd2\x84first", b"\xd2\x84second!"]
    body = json.dumps({"status": "stored", "commands": commands.encode_answer(cmds)}).encode()
    assert commands.commands_from_answer(body) == cmds
    assert commands.commands_from_answer(b'{"status": "stored"}') == []  # an older receiver
    assert commands.commands_from_answer(b"<html>") == []  # not ours at all
    for bad in ({"commands": "x"}, {"commands": [1]}, {"commands": ["not base64!"]},
                {"commands": [b64(b"x")] * (commands.MAX_ANSWER_COMMANDS + 1)}):
        with pytest.raises(commands.CommandError) as err:
            commands.commands_from_answer(json.dumps(bad).encode())
        assert err.value.reason == "malformed"


def test_outcome_records_are_parsed_with_their_digest_and_key():
    got = commands.parse_outcome("gw-1/downlink/12", "applied: restart  (key FtIu-VbGrfe, seq 12): restarting "
                                                     "[cmd 0123456789abcdef]")
    assert (got.op_seq, got.state, got.digest, got.kid) == (12, "applied", "0123456789abcdef", "FtIu-VbGrfe")
    got = commands.parse_outcome("gw-1/downlink/unverified", "rejected: unknown_key: kid 'x' [cmd 0123456789abcdef]")
    assert (got.op_seq, got.state, got.digest, got.kid) == (None, "rejected", "0123456789abcdef", None)
    assert commands.parse_outcome("gw-1/downlink/3", "rejected: old text without a tag").digest is None
    for name, vs in (("gw-1/s1/temp", "applied: x"), ("gw-1/downlink/3", "raised: x"), ("gw-1/downlink/x", "a: b"),
                     ("gw-1/downlink/3", None)):
        assert commands.parse_outcome(name, vs) is None


def test_a_command_handed_over_again_while_in_hand_is_submitted_once():
    clock, counters, submitted = FakeClock(), collections.Counter(), []
    inbox = AnswerInbox(submitted.append, counters, clock.monotonic)
    inbox([b"a", b"b"])
    inbox([b"a", b"b"])  # the next answer, before the outcome arrived upstream
    assert submitted == [b"a", b"b"] and counters["downlink.repeats"] == 2
    clock.advance(REPEAT_WINDOW_S)
    inbox([b"a"])  # still handed over after the window: its outcome was lost, the gateway answers again
    assert submitted == [b"a", b"b", b"a"]
    inbox([bytes([i]) * 3 for i in range(REPEAT_MEMORY + 5)])
    assert len(inbox.seen) == REPEAT_MEMORY


class PollAgent:
    def __init__(self):
        self.clock = FakeClock()
        self.counters = collections.Counter()
        self.uplink_state = "idle"
        self.emitted = []
        self.cuts = 0

    def emit(self, item):
        self.emitted.append(item)

    def cut(self):
        self.cuts += 1


def test_the_poll_asks_only_after_a_quiet_period_and_never_while_the_uplink_is_down():
    agent = PollAgent()

    async def go():
        task = asyncio.create_task(poll(agent, 30.0))
        await agent.clock.parked()
        agent.clock.advance(30)  # nothing delivered for 30 s: one poll
        await agent.clock.parked()
        assert [r.name for r in agent.emitted] == [POLL_HEALTH] and agent.cuts == 1
        agent.counters["batches_sent"] += 1  # data went (and its answer could carry commands)
        agent.clock.advance(30)
        await agent.clock.parked()
        agent.uplink_state = "down"
        agent.clock.advance(30)
        await agent.clock.parked()
        assert agent.counters["downlink.polls"] == 1
        agent.uplink_state = "idle"
        agent.clock.advance(30)
        await agent.clock.parked()
        task.cancel()
    asyncio.run(go())
    assert agent.counters["downlink.polls"] == 2


# -- apply, check, keep or revert ---------------------------------------------------------------------------------
class FakeUplink(Uplink):
    kind = "http"
    downlink = "answer"

    def __init__(self, name, error=None):
        self.name, self.error, self.closed, self.sent = name, error, False, []

    def send(self, batch):
        if self.error:
            raise self.error
        self.sent.append(batch)
        return 201

    def describe(self):
        return self.name

    def close(self):
        self.closed = True


class CheckAgent:
    def __init__(self, uplink):
        self.uplink = uplink
        self.clock = FakeClock()
        self.counters = collections.Counter()

    def replace_uplink(self, new):
        old, self.uplink = self.uplink, new
        return old

    async def close_uplink(self, uplink):
        uplink.close()


CONFIG = '[gateway]\nid = "gw-1"\nstate_dir = "%s"\n[uplink]\nurl = "http://old.example:8080/v1/batches"\n'


@pytest.fixture
def rig(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG % tmp_path)
    os.chmod(path, 0o640)
    old, new = FakeUplink("old"), FakeUplink("new")
    monkeypatch.setattr(uplink_check, "build_uplink", lambda section: new.__setattr__("url", section.url) or new)
    agent = CheckAgent(old)
    check = UplinkCheck(agent, AgentView(agent, None, str(path)), str(tmp_path), 10.0)
    return agent, check, path, old, new


def run_check(agent, check, during):
    checking = []

    async def go():
        task = asyncio.create_task(check.run("uplink.url", "http://new.example/v1/batches",
                                             {"op_seq": 4, "digest": "ab" * 8, "what": "config_set"},
                                             checking.append))
        await agent.clock.parked()
        during()
        for _ in range(60):  # bounded: 12 s of the fake clock, in the check's own steps
            agent.clock.advance(0.2)
            parked = asyncio.ensure_future(agent.clock.parked())
            await asyncio.wait({task, parked}, return_when=asyncio.FIRST_COMPLETED)
            parked.cancel()
            if task.done():
                break
        return await task
    return asyncio.run(go()), checking


def test_an_uplink_change_that_delivers_is_kept(rig):
    agent, check, path, old, new = rig

    def deliver():
        assert isinstance(agent.uplink, CheckedUplink) and agent.uplink.inner is new
        assert os.path.exists(check.marker) and "new.example" in path.read_text()
        assert json.load(open(check.marker))["config"] == CONFIG % path.parent  # the whole previous file
        agent.uplink.send(b"batch")
    text, checking = run_check(agent, check, deliver)
    assert text.startswith("saved uplink.url = http://new.example/v1/batches; checked: delivered through new")
    assert checking and "within 10 s" in checking[0]
    assert old.closed and not new.closed and not os.path.exists(check.marker)
    assert "new.example" in path.read_text() and (path.stat().st_mode & 0o777) == 0o640


def test_an_uplink_that_delivers_nothing_within_check_s_is_reverted(rig):
    agent, check, path, old, new = rig
    new.error = UplinkError("new.example answered 404 Not Found", retryable=False, status=404)
    before = path.read_text()

    def refuse():
        with pytest.raises(UplinkError) as err:  # on probation a 404 keeps the batch queued for the old uplink
            agent.uplink.send(b"batch")
        assert err.value.retryable
    with pytest.raises(Reverted) as err:
        run_check(agent, check, refuse)
    assert "no batch delivered through new within 10 s" in str(err.value) and "404" in str(err.value)
    assert agent.uplink is old and new.closed and not old.closed
    assert path.read_text() == before and not os.path.exists(check.marker)


def test_a_refused_value_changes_nothing(rig):
    agent, check, path, old, new = rig
    before = path.read_text()
    with pytest.raises(ConfigError) as err:
        asyncio.run(check.run("uplink.timeout_s", "soon", {}, print))
    assert "must be a number" in str(err.value)
    assert agent.uplink is old and path.read_text() == before and not os.path.exists(check.marker)


def test_a_check_interrupted_by_a_stop_is_undone_at_the_next_start(tmp_path):
    path = tmp_path / "config.toml"
    previous = CONFIG % tmp_path
    path.write_text(previous.replace("old.example:8080", "dead.example"))
    marker = {"op_seq": 5, "digest": "cd" * 8, "what": "config_set key=uplink.url", "key": "uplink.url",
              "value": "http://dead.example/v1/batches", "config": previous}
    (tmp_path / uplink_check.MARKER).write_text(json.dumps(marker))
    cfg, doc = recover(load(str(path)), load)
    assert path.read_text() == previous and cfg.uplink.url == "http://old.example:8080/v1/batches"
    assert not (tmp_path / uplink_check.MARKER).exists()
    reports = []
    report_recovered(lambda *a: reports.append(a), doc)
    assert reports == [(5, "reverted", "config_set key=uplink.url: the agent stopped during the check; the previous "
                        "config is back", "cd" * 8)]
    assert recover(cfg, load) == (cfg, None)  # nothing pending: nothing done
