# An actuator board on a serial line: a buzzer and a relay (or the channels named by --channels) that the gateway
# switches with the actuator line protocol (gateway/core/actuator_link.py; docs/operations.md, "Actuator boards").
#
# Every command is acknowledged with the state of every output after it. A command repeated with the same seq (the
# gateway retrying after a lost reply) is answered again from memory, not done twice. If no valid frame arrives for
# --timeout-ms (the gateway's keep-alive is a PING every second), every output goes to the safe state (off) and the
# board says so once with a "SAFE keepalive" notice; the next valid command is obeyed as usual.
#
# Written for the MicroPython unix port, and uses its bundled micropython-lib modules: argparse for the options,
# asyncio for the two tasks (the line reader and the keep-alive watchdog; StreamReader over stdin).
# Usage: actuator_board.py [--channels buzzer,relay] [--timeout-ms 3000] [--log FILE] [--drop N[,N...]]
#   --log FILE  appends one line per change of an output: "<ms> <channel>=<0|1> <why>" (what the buzzer did)
#   --drop N,.. ignores the Nth command frame received (from 1), as if line noise ate it: the gateway must retry
# The serial line is stdin/stdout (the harness puts a pty there).
import sys

import argparse
import asyncio
import time

from gateway.core.actuator_link import COMMAND, NOTICE, REPLY, LinkFramer, encode


def now_ms():
    return time.ticks_ms()


class Board:
    """The board's logic: frames in, reply bytes out; no IO (the tasks below do it)."""

    def __init__(self, channels, timeout_ms, drop=(), log=None):
        self.channels = list(channels)
        self.state = [0] * len(self.channels)
        self.timeout_ms = timeout_ms
        self.drop = list(drop)
        self.log = log
        self.commands = 0  # command frames received
        self.last_seq = None
        self.last_reply = None
        self.notices = 0
        self.heard = now_ms()
        self.safe = False

    def _set(self, i, value, why):
        if self.state[i] != value:
            self.state[i] = value
            if self.log is not None:
                self.log.write("%d %s=%d %s\n" % (now_ms(), self.channels[i], value, why))
                self.log.flush()

    def _ack(self, seq):
        return encode(REPLY, seq, "ACK", ["%s=%d" % (c, s) for c, s in zip(self.channels, self.state)])

    def notice(self, verb, args):
        out = encode(NOTICE, self.notices, verb, args)
        self.notices = (self.notices + 1) % 65536
        return out

    def handle(self, frame):
        """The reply to one frame (bytes), or None."""
        if frame.lead != COMMAND:
            return None
        self.commands += 1
        if self.commands in self.drop:
            return None  # "lost on the line": no reply, and the keep-alive timer is not fed either
        self.heard = now_ms()
        self.safe = False
        if frame.seq == self.last_seq and self.last_reply is not None:
            return self.last_reply  # a retry: the first one was done; answer it again
        if frame.verb == "PING":
            reply = self._ack(frame.seq)
        elif frame.verb == "SET":
            if len(frame.args) != 2 or frame.args[0] not in self.channels:
                reply = encode(REPLY, frame.seq, "NAK", ["bad_channel"])
            elif frame.args[1] not in ("0", "1"):
                reply = encode(REPLY, frame.seq, "NAK", ["bad_value"])
            else:
                self._set(self.channels.index(frame.args[0]), int(frame.args[1]), "seq=%d" % frame.seq)
                reply = self._ack(frame.seq)
        else:
            reply = encode(REPLY, frame.seq, "NAK", ["bad_verb"])
        self.last_seq = frame.seq
        self.last_reply = reply
        return reply

    def watchdog(self):
        """The SAFE notice when the keep-alive just ran out (every output switched off), else None."""
        if self.safe or time.ticks_diff(now_ms(), self.heard) < self.timeout_ms:
            return None
        self.safe = True
        for i in range(len(self.channels)):
            self._set(i, 0, "safe keepalive")
        return self.notice("SAFE", ["keepalive"])


def write(data):
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
    out.write(data)
    if hasattr(out, "flush"):
        out.flush()


async def reader(board):
    stdin = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
    stream = asyncio.StreamReader(stdin)
    framer = LinkFramer()
    while True:
        data = await stream.read(1)  # FileIO.read(n) waits for n bytes: one at a time, whatever is ready
        if not data:
            return  # the line closed
        for frame in framer.feed(data):
            reply = board.handle(frame)
            if reply is not None:
                write(reply)


async def watchdog(board):
    while True:
        await asyncio.sleep_ms(50)
        notice = board.watchdog()
        if notice is not None:
            write(notice)


async def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--channels", default="buzzer,relay")
    parser.add_argument("--timeout-ms", type=int, default=3000)
    parser.add_argument("--log", default="")
    parser.add_argument("--drop", default="")  # micropython-lib's argparse has no action="append" with values
    args = parser.parse_args(argv)
    log = open(args.log, "a") if args.log else None
    drop = [int(n) for n in args.drop.split(",") if n]
    board = Board(args.channels.split(","), args.timeout_ms, drop, log)
    write(board.notice("BOOT", board.channels))
    dog = asyncio.create_task(watchdog(board))
    await reader(board)
    dog.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
