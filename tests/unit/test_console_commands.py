"""The console's commands, PIN lock, audit, settings and sensor board: pure, against a small fake view."""

import datetime

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from gateway.core.clock import FakeClock
from gateway.app.console import settings
from gateway.app.console.auth import AuditLog, PinLock, hash_pin, parse_pin_hash, verify_pin
from gateway.app.console.board import SensorBoard
from gateway.app.console.commands import COMMANDS, Console, Probe, Reply, Work, fit, run_sync
from gateway.app.console.protocol import Line
from gateway.core.errors import ConfigError
from gateway.core.model import Event, Reading

from tests.support.fake_view import LONG, PIN, PIN_HASH, FakeView, rig, say  # noqa: F401  (rig: a fixture)


def test_help_lists_every_command_and_explains_each(rig):
    console = rig[4]
    listing = "\n".join(say(console, "help"))
    for cmd in COMMANDS:
        assert cmd.usage in listing
        lines = say(console, "help " + cmd.name)
        assert lines[0] == "usage: " + cmd.usage
        assert cmd.summary[:30] in " ".join(lines)


def test_unknown_input_gives_one_line_hint(rig):
    console = rig[4]
    assert say(console, "stauts") == ("unknown command 'stauts'; did you mean 'status'? (type 'help')",)
    assert say(console, "frobnicate now") == ("unknown command 'frobnicate' (type 'help')",)
    assert len(say(console, "config")) == 1 and "config show" in say(console, "config")[0]
    assert say(console, "read") == ("usage: read SENSOR [N]",)
    assert say(console, "") == ()


def test_status_reports_the_view_and_fits(rig):
    lines = say(rig[4], "status")
    text = "\n".join(lines)
    assert "gateway   gw-7  (edge-gateway 0.1.0, boot 3, kid AbCdEfGhIjK)" in text
    assert "uptime    1d 02:03:04" in text
    assert "NOT synced" in text
    assert "last ack  42s ago" in text
    assert "queue     12 batches, 340 readings, 20.5 kB, 1 alarms" in text
    assert "drops     store 2 batches/50 readings" in text
    assert "quarantined 1" in text
    assert "errors 2" in text
    assert "update    0.1.1 (prev 0.1.0), last rolled_back 0.1.2 -> 0.1.1: not proven after" in text
    assert all(len(line) <= 80 for line in lines)


def board_status(name, state, last_ack, wanted, said, port="/dev/edge-gateway/usb-ward3-board", connected=True):
    """One board as ``ActuatorBoard.status()`` reports it."""
    return {"name": name, "port": port, "connected": connected, "state": state, "last_ack": last_ack,
            "channels": ["buzzer", "relay"], "wanted": wanted, "board": said, "counters": {"acked": 9}}


def test_status_shows_each_actuator_board_its_channels_and_last_ack(rig):
    clock, view, _, _, console = rig
    assert not [l for l in say(console, "status") if l.startswith(("actuator", "program"))]  # no [[actions]]
    view.actions = {"boards": [board_status("ward-3", "alive", clock.monotonic() - 0.4, {"buzzer": True},
                                            {"buzzer": 1, "relay": 0}),
                               board_status("cold-room", "dead", clock.monotonic() - 250, {"relay": True},
                                            {"buzzer": 0, "relay": 0}, port="/dev/edge-gateway/" + LONG,
                                            connected=False),
                               board_status("spare", "unknown", None, {}, {})],
                    "programs": [{"name": "page-nurse", "runs": 3, "ok": 2, "error.exit": 1, "error.timeout": 0,
                                  "error.spawn": 0, "dropped_busy": 0},
                                 {"name": "never-ran", "runs": 0, "ok": 0, "error.exit": 0, "error.timeout": 0,
                                  "error.spawn": 0, "dropped_busy": 0}],
                    "outputs": {"ward-3/buzzer": True, "cold-room/relay": True}, "counters": {}}
    lines = say(console, "status")
    text = " ".join(" ".join(lines).split())  # the long port wraps
    assert "actuator  ward-3 alive, last ack 0.4s ago: buzzer ON, relay off" in lines
    assert "actuator  cold-room DEAD, last ack 4m ago: buzzer off, relay off (->ON)" in lines
    assert "not open: check the board's power and cable; see 'log'" in text
    assert "actuator  spare not heard yet, last ack never: buzzer ?, relay ?" in lines
    assert "program   page-nurse: 3 runs, 2 ok, 1 failed, 0 dropped (busy); see 'log'" in lines
    assert "never-ran" not in text
    help_status = " ".join(say(console, "help status"))
    assert "actuators" in help_status and "DEAD" in help_status and "->ON" in help_status


def test_update_needs_unlock_then_stages_the_bundle_and_is_audited(rig):
    _, view, _, audit, console = rig
    say(console, "unlock " + PIN)
    assert say(console, "update") == ("usage: update FILE",)
    lines = say(console, "update /media/usb/edge-gateway-0.2.0.bundle")
    assert lines == ("bundle 0.2.0 verified (replaces 0.1.0, key AbCdEfGhIjK); staged for the updater",)
    assert view.calls == [("update", "/media/usb/edge-gateway-0.2.0.bundle")]
    assert audit.entries[-1].endswith("console update /media/usb/edge-gateway-0.2.0.bundle -> ok: bundle 0.2.0 "
                                      "verified (replaces 0.1.0, key AbCdEfGhIjK); staged for the updater")


def test_status_shows_restarts_and_a_ble_adapter_that_needs_a_reset(rig):
    view, console = rig[1], rig[4]
    status = view.status()
    status.update(restarts={"power_loss": 3, "clean": 12}, sources=[
        {"name": "ble0", "adapter": "hci0", "adapter_state": "needs_reset",
         "counters": {"power_cycles": 3, "power_cycle_failed": 3, "adapter_needs_reset": 1}},
        {"name": "ble1", "adapter": "hci1", "adapter_state": "power_cycling", "counters": {"power_cycles": 1}},
        {"name": "ble2", "adapter": "hci2", "adapter_state": "scanning", "counters": {}}])
    view.status = lambda: status
    lines = say(console, "status")
    assert "restarts  clean 12, power_loss 3" in lines
    assert "          adapter hci0 NEEDS A RESET: unplug and replug it, or reboot" in lines
    assert "          adapter hci1 power cycling" in lines
    assert not any("hci2" in ln for ln in lines)  # scanning: nothing to say
    assert all(len(ln) <= 80 for ln in lines)


def test_sensors_and_read_from_the_board(rig):
    clock, view, _, _, console = rig
    assert say(console, "sensors") == ("no readings yet",)
    for name, value, unit in (("temp", 4.25, "Cel"), ("rssi", -71, "dBm"), ("batt", 87, "%EL"), ("n", 3, None)):
        view.board.observe(Reading("fridge-" + "z" * 30, name, value, unit, t=990.0))
    view.board.observe(Reading("door", "open", True, None, t=999.5))
    lines = say(console, "sensors")
    assert lines[0].split() == ["SENSOR", "LAST", "VALUE", "AGE", "RSSI", "BATTERY"]
    row = [ln for ln in lines if ln.startswith("fridge-")][0]
    assert "temp 4.25 Cel" in row and "10s" in row and "-71" in row and "87 %EL" in row
    assert "open True" in [ln for ln in lines if ln.startswith("door")][0]
    read = say(console, "read door 5")
    assert read[0] == "door now:" and "open" in read[1] and "0.5s ago" in read[1]
    assert "no readings from 'nope'" in say(console, "read nope")[0]


def test_alarms_states(rig):
    clock, view, _, _, console = rig
    assert "no rules configured" in say(console, "alarms")[0]
    view.alarm_list = []
    assert say(console, "alarms") == ("no active alarms",)
    view.alarm_list = [Event("fridge", "alarm.high", "raised", "temp 9.1 above high 8 " + LONG, t=940.0,
                             level="high", alarm=True)]
    lines = say(console, "alarms")
    assert lines[0] == "1 active:" and "alarm.high" in lines[1] and "60s ago" in lines[1]


def test_uplink_test_is_blocking_work(rig):
    _, view, _, _, console = rig
    result = console.handle(Line("uplink test"))
    assert isinstance(result, Work) and view.calls == []  # nothing ran on the caller's loop
    assert run_sync(result).lines == ("uplink ok in 4.2 ms: 127.0.0.1:8080 answered HTTP 404 Not Found",)
    view.probe = Probe(False, 1.5, "cannot reach h:1: [Errno 111] Connection refused")
    assert say(console, "uplink test")[0].startswith("uplink FAILED after 1500.0 ms: cannot reach")


def test_config_show_redacts_secrets(rig):
    console = rig[4]
    text = "\n".join(say(console, "config show"))
    assert "hunter2" not in text and "00112233" not in text and PIN_HASH[:20] not in text
    assert text.count("<redacted>") == 3
    assert 'id = "gw-7"' in text
    assert say(console, "config show nosuch")[0].startswith("no section 'nosuch'")


def test_keys_shows_public_identity_only(rig):
    lines = say(rig[4], "keys")
    assert lines[0] == "kid          AbCdEfGhIjK"
    assert "never" in lines[-1]


def test_write_commands_need_unlock_and_do_not_touch_the_view(rig):
    _, view, lock, _, console = rig
    for text in ("config set batch.max_age_s 5", "sensor add x serial port=/dev/x", "sensor remove x",
                 "store flush-to-file /tmp/q", "store requeue", "restart", "update /media/usb/b.bundle"):
        lines = say(console, text)
        assert "type 'unlock' first" in lines[0]
    assert view.calls == []
    assert not lock.unlocked


def test_unlock_with_masked_prompt_then_write_and_audit(rig):
    clock, view, lock, audit, console = rig
    assert run_sync(console.handle(Line("unlock"))).lines == ()
    assert console.masked and console.prompt() == "PIN: "
    lines = say(console, PIN)
    assert lines[0].startswith("unlocked")
    assert console.prompt() == "gw-7# " and not console.masked
    lines = say(console, "config set batch.max_age_s 2.5")
    assert lines == ("saved batch.max_age_s = 2.5",)
    assert view.config["batch"]["max_age_s"] == 2.5
    say(console, "config set uplink.mqtt.password s3cret")
    bad = say(console, "config set batch.max_age_s -1")
    assert bad[0].startswith("failed:") and "must be between" in bad[0]
    say(console, "store flush-to-file /tmp/exists")
    stamp = datetime.datetime.fromtimestamp(clock.wall(), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert audit.entries[0] == stamp + " console unlock -> ok"
    assert audit.entries[1] == stamp + " console config set batch.max_age_s 2.5 -> ok: saved batch.max_age_s = 2.5"
    assert "s3cret" not in "\n".join(audit.entries) and "<redacted>" in audit.entries[2]
    assert "FAILED" in audit.entries[3] and "FAILED: /tmp/exists: File exists" in audit.entries[4]
    assert PIN not in "\n".join(audit.entries)
    assert say(console, "store requeue") == ("put 2 quarantined batches back in the queue",)
    assert view.calls[-1] == ("store_requeue",) and audit.entries[-1].endswith("store requeue -> ok: put 2 "
                                                                               "quarantined batches back in the queue")
    assert say(console, "lock") == ("locked",)
    assert console.prompt() == "gw-7> "


def test_wrong_pin_backs_off_then_locks_out(rig):
    clock, _, lock, audit, console = rig
    waits = []
    for k in range(1, 5):
        lines = say(console, "unlock 0000")
        assert "wrong PIN (%d of 5)" % k in lines[0]
        refused = say(console, "unlock " + PIN)  # the right PIN, too soon: not even checked
        assert refused[0].startswith("too soon") and not lock.unlocked
        waits.append(lock.wait_s())
        clock.advance(lock.wait_s())
    assert waits == [1.0, 2.0, 4.0, 8.0]
    assert "locked out for 15 min after 5 failures" in say(console, "unlock 0000")[0]
    clock.advance(899)
    assert "locked out after 5 failed PINs: try again in" in say(console, "unlock " + PIN)[0]
    assert not lock.unlocked
    clock.advance(1)
    assert say(console, "unlock " + PIN)[0].startswith("unlocked")
    assert lock.failures == 0
    assert sum("wrong PIN" in e for e in audit.entries) == 5


def test_idle_and_disconnect_lock(rig):
    clock, view, lock, audit, console = rig
    say(console, "unlock " + PIN)
    clock.advance(299)
    assert console.idle_check() is None
    say(console, "version")  # activity restarts the idle timer
    clock.advance(299)
    assert lock.unlocked
    clock.advance(1)
    lines = say(console, "restart")
    assert lines[0] == "(console locked after 5m idle)" and "type 'unlock' first" in lines[1]
    assert view.calls == []
    say(console, "unlock " + PIN)
    console.disconnected()
    assert not lock.unlocked and audit.entries[-1].endswith("locked on disconnect")


def test_no_pin_configured_disables_writes():
    clock = FakeClock()
    console = Console(FakeView(clock), PinLock("", clock), AuditLog(clock))
    assert "no PIN is configured" in say(console, "unlock 1234")[0]
    assert not console.lock.unlocked


def test_truncated_and_cancelled_lines_do_nothing(rig):
    _, view, _, _, console = rig
    assert "too long" in run_sync(console.handle(Line("restart", truncated=True))).lines[0]
    assert run_sync(console.handle(Line("", cancelled=True))).lines == ()


WORDS = [c.name for c in COMMANDS] + ["help", "read", "log", "", "config", "sensor", "store", "uplink"]


@hsettings(max_examples=300, deadline=None)
@given(st.sampled_from(WORDS), st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=90))
def test_any_line_gets_an_answer_that_fits(word, rest):
    clock = FakeClock()
    view = FakeView(clock)
    view.board.observe(Reading("s1", "temp", 1.5, "Cel", t=999.0))
    console = Console(view, PinLock(PIN_HASH, clock, backoff_s=0.0), AuditLog(clock))
    console.lock.unlocked = True
    say(console, (word + " " + rest)[:160])


def test_fit_wraps_and_sanitizes():
    out = fit(["a\x1b[31mred " + "word " * 30])
    assert all(len(x) <= 79 for x in out) and "\x1b" not in "".join(out) and out[0].startswith("a?[31mred")


# -- auth -------------------------------------------------------------------------------------------------------
def test_hash_pin_default_format_and_verify():
    encoded = hash_pin("246800")
    scheme, n, r, p, salt, digest = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert verify_pin("246800", encoded) and not verify_pin("246801", encoded)
    assert hash_pin("246800") != encoded  # salted


@pytest.mark.parametrize("bad", ["", "plain", "scrypt$16384$8$1$c2FsdA==", "scrypt$1000$8$1$AAAAAAAAAAA=$" + "A" * 44,
                                 "scrypt$2097152$8$1$AAAAAAAAAAA=$" + "A" * 44, "bcrypt$1$1$1$a$b"])
def test_parse_pin_hash_rejects_bad_or_dangerous(bad):
    with pytest.raises(ConfigError) as exc:
        parse_pin_hash(bad)
    assert exc.value.key == "console.pin_hash"


@pytest.mark.parametrize("pin", ["123", "4711", "12345", "has space", "x" * 65])
def test_hash_pin_refuses_weak_input(pin):
    with pytest.raises(ValueError):
        hash_pin(pin, n=1 << 10)


def test_audit_file_has_time_and_unsynced_mark(tmp_path):
    clock = FakeClock(wall=1_750_000_000.0, synced=False)
    audit = AuditLog(clock, str(tmp_path / "audit.log"))
    audit.record("restart", "ok")
    assert (tmp_path / "audit.log").read_text() == "2025-06-15T15:06:40Z (clock unsynced) console restart -> ok\n"


# -- settings --------------------------------------------------------------------------------------------------
def test_set_key_parses_by_declared_type_and_validates():
    raw = {"gateway": {"id": "gw-1"}}
    new, value = settings.set_key(raw, "batch.max_readings", "50")
    assert value == 50 and new["batch"]["max_readings"] == 50 and "batch" not in raw
    assert settings.set_key(raw, "uplink.mqtt.tls", "yes")[1] is True
    assert settings.set_key(raw, "uplink.url", '"http://h:1/x"')[1] == "http://h:1/x"
    for key, text, words in (("batch.nope", "1", "unknown key"), ("batch", "1", "is a section"),
                             ("batch.max_readings", "lots", "must be an integer"),
                             ("gateway.log_level", "loud", "must be one of"),
                             ("uplink.backoff_min_s", "999", "must not exceed"),
                             ("console.pin_hash", "x", "--set-pin")):
        with pytest.raises(ConfigError) as exc:
            settings.set_key(raw, key, text)
        assert words in str(exc.value)


def test_sources_add_remove():
    raw = {"sources": [{"name": "a", "type": "serial", "port": "/dev/x"}]}
    new, spec = settings.add_source(raw, "b", "ble", {"adapter": "hci1"})
    assert [s["name"] for s in new["sources"]] == ["a", "b"]
    with pytest.raises(ConfigError) as exc:  # a misspelt key is refused at once, not at the next start
        settings.add_source(raw, "c", "serial", {"port": "/dev/y", "buad": 9600})
    assert exc.value.key == "sources[1].buad" and "did you mean 'baud'?" in str(exc.value)
    with pytest.raises(ConfigError):
        settings.add_source(raw, "a", "serial", {})
    with pytest.raises(ConfigError):
        settings.add_source(raw, "c", "carrier-pigeon", {})
    assert settings.remove_source(new, "a")["sources"] == [spec]
    with pytest.raises(ConfigError) as exc:
        settings.remove_source(raw, "zz")
    assert "configured: a" in str(exc.value)


# -- board -----------------------------------------------------------------------------------------------------
def test_board_is_bounded_and_never_raises():
    board = SensorBoard(max_sensors=2, history=3)
    for i in range(5):
        board.observe(Reading("s%d" % (i % 3), "temp", i, "Cel", t=float(i)))
    board.observe(Event("s0", "silent", "raised", "r"))
    board.observe(object())
    assert board.names() == ["s0", "s1"] and board.ignored == 1
    assert [r.value for r in board.recent("s0")] == [0, 3]
    assert board.recent("s2") is None
    for i in range(5):
        board.observe(Reading("s0", "temp", 10 + i, "Cel", t=10.0 + i))
    assert [r.value for r in board.recent("s0", 10)] == [12, 13, 14]


def test_commands_shows_the_last_signed_commands_in_80_columns(rig):
    clock, view, _, _, console = rig
    assert "the downlink is off" in say(console, "commands")[0]
    view.downlink = ([], {})
    assert say(console, "commands")[1] == "no command received since the start"
    view.downlink = ([
        {"t": 700.0, "op_seq": 12, "state": "applied", "digest": "ab" * 8,
         "text": "config_set key=batch.max_age_s value=5 (key FtIu-VbGrfe, seq 12): saved " + LONG},
        {"t": 940.0, "op_seq": None, "state": "rejected", "digest": "cd" * 8, "text": "unknown_key: kid 'x'"},
        {"t": 990.0, "op_seq": 13, "state": "checking", "digest": "ef" * 8, "text": "config_set key=uplink.url"}],
        {"applied": 1, "rejected.unknown_key": 1, "rejected.replayed": 2, "repeats": 3})
    lines = say(console, "commands")
    assert lines[0] == "downlink  1 applied, 0 failed, 3 rejected, 0 reverted; 3 repeats, 0 polls"
    assert lines[1].split() == ["AGE", "OP_SEQ", "OUTCOME", "WHAT"]
    assert lines[2].split()[:4] == ["5m", "12", "applied", "config_set"] and len(lines) == 5
    assert lines[3].split()[1:3] == ["-", "rejected"] and lines[4].split()[1:3] == ["13", "checking"]
    assert "commands" in "\n".join(say(console, "help"))
