"""Issue 15, the technician's points: command history in the line discipline, case-insensitive command words,
a banner that starts on a fresh line within 80 columns, uplink rejections in ``status``/``uplink test``, and
``sensor add`` refusing a missing or busy port. Pure parts here; the pty tests run the real console."""

import http.server

import pytest

from gateway.app.console.protocol import Line, LineDiscipline

UP, DOWN, UP_APP, DOWN_APP = b"\x1b[A", b"\x1b[B", b"\x1bOA", b"\x1bOB"
PROMPT = "gw> "


def feed(d, data, chunks=None):
    echo, lines = bytearray(), []
    pieces = [data] if chunks is None else [data[i:i + chunks] for i in range(0, len(data), chunks)]
    for piece in pieces:
        e, ls = d.feed(piece)
        echo += e
        lines += ls
    return bytes(echo), lines


def disc(*typed):
    d = LineDiscipline()
    d.prompt = PROMPT
    for line in typed:
        d.feed(line.encode() + b"\r")
    return d


def columns(data, start=0):
    """The widest column a terminal reaches drawing ``data`` (CR to column 0, BS back one, text forward)."""
    col = widest = start
    for b in data:
        if b == 0x0D:
            col = 0
        elif b == 0x08:
            col = max(0, col - 1)
        elif 0x20 <= b <= 0x7E:
            col += 1
            widest = max(widest, col)
    return widest


@pytest.mark.parametrize("chunks", [None, 1, 2])
@pytest.mark.parametrize("up,down", [(UP, DOWN), (UP_APP, DOWN_APP)])
def test_up_and_down_recall_whole_and_byte_by_byte(up, down, chunks):
    d = disc("status", "sensors")
    echo, lines = feed(d, up, chunks)
    assert lines == [] and d.pending == "sensors" and echo == b"\rgw> sensors"
    echo, _ = feed(d, up, chunks)
    assert d.pending == "status"
    assert echo == b"\rgw> status" + b" \b"  # one space over the longer old line's tail, then back
    echo, _ = feed(d, up, chunks)  # at the oldest: nothing moves, nothing echoed
    assert echo == b"" and d.pending == "status"
    feed(d, down, chunks)
    assert d.pending == "sensors"
    feed(d, down, chunks)  # past the newest: the (empty) line being typed comes back
    assert d.pending == ""
    echo, lines = feed(d, up + b"\r", chunks)
    assert lines == [Line("sensors")]


def test_down_past_newest_gives_back_the_draft_and_recalled_lines_can_be_edited():
    d = disc("log 5")
    echo, _ = feed(d, b"rea" + UP)
    assert d.pending == "log 5"
    feed(d, DOWN)
    assert d.pending == "rea"
    feed(d, UP + b"\x7f9\r")
    assert list(d.history) == ["log 5", "log 9"]


def test_history_is_bounded_and_skips_repeats_empty_cancelled_and_overlong():
    d = LineDiscipline(max_line=10, max_history=3)
    feed(d, b"a\rb\rb\r\r   \rc\rd\rhalf\x03" + b"x" * 20 + b"\r")
    assert list(d.history) == ["b", "c", "d"]


@pytest.mark.parametrize("steps", [
    [(False, b"unlock\r"), (True, b"246800\r")],     # the PIN at the masked prompt
    [(False, b"unlock\r246800\r")],                  # the PIN typed ahead, before the masked prompt was drawn
    [(False, b"unlock 246800\r")],                    # unlock PIN on one line
    [(False, b"UnLock 246800\r")],
])
def test_history_never_records_the_pin_or_an_unlock_line(steps):
    d = disc("status")
    for mask, data in steps:
        d.mask = mask  # the console sets mask while it asks for the PIN
        d.feed(data)
    d.mask = False
    assert list(d.history) == ["status"]
    echo, _ = feed(d, UP + UP)
    assert b"246800" not in echo and b"unlock" not in echo.lower()


def test_no_recall_while_a_pin_is_being_typed():
    d = disc("status")
    d.mask = True
    echo, _ = feed(d, b"12" + UP)
    assert echo == b"**" and d.pending == "12"


def test_redraw_stays_within_80_columns_and_starts_a_fresh_line_when_wrapped():
    long = "config set uplink.url https://ingest.example.net/v1/" + "x" * 60  # prompt + line > 80
    d = disc(long, "status")
    echo, _ = feed(d, UP)
    assert echo == b"\rgw> status"
    echo, _ = feed(d, UP)  # the recalled line wraps: start a new row, never backspace across rows
    assert echo == b"\r\ngw> " + long.encode()
    echo, _ = feed(d, DOWN)
    assert echo == b"\r\ngw> status"
    assert d.pending == "status"
    # Every in-place redraw stays on the prompt's row, inside 80 columns.
    d = disc("a" * 70, "b")
    echo, _ = feed(d, UP + DOWN)
    assert columns(echo) < 80 and b"\n" not in echo


def test_other_escapes_still_swallowed_and_empty_history_is_silent():
    d = disc()
    echo, lines = feed(d, b"st" + UP + b"at\x1b[1;5A\x1b[Dus" + DOWN + b"\r")
    assert lines == [Line("status")] and echo == b"status\r\n"
    assert d.counters["recalls"] == 0



# -- command words are case-insensitive; arguments keep their case -------------------------------------------------
from tests.support.fake_view import PIN, rig, say  # noqa: E402,F401  (fixture and helpers)


def test_command_words_are_case_insensitive_arguments_keep_case(rig):  # noqa: F811
    clock, view, lock, audit, console = rig
    assert say(console, "STATUS") == say(console, "status")
    assert say(console, "Version") == say(console, "version")
    assert say(console, "UPLINK TEST") == say(console, "uplink test")
    assert "unlocked" in say(console, "UNLOCK " + PIN)[0]
    say(console, "SENSOR ADD Fridge serial port=/dev/ttyUSB1")
    assert view.calls[-1] == ("sensor_add", "Fridge", "serial", {"port": "/dev/ttyUSB1"})


def test_banner_lines_fit_and_are_separate(rig):  # noqa: F811
    console = rig[4]
    lines = console.banner().lines
    assert len(lines) == 2 and all(len(line) <= 60 for line in lines)


# -- the real console on a pty: history, case, and the banner of a reopened session --------------------------------
from tests.support.console import PROMPT as PTY_PROMPT, Rig, Term, config_path, pty_pair, receiver, start  # noqa: E402,F401


def test_pty_history_recall_and_upper_case_commands(config_path, pty_pair):  # noqa: F811
    rig, term = start(config_path, pty_pair)
    try:
        assert term.cmd("VERSION") == ["edge-gateway 0.1.0"]
        assert term.cmd("unlock " + "246800")[0].startswith("unlocked")
        term.send(UP, byte_at_a_time=True)  # the unlock line was not recorded: VERSION comes back
        term.read_until(rb"\rgw-console# VERSION$")
        term.send(b"\r")
        assert term.read_until(PTY_PROMPT).endswith(b"edge-gateway 0.1.0\r\ngw-console# ")
        term.send(b"lo" + UP_APP + DOWN_APP)  # application-mode arrows; down gives the draft back
        term.read_until(rb"\rgw-console# lo {5}\x08{5}$")
        assert term.cmd("ck") == ["locked"]
        assert b"246800" not in term.screen.split(b"unlock 246800", 1)[1]
    finally:
        rig.stop()


def test_reopened_session_banner_starts_on_a_fresh_line_within_80_columns(config_path, tmp_path):  # noqa: F811
    import os
    import time
    link = str(tmp_path / "ttyCONSOLE")
    m1, s1 = os.openpty()
    os.symlink(os.ttyname(s1), link)
    rig = Rig(config_path, link)
    try:
        term = Term(m1)
        first = term.read_until(PTY_PROMPT)
        assert first.startswith(b"\r\n") and columns(first) <= 80
        os.close(m1)  # the session ends (cable pulled, gadget re-enumerated) with the prompt on screen
        os.close(s1)
        deadline = time.monotonic() + 5
        while rig.server.counters["disconnects"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        m2, s2 = os.openpty()
        os.unlink(link)
        os.symlink(os.ttyname(s2), link)
        term2 = Term(m2)
        again = term2.read_until(PTY_PROMPT)
        # The technician's screen still ends in "gw-console> " (column 12): the banner must not glue onto it.
        assert again.startswith(b"\r\n")
        assert columns(again, start=len("gw-console> ")) <= 80
        for row in again.split(b"\r\n"):
            assert len(row) <= 80
        os.close(m2)
        os.close(s2)
    finally:
        rig.stop()


# -- the upstream rejecting batches: status and uplink test say so, and why -------------------------------------------
from gateway.app.console.commands import Probe  # noqa: E402
from gateway.app.console.read_commands import rejection  # noqa: E402

REASON = "http://h/v1/batchez answered 404 Not Found"


def rejecting(view, status=404, n=11, acked_after=False):
    base = view.status
    wall = view.clock.wall()

    def status_now():
        s = base()
        s["uplink_state"], s["last_error"] = "idle", REASON
        s["counters"].update(quarantined=n, uplink_failures=0)
        s["last_ack"] = wall - 1 + (5 if acked_after else 0)
        s["last_rejection"] = {"status": status, "reason": REASON, "wall": wall}
        return s
    view.status = status_now


def test_status_says_the_upstream_is_rejecting_and_why(rig):  # noqa: F811
    clock, view, _, _, console = rig
    rejecting(view)
    text = "\n".join(say(console, "status"))
    squashed = " ".join(text.split())
    assert "uplink REJECTING: HTTP 404 on 11 batches -> check uplink.url last: %s" % REASON in squashed
    assert "uplink    idle" not in text
    assert "11 uplink failures (11 rejected)" in text
    assert squashed.count(REASON) == 1  # not repeated as the last error


def test_rejection_ends_with_the_next_acknowledgement_and_hints_by_status(rig):  # noqa: F811
    clock, view, _, _, console = rig
    rejecting(view, acked_after=True)
    assert rejection(view.status()) is None
    assert "REJECTING" not in "\n".join(say(console, "status"))
    rejecting(view, status=403, n=1)
    what, reason, hint = rejection(view.status())
    assert what == "HTTP 403 on 1 batch" and "trust store" in hint


def test_uplink_test_is_not_ok_while_batches_are_rejected(rig):  # noqa: F811
    clock, view, _, _, console = rig
    rejecting(view)
    lines = say(console, "uplink test")
    assert lines == ("uplink REJECTING: reachable in 4.2 ms, but HTTP 404 on 11 batches",
                     "  probe: 127.0.0.1:8080 answered HTTP 404 Not Found",
                     "  last rejection: " + REASON,
                     "  -> check uplink.url, then 'store requeue'")
    view.probe = Probe(False, 1.5, "cannot reach h:1: refused")
    lines = say(console, "uplink test")
    assert lines[0] == "uplink FAILED after 1500.0 ms, and before that HTTP 404 on 11 batches"
    assert lines[1] == "  probe: cannot reach h:1: refused"


class NotFound(http.server.BaseHTTPRequestHandler):
    """A web server where the uplink path is wrong: every request gets 404 (as a misspelt ingest path would)."""

    def _404(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _404

    def log_message(self, *args):
        pass


def test_pty_wrong_uplink_path_is_reported_as_rejecting(config_path, pty_pair):  # noqa: F811
    import threading
    import time
    import tomllib
    from gateway.app.config import to_toml
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    with open(config_path, "rb") as f:
        raw = tomllib.load(f)
    raw["uplink"]["url"] = "http://127.0.0.1:%d/v1/batchez" % httpd.server_address[1]
    with open(config_path, "w") as f:
        f.write(to_toml(raw))
    rig, term = start(config_path, pty_pair)
    try:
        deadline = time.monotonic() + 15
        while rig.agent.counters["quarantined"] < 2:
            assert time.monotonic() < deadline, dict(rig.agent.counters)
            time.sleep(0.05)
        lines = term.cmd("status")
        squashed = " ".join(" ".join(lines).split())
        assert "uplink REJECTING: HTTP 404 on " in squashed and "-> check uplink.url" in squashed, lines
        assert "answered 404" in squashed and "/v1/batchez" in squashed
        assert "uplink idle" not in squashed
        n = int(squashed.split("uplink failures (")[1].split(" rejected")[0])
        assert n >= 2 and all(len(line) <= 80 for line in lines)
        lines = term.cmd("uplink test")
        assert lines[0].startswith("uplink REJECTING: reachable in"), lines
        assert "check uplink.url" in " ".join(lines)
    finally:
        rig.stop()
        httpd.shutdown()
        httpd.server_close()


# -- sensor add refuses a port that is missing, not serial, or already taken -------------------------------------------
from tests.support.console import PIN as PTY_PIN, spare_tty  # noqa: E402,F401
from gateway.app.console.view import _check_port  # noqa: E402
from gateway.core.errors import ConfigError  # noqa: E402


def test_check_port_refuses_missing_not_serial_and_busy(tmp_path, spare_tty):  # noqa: F811
    import os
    plain = tmp_path / "ttyUSB0"
    plain.write_text("")
    link = tmp_path / "fridge"
    os.symlink(spare_tty, link)
    cases = [(str(tmp_path / "nope"), {}, "no device"),
             (str(plain), {}, "not a character device"),
             ("/dev/null", {}, "not a serial device (a mem device)"),
             (str(link), {spare_tty: "source 'a'"}, "already used by source 'a'"),  # the same device, by a link
             (spare_tty, {str(link): "the console"}, "already used by the console")]
    for port, busy, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
            _check_port(port, busy, "/etc/gw.toml", "sources[1].port")
        assert info.value.key == "sources[1].port"
    _check_port(spare_tty, {}, "/etc/gw.toml", "sources[1].port")  # a free serial device is fine


def test_pty_sensor_add_refuses_missing_and_busy_ports(config_path, pty_pair, spare_tty):  # noqa: F811
    rig, term = start(config_path, pty_pair)
    try:
        assert term.cmd("unlock " + PTY_PIN)[0].startswith("unlocked")
        before = open(config_path).read()
        for port, message in (("/dev/ttyUSB9", "no device /dev/ttyUSB9"),
                              ("/dev/null", "/dev/null is not a serial device"),
                              (pty_pair[1], "already used by the console")):
            lines = term.cmd("sensor add fridge serial port=%s baud=9600" % port)
            squashed = " ".join(" ".join(lines).split())
            assert squashed.startswith("failed: ") and message in squashed, lines
            assert all(len(line) <= 80 for line in lines)
        assert open(config_path).read() == before  # nothing saved
        assert term.cmd("sensor add fridge serial port=%s" % spare_tty)[0].startswith("added source fridge")
        lines = term.cmd("sensor add freezer serial port=%s" % spare_tty)
        assert "already used by source 'fridge'" in " ".join(" ".join(lines).split()), lines
        log = "\n".join(term.cmd("log 20"))
        assert "sensor add freezer serial port=" in log and "FAILED" in log
    finally:
        rig.stop()
