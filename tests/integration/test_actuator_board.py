"""The actuator board protocol end to end: the gateway's driver (drivers/serial/actuator.py, pyserial) against the
board's firmware (firmware_sim/actuator_board.py) under the real MicroPython unix port, over a real pty.

Acknowledgement, a retry after a dropped frame, the safe state when the keep-alive stops, a killed board reported
dead and back. The firmware's --log is the board's own account of what its outputs did."""

import asyncio
import time

import pytest

from drivers.serial.actuator import DEAD, ActuatorBoard
from gateway.core.actions import ActuatorConfig
from tests.support import MICROPYTHON, async_wait_until
from tools.sim.harness import PtyNode

pytestmark = pytest.mark.timeout(60)


def board_log(path):
    """``[(channel, state, why)]`` from the firmware's log."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        _, change, why = line.split(" ", 2)
        channel, state = change.split("=")
        out.append((channel, int(state), why))
    return out


class Rig:
    def __init__(self, tmp_path, *args, **config):
        self.log = tmp_path / "board.log"
        self.node = PtyNode("actuator_board", ["--log", self.log] + list(args), link=str(tmp_path / "ttyACM7"),
                            python=MICROPYTHON)
        self.node.start()
        self.events = []
        settings = dict(name="ward-3", port=self.node.link, keepalive_s=0.2, ack_timeout_s=0.2, retries=2)
        settings.update(config)
        self.board = ActuatorBoard(ActuatorConfig(**settings), emit=self.events.append, stamp=time.monotonic,
                                   backoff=(0.05, 0.2))
        self.task = None

    def start(self):
        self.task = asyncio.create_task(self.board.run())

    async def stop(self):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def acked(self, channel, on):
        return any(e["channel"] == channel and e["on"] == on and e["acked"] for e in self.board.history)


def run(rig, steps):
    async def main():
        rig.start()
        try:
            await steps()
        finally:
            await rig.stop()
            rig.node.stop()
    asyncio.run(main())


def test_each_command_is_acknowledged_with_the_board_state(tmp_path):
    rig = Rig(tmp_path)

    async def steps():
        await async_wait_until(lambda: rig.board.alive, 10, "the first keep-alive answered")
        assert 0 <= time.monotonic() - rig.board.status()["last_ack"] < 5  # stamped on the stamp() clock
        rig.board.set("buzzer", True)
        entry = await async_wait_until(lambda: rig.acked("buzzer", True) and rig.board.history[-1], 5, "the ack")
        assert entry["acked"] - entry["queued"] < 2.0  # real time, a generous bound (it is milliseconds)
        assert rig.board.states == {"buzzer": 1, "relay": 0}
        rig.board.set("buzzer", False)
        rig.board.set("relay", True)
        await async_wait_until(lambda: rig.acked("relay", True), 5, "the relay's ack")
        assert rig.board.states == {"buzzer": 0, "relay": 1}
        assert board_log(rig.log) == [("buzzer", 1, "seq=%d" % s) for s in [_seq(rig, "buzzer", True)]] + [
            ("buzzer", 0, "seq=%d" % _seq(rig, "buzzer", False)), ("relay", 1, "seq=%d" % _seq(rig, "relay", True))]
        c = rig.board.counters
        assert c["error.retry"] == 0 and c["error.no_ack"] == 0 and c["acked"] == c["sent"] >= 4
        assert not [e for e in rig.events if e.name == DEAD]
    run(rig, steps)


def _seq(rig, channel, on):
    """The seq the board logged for the command that switched ``channel`` to ``on`` (from its log)."""
    for ch, state, why in board_log(rig.log):
        if ch == channel and state == int(on):
            return int(why.split("=")[1])
    raise AssertionError("the board never logged %s=%d" % (channel, on))


def test_a_dropped_frame_is_sent_again_and_done_once(tmp_path):
    # The board ignores the first command frame it gets, as if line noise ate it. With a long keep-alive, the first
    # command is the SET: the gateway hears nothing within ack_timeout, sends it again with the same seq.
    rig = Rig(tmp_path, "--drop", "1", keepalive_s=30.0, ack_timeout_s=0.3)

    async def steps():
        rig.board.set("relay", True)
        await async_wait_until(lambda: rig.acked("relay", True), 10, "the relay's ack after a retry")
        entry = rig.board.history[0]  # (the board's BOOT notice may have queued the relay's state once more)
        assert entry["tries"] == 2 and entry["acked"] and rig.board.counters["error.retry"] == 1
        assert rig.board.counters["error.no_ack"] == 0 and rig.board.alive is True
        assert [(ch, s) for ch, s, _ in board_log(rig.log)] == [("relay", 1)]  # switched once
    run(rig, steps)


def test_the_board_goes_safe_when_the_keepalive_stops_and_is_restored(tmp_path):
    rig = Rig(tmp_path, "--timeout-ms", "700")

    async def steps():
        rig.board.set("relay", True)
        await async_wait_until(lambda: rig.acked("relay", True), 10, "the relay's ack")
        await asyncio.sleep(1.0)  # the behaviour under test: pings every 0.2 s keep the board on past its 0.7 s
        assert [(ch, s) for ch, s, _ in board_log(rig.log)] == [("relay", 1)]
        await rig.stop()  # the gateway stops talking (its port closed)
        await async_wait_until(lambda: ("relay", 0, "safe keepalive") in board_log(rig.log), 5, "the safe state")
        rig.start()  # the gateway is back: it hears SAFE (or opens a fresh port) and restores the relay
        await async_wait_until(lambda: board_log(rig.log)[-1][:2] == ("relay", 1), 5, "the relay restored")
        # the board logs the switch before its ACK reaches the gateway: wait for the gateway's view too
        await async_wait_until(lambda: rig.board.states["relay"] == 1, 5, "the gateway's view of the relay")
    run(rig, steps)


def test_a_killed_board_is_reported_dead_and_back(tmp_path):
    rig = Rig(tmp_path)

    async def steps():
        rig.board.set("buzzer", True)
        await async_wait_until(lambda: rig.acked("buzzer", True), 10, "the buzzer's ack")
        rig.node.proc.kill()  # the board dies; the line stays (the harness holds the pty open)
        killed = time.monotonic()
        dead = await async_wait_until(lambda: [e for e in rig.events if e.name == DEAD], 5, "actuator_dead")
        assert time.monotonic() - killed < 3.0  # (retries + 1) * ack_timeout after the next ping, and a margin
        assert dead[0].state == "raised" and dead[0].alarm and dead[0].sensor == "ward-3"
        assert rig.board.alive is False and rig.board.counters["error.no_ack"] >= 1
        status = rig.board.status()
        assert status["state"] == "dead" and status["wanted"] == {"buzzer": True} and status["last_ack"] < killed
        rig.node.replug()  # a new board on the same stable name
        await async_wait_until(lambda: any(e.name == DEAD and e.state == "cleared" for e in rig.events), 10,
                               "actuator_dead cleared")
        # the new board booted with everything off; the gateway sends the buzzer's wanted state again
        await async_wait_until(lambda: board_log(rig.log)[-1][:2] == ("buzzer", 1) and len(board_log(rig.log)) == 2,
                               5, "the buzzer on again on the new board")
        assert rig.board.counters["error.dead"] == 1
    run(rig, steps)
