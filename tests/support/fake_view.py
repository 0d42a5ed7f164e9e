"""A small fake ``GatewayView`` for the console's pure tests (and the console security tests)."""

import pytest

from gateway.app.console import settings
from gateway.app.console.auth import AuditLog, PinLock, hash_pin
from gateway.app.console.board import SensorBoard
from gateway.app.console.commands import Console, GatewayView, Probe, Reply, run_sync
from gateway.app.console.protocol import Line
from gateway.core.clock import FakeClock

PIN = "471100"
# Cheap scrypt parameters keep the pure tests fast; the real default is checked in test_hash_pin_default.
PIN_HASH = hash_pin(PIN, salt=b"0123456789abcdef", n=1 << 10)
LONG = "x" * 150


class FakeView(GatewayView):
    def __init__(self, clock):
        self.clock = clock
        self.board = SensorBoard()
        self.calls = []
        self.alarm_list = None
        self.downlink = None  # (recent commands, downlink counters) once a test turns the downlink on
        self.actions = None  # agent.status()["actions"] once a test configures local actions
        self.probe = Probe(True, 0.0042, "127.0.0.1:8080 answered HTTP 404 Not Found")
        self.config = {"gateway": {"id": "gw-7"}, "uplink": {"url": "http://h/x", "mqtt": {"password": "hunter2"}},
                       "console": {"pin_hash": PIN_HASH},
                       "sources": [{"name": "b", "type": "ble", "sensors": [
                           {"mac": "A4:C1:38:00:00:01", "key": "00112233445566778899aabbccddeeff"}]}]}

    def version(self): return "0.1.0"
    def gateway_id(self): return "gw-7"
    def now(self): return self.clock.monotonic()

    def status(self):
        return {"gateway": "gw-7", "boot": 3, "kid": "AbCdEfGhIjK", "uptime_s": 93784.2, "clock_synced": False,
                "uplink": "https://ingest.example.com/v1/batches/with/a/rather/long/path/" + LONG,
                "uplink_state": "down", "last_ack": self.clock.wall() - 42, "last_error": "cannot reach " + LONG,
                "store_ok": True, "queue_batches": 12, "queue_readings": 340, "queue_bytes": 20480,
                "queue_alarms": 1, "memory_batches": 0, "version": "0.1.0", "wall": self.clock.wall(),
                "counters": {"readings_in": 500, "readings_sent": 160, "batches_sent": 4, "uplink_failures": 9,
                             "memory_dropped_batches": 0, "memory_dropped_readings": 0},
                "store_counters": {"dropped_batches": 2, "dropped_readings": 50, "quarantined": 1},
                "sources": [{"name": "board", "counters": {"lines": 77, "error.checksum": 2}}],
                "actions": self.actions,
                "update": {"running": "0.1.1", "previous": "0.1.0", "on_trial": False, "proven": False,
                           "last": "rolled_back 0.1.2 -> 0.1.1: not proven after 3 starts (crash loop) " + LONG}}

    def sensor_rows(self): return self.board.rows()
    def sensor_latest(self, sensor): return self.board.latest(sensor)
    def sensor_recent(self, sensor, n): return self.board.recent(sensor, n)
    def alarms(self): return self.alarm_list
    def log_lines(self, n): return ["12:00:00 WARN gateway.app.agent: " + LONG][:n]
    def config_data(self): return self.config
    def keys(self): return {"kid": "AbCdEfGhIjK", "alg": "EdDSA (Ed25519)", "fingerprint": "SHA256:" + "f" * 43,
                            "x": "x" * 43}
    def commands(self):
        return self.downlink

    def uplink_test(self):
        self.calls.append(("uplink_test",))
        return self.probe

    def config_set(self, key, text):
        self.calls.append(("config_set", key, text))
        new, value = settings.set_key(self.config, key, text)
        self.config = new
        return "saved %s = %s" % (key, value)

    def sensor_add(self, name, kind, params):
        self.calls.append(("sensor_add", name, kind, params))
        return "added"

    def sensor_remove(self, name):
        self.calls.append(("sensor_remove", name))
        return "removed"

    def store_dump(self, path):
        self.calls.append(("store_dump", path))
        raise FileExistsError(17, "File exists", path)

    def store_requeue(self):
        self.calls.append(("store_requeue",))
        return "put 2 quarantined batches back in the queue"

    def restart(self):
        self.calls.append(("restart",))
        return "restarting"

    def update(self, path):
        self.calls.append(("update", path))
        return "bundle 0.2.0 verified (replaces 0.1.0, key AbCdEfGhIjK); staged for the updater"


@pytest.fixture
def rig():
    clock = FakeClock(mono=1000.0, wall=1_750_000_000.0)
    view = FakeView(clock)
    lock = PinLock(PIN_HASH, clock, max_failures=5, lockout_s=900.0, backoff_s=1.0, idle_lock_s=300.0)
    audit = AuditLog(clock)
    console = Console(view, lock, audit)
    return clock, view, lock, audit, console


def say(console, text):
    reply = run_sync(console.handle(Line(text)))
    assert isinstance(reply, Reply)
    for line in reply.lines:
        assert len(line) <= 80, line
        assert all(" " <= ch <= "~" for ch in line), line
    return reply.lines
