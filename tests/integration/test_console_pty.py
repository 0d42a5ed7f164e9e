"""The console over a REAL pseudo-terminal, driven as a terminal would, against a real Agent, Store and receiver.

The console opens the pty's slave by path (as it opens /dev/ttyGS0); the test writes keystrokes to the master and
reads the screen bytes back. The agent runs on its own event loop in a thread; a tiny source feeds it readings.
"""

import os
import random
import re
import select
import time
import urllib.parse

import cbor2
import pytest

from gateway.adapters import keys
from gateway.core import wire
from gateway.core.clock import kernel_clock_synced
from gateway.app.config import load
from gateway.app.console.commands import COMMANDS

from tests.support import wait_until
from tests.support.console import (PIN, PROMPT, Rig, Term, config_path, pty_pair, receiver,  # noqa: F401  (fixtures)
                                   spare_tty, start)

pytestmark = pytest.mark.timeout(60)
def squash(lines):
    """Reply text with all whitespace removed: long paths wrap at 79 columns."""
    return re.sub(r"\s+", "", "".join(lines))


def fits(lines):
    return all(len(line) <= 80 and all(" " <= ch <= "~" for ch in line) for line in lines)


def test_byte_at_a_time_backspace_and_real_status(config_path, pty_pair, receiver):
    rig, term = start(config_path, pty_pair)
    try:
        wait_until(lambda: rig.agent.counters["batches_sent"] >= 2, 15, "two batches sent")
        lines = term.cmd("status", byte_at_a_time=True)
        text = "\n".join(lines)
        assert fits(lines)
        assert "gateway   gw-console  (edge-gateway 0.1.0, boot %d, kid %s)" % (rig.agent.boot, rig.agent.kid) in text
        assert ("clock     synced" in text) == bool(kernel_clock_synced())
        assert re.search(r"uplink    (up|idle)  %s" % re.escape(receiver[0].url), text)  # idle: queue empty
        assert "last ack  never" not in text
        sent = int(re.search(r"(\d+) sent in (\d+) batches", text).group(2))
        assert 2 <= sent <= rig.agent.counters["batches_sent"]
        assert receiver[0].receiver.stats()["stored"] >= sent

        # Backspace (0x08) and DEL (0x7f) edit the line; the echo erases with "\b \b".
        term.send(b"verx\x7fsioo\x08n\r", byte_at_a_time=True)
        out = term.read_until(PROMPT)
        assert out.startswith(b"verx\b \bsioo\b \bn\r\n")
        assert b"edge-gateway 0.1.0\r\n" in out

        lines = term.cmd("sensors")
        row = [ln for ln in lines if ln.startswith("tank")][0]
        # the source goes on every 50 ms while the reply is drawn: the row shows one of its latest RSSI values
        recent = {str(r.value)[:3] for r in rig.source.sent[-15:] if r.name == "rssi"}
        assert "temp" in row and "3.1 V" in row and any(v in row for v in recent), (row, recent)

        # the tank's temp climbs past 6.0 a few ticks after start: wait for the rules to raise it, not for time
        wait_until(lambda: rig.agent.rules.active_alarms(), 10, "the tank's high alarm")
        lines = term.cmd("alarms")
        assert lines[0] == "1 active:" and "alarm.high" in lines[1]

        lines = term.cmd("keys")
        assert lines[0] == "kid          %s" % rig.agent.kid
        assert keys.fingerprint(rig.agent.pipeline.signer.key.public) in "\n".join(lines)
        assert b"PRIVATE" not in term.screen
    finally:
        rig.stop()


def test_uplink_test_is_a_real_round_trip(config_path, pty_pair, receiver):
    rig, term = start(config_path, pty_pair)
    try:
        port = urllib.parse.urlsplit(receiver[0].url).port
        lines = term.cmd("uplink test")
        assert re.match(r"uplink ok in \d+\.\d ms: 127\.0\.0\.1:%d answered HTTP 204" % port, lines[0]), lines
        receiver[0].stop()
        lines = term.cmd("uplink test")
        assert lines[0].startswith("uplink FAILED after") and "cannot reach 127.0.0.1:%d" % port in lines[0]
        assert "refused" in " ".join(lines).lower()
    finally:
        rig.stop()


def test_line_noise_burst_then_still_answers(config_path, pty_pair):
    rig, term = start(config_path, pty_pair)
    try:
        rng = random.Random(1234)
        noise = bytes(rng.randrange(256) for _ in range(8192))
        for i in range(0, len(noise), 512):
            term.send(noise[i:i + 512])
            term.drain(0.01)
        term.drain(0.5)
        term.send(b"\x03")  # whatever state the noise left the line in: abandon it
        term.read_until(PROMPT)
        lines = term.cmd("version")
        assert lines == ["edge-gateway 0.1.0"]
        assert b"Traceback" not in term.screen and b"internal error" not in term.screen
        assert rig.server.discipline.counters["dropped_high"] > 1000
        assert not rig.server.console.lock.unlocked
    finally:
        rig.stop()


def test_thousand_random_lines_no_crash(config_path, pty_pair):
    rig, term = start(config_path, pty_pair)
    rng = random.Random(99)
    words = [c.name for c in COMMANDS if c.name not in ("uplink test",)] + ["zork", "", "help help", "read tank"]
    junk = bytes(range(32, 127)) + b"\x00\x01\x07\x08\x7f\x1b[]\x80\xfe\xff\t"
    try:
        t0 = time.monotonic()
        for i in range(1000):
            line = rng.choice(words).encode() + b" " + bytes(rng.choice(junk) for _ in range(rng.randrange(40)))
            term.send(line + b"\r")
            out = term.read_until(rb"\r\n(gw-console[>#] |PIN: )$", 10)
            if out.endswith(b"PIN: "):  # a bare "unlock": answer the PIN prompt with Ctrl-C
                term.send(b"\x03")
                term.read_until(PROMPT)
            replies = out.decode("ascii", "replace").split("\r\n")[1:-1]
            assert fits(replies), replies
        took = time.monotonic() - t0
        assert b"Traceback" not in term.screen and b"internal error" not in term.screen
        assert term.cmd("version") == ["edge-gateway 0.1.0"]
        assert rig.server.counters["commands"] >= 1001
        assert not rig.server.console.lock.unlocked  # nothing in there was the PIN
        assert took < 30
    finally:
        rig.stop()


def test_wrong_pin_backoff_and_lockout(config_path, pty_pair, tmp_path):
    rig, term = start(config_path, pty_pair, max_failures=3, backoff_s=0.5, lockout_s=2.0)
    try:
        assert "type 'unlock' first" in term.cmd("config set batch.max_age_s 3")[0]
        assert term.cmd("unlock 0000") == ["wrong PIN (1 of 3); next attempt in 0.5 s"]
        t_fail = time.monotonic()
        refused = term.cmd("unlock " + PIN)  # right PIN, too early: refused unchecked
        assert refused[0].startswith("too soon: try again in 0.")
        assert term.screen.endswith(b"gw-console> ")
        time.sleep(max(0.0, 0.55 - (time.monotonic() - t_fail)))  # the lock's 0.5 s back-off passes (real clock)
        assert term.cmd("unlock 1111") == ["wrong PIN (2 of 3); next attempt in 1.0 s"]
        time.sleep(1.05)  # the lock's 1.0 s back-off passes (the behaviour under test)
        assert term.cmd("unlock 9999") == ["wrong PIN; locked out for 2.0 s after 3 failures"]
        t_lock = time.monotonic()
        assert re.match(r"locked out after 3 failed PINs: try again in [12]\.\d s$", term.cmd("unlock " + PIN)[0])
        time.sleep(max(0.0, 2.05 - (time.monotonic() - t_lock)))  # the 2.0 s lock-out passes (under test)
        assert term.cmd("unlock " + PIN)[0].startswith("unlocked")
        assert term.screen.endswith(b"gw-console# ")
        audit = (tmp_path / "state" / "console-audit.log").read_text()
        assert audit.count("console unlock -> wrong PIN") == 3
        assert audit.count("console unlock -> refused unchecked") == 2
        assert audit.count("console unlock -> ok") == 1
        assert PIN not in audit and "9999" not in audit
    finally:
        rig.stop()


def test_config_change_takes_effect_and_survives_restart(config_path, pty_pair, tmp_path, receiver, spare_tty):
    fridge_port = spare_tty
    rig, term = start(config_path, pty_pair)
    try:
        term.send(b"unlock\r")
        term.read_until(rb"PIN: $")
        term.send(PIN.encode() + b"\r")
        out = term.read_until(PROMPT)
        assert out.startswith(b"******\r\nunlocked") and PIN.encode() not in term.screen
        assert term.cmd("config set batch.max_age_s 2.5") == ["saved batch.max_age_s = 2.5; applied now"]
        assert rig.agent.pipeline.batcher.max_age == 2.5  # live
        assert term.cmd("config set store.max_bytes 1000000") == [
            "saved store.max_bytes = 1000000; takes effect after 'restart'"]
        assert squash(term.cmd("config set batch.max_age_s -4")).startswith(
            squash(["failed: %s: batch.max_age_s: must be between" % config_path]))
        assert term.cmd("sensor add fridge serial port=%s baud=9600" % fridge_port) == [
            "added source fridge (serial); takes effect after 'restart'"]
        assert "failed:" in term.cmd("sensor add ghost serial baud=9600")[0]  # no port: refused now, not at boot
        shown = "\n".join(term.cmd("config show"))
        assert "max_age_s = 2.5" in shown and "<redacted>" in shown and "scrypt$" not in shown
        logged = "\n".join(term.cmd("log 50"))
        assert "console config set batch.max_age_s 2.5 -> ok" in logged
        assert term.cmd("restart") == ["restarting: the agent stops now and systemd starts it again"]
        assert rig.restarted.wait(5)
    finally:
        rig.stop()
    assert os.path.exists(config_path + ".bak")
    cfg = load(config_path)
    assert cfg.batch.max_age_s == 2.5 and cfg.store.max_bytes == 1000000
    assert [s["name"] for s in cfg.sources] == ["fridge"]

    # "Restart": new agent and console objects from the same file; the console reopens the same port.
    rig2, term2 = start(config_path, pty_pair)
    try:
        assert rig2.agent.pipeline.batcher.max_age == 2.5
        assert rig2.agent.store.max_bytes == 1000000
        assert rig2.agent.boot >> 32 == 2  # the second start (counter << 32 | 32 random bits)
        assert [s.name for s in rig2.agent.sources][0] == "fridge"
        assert not rig2.server.console.lock.unlocked  # a new process starts locked
        assert "max_age_s = 2.5" in "\n".join(term2.cmd("config show batch"))
    finally:
        rig2.stop()


def test_disconnect_locks_and_the_console_comes_back(config_path, tmp_path):
    link = str(tmp_path / "ttyCONSOLE")
    m1, s1 = os.openpty()
    os.symlink(os.ttyname(s1), link)
    rig = Rig(config_path, link)
    try:
        term = Term(m1)
        term.read_until(PROMPT)
        assert term.cmd("unlock " + PIN)[0].startswith("unlocked")
        assert rig.server.console.lock.unlocked
        os.close(m1)  # the cable is pulled: the slave side reads EIO
        os.close(s1)
        wait_until(lambda: rig.server.counters["disconnects"] >= 1, 5, "the console to see the disconnect")
        assert rig.server.counters["disconnects"] == 1
        assert not rig.server.console.lock.unlocked
        m2, s2 = os.openpty()  # plugged in again (a new device behind the same stable name)
        os.unlink(link)
        os.symlink(os.ttyname(s2), link)
        term2 = Term(m2)
        term2.read_until(PROMPT, timeout=10)
        assert "type 'unlock' first" in term2.cmd("restart")[0]
        assert rig.server.counters["sessions"] == 2
        os.close(m2)
        os.close(s2)
    finally:
        rig.stop()


def test_store_flush_to_file_writes_verifiable_batches(config_path, pty_pair, receiver, tmp_path):
    server, trust = receiver
    server.stop()  # the uplink is down: batches pile up in the store
    rig, term = start(config_path, pty_pair)
    try:
        wait_until(lambda: rig.agent.depth()[0] >= 3, 10, "three batches in the store")
        term.cmd("unlock " + PIN)
        target = str(tmp_path / "queue.cbor")
        lines = term.cmd("store flush-to-file " + target)
        assert fits(lines) and squash(lines).endswith(squash(["quarantined; the queue is unchanged"]))
        n = int(re.match(r"wrote (\d+) batches \((\d+) bytes\) to", lines[0]).group(1))
        assert n >= 3
        with open(target, "rb") as f:
            items = []
            while f.tell() < os.path.getsize(target):
                items.append(cbor2.load(f))
        assert len(items) == n
        for item in items:
            assert wire.verify(cbor2.dumps(item), trust).gw == "gw-console"
        assert rig.agent.depth()[0] >= n  # the queue is unchanged
        assert squash(["failed: %s: File exists" % target]) == squash(term.cmd("store flush-to-file " + target))
        assert "absolute path" in term.cmd("store flush-to-file rel.cbor")[0]
    finally:
        rig.stop()
