"""Signed commands over HTTP, end to end with real processes on loopback: ``edge-gateway command send --http`` ->
``edge-gateway receive --operators`` (the queue) -> the answer to a batch of ``edge-gateway run`` (HTTP uplink) ->
the outcome records in its next batches -> ``edge-gateway command status``.

* a valid command is applied once, and its outcome is listed;
* the receiver refuses what it can check (unknown key, expired, oversized, unknown action) before queueing;
* the gateway refuses, counts and reports what reaches it anyway (a key the receiver still trusts but the
  gateway does not, and commands a backend that checks nothing put in the queue: another gateway's, expired,
  oversized, an unknown action, a replay, also after a restart), and nothing changes;
* an uplink change is kept when it delivers, reverted within ``downlink.check_s`` when it does not (data keeps
  flowing), and reverted at the next start when the agent is killed during the check.
"""

import json
import os
import re
import signal
import sqlite3
import time

import cbor2
import pytest

from gateway.adapters import keys
from gateway.app.config import to_toml
from gateway.core import commands, wire
from tests.support import closed_port, reserve_port, wait_until
from tests.support.downlink import CommandFiles, Gateway, await_commands, cli, operator_setup
from tests.support.faults import GW, Receiver, killpg, prepare_store, spawn
from tools.sim.harness import PtyNode

pytestmark = pytest.mark.integration
CHECK_S = 5.0


def inject(db, data, op_seq):
    """What a backend that checks nothing could do: put any bytes in this gateway's queue."""
    con = sqlite3.connect(db, timeout=10)
    try:
        con.execute("INSERT INTO commands (gw, kid, op_seq, digest, exp, action, data, queued, handed, state) "
                    "VALUES (?, 'injected', ?, ?, ?, 'x', ?, ?, 0, 'queued')",
                    (GW, op_seq, commands.command_digest(data), int(time.time()) + 600, data, time.time()))
        con.commit()
    finally:
        con.close()
    return "injected", op_seq


def records(db, suffix):
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute("SELECT COUNT(*) FROM records WHERE n LIKE ?", ("%" + suffix,)).fetchone()[0]
    finally:
        con.close()


@pytest.mark.timeout(240)
def test_commands_over_http_through_the_reference_receiver(tmp_path):
    work = str(tmp_path)
    store, op_key, operator = operator_setup(work)
    revoked = keys.SigningKey.generate()  # still in the receiver's operator file, no longer in the gateway's
    forger = keys.SigningKey.generate()  # in neither
    receiver_ops = os.path.join(work, "receiver-operators.json")
    keys.write_jwks(receiver_ops, {"keys": [operator.jwk(), revoked.jwk()]})
    receiver = Receiver(work, os.path.join(store, "jwks.json"), reserve_port(), operators=receiver_ops).start()
    node = PtyNode("line_node", ["--sensors", 1, "--rate", 4, "--prefix", "unit"], link=os.path.join(work, "ttyB"))
    node.start()
    cfg_path = os.path.join(work, "config.toml")
    with open(cfg_path, "w") as f:
        f.write(to_toml({
            "gateway": {"id": GW, "state_dir": store, "key": "key.pem"},
            "batch": {"max_age_s": 0.5},
            "uplink": {"url": receiver.url, "backoff_min_s": 0.1, "backoff_max_s": 1.0},
            "clock": {"mode": "synced"},
            "downlink": {"operators": os.path.join(work, "ops", "operator.jwks.json"), "check_s": CHECK_S,
                         "poll_s": 5.0},
            "sources": [{"type": "serial", "name": "board", "port": node.path, "baud": 115200,
                         "protocol": "lines", "units": {"temp": "Cel", "hum": "%RH"}}]}))
    gateway = Gateway(work, cfg_path, ready="operator keys, commands from")

    files = CommandFiles(work, op_key)
    signed, raw = files.signed, files.raw

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    def config_text():
        with open(cfg_path) as f:
            return f.read()

    def settled(ids, what, timeout=30):
        return await_commands(receiver.db, ids, what, timeout)

    exp = int(time.time())

    def by_hand(key, op_seq, action, args, gw=GW, expiry=None):  # past sign_command's own checks
        payload = cbor2.dumps({"v": 1, "gw": gw, "op_seq": op_seq, "exp": expiry or exp + 600, "action": action,
                               "args": args}, canonical=True)
        return wire.sign(payload, key, commands.protected_header(key.kid_bytes))

    try:
        gateway.start()
        wait_until(lambda: records(receiver.db, "/unit-1/temp") > 0, 20, "the first readings")
        # -- a valid command: applied once, its outcome listed ---------------------------------------------------
        good = signed("good.cose", "config_set", "batch.max_age_s", "0.7")  # op_seq 1
        sent = time.monotonic()
        assert "queued" in cli("command", "send", "--http", receiver.url, good)
        digest = (operator.kid, 1)
        row = settled([digest], "the applied outcome")[digest]
        latency = time.monotonic() - sent
        assert (row["op_seq"], row["action"], row["state"]) == (1, "config_set", "applied"), row
        assert row["outcome"].startswith("config_set key=batch.max_age_s value=0.7 (key %s, seq 1)" % operator.kid)
        assert "max_age_s = 0.7" in config_text()
        applied_config = config_text()
        table = cli("command", "status", "--db", receiver.db, "--gw", GW)
        assert "config_set" in table and "applied" in table and max(map(len, table.splitlines())) <= 80

        # -- what the receiver refuses before queueing ----------------------------------------------------------
        refused = {"unknown_key": raw("forged.cose", commands.sign_command(forger, GW, 50, exp + 600, "restart")),
                   "expired": raw("expired.cose", commands.sign_command(operator, GW, 60, exp - 1, "restart")),
                   "oversize": raw("oversize.cose", by_hand(operator, 61, "config_set",
                                                            {"key": "gateway.log_level", "value": "x" * 5000})),
                   "unknown_action": raw("unknown.cose", by_hand(operator, 62, "reboot", {}))}
        for reason, path in refused.items():
            proc = cli("command", "send", "--http", receiver.url, path, ok=False)
            assert proc.returncode == 1 and reason in proc.stderr, (reason, proc.stderr)

        # -- what reaches the gateway anyway: refused there, counted, reported, nothing changed ----------------
        wrong_gw = signed("wrong-gw.cose", "restart", gw="gw-other")  # op_seq 2, queued for gw-other
        assert "queued" in cli("command", "send", "--http", receiver.url, wrong_gw)
        stale = by_hand(operator, 3, "restart", {}, expiry=exp - 5)
        unknown = by_hand(operator, 4, "reboot", {})
        oversize = read(refused["oversize"])
        by_revoked = raw("revoked.cose", commands.sign_command(revoked, GW, 1, exp + 600, "restart"))
        assert "queued" in cli("command", "send", "--http", receiver.url, by_revoked)
        expect = {(revoked.kid, 1): "unknown_key",
                  inject(receiver.db, read(wrong_gw), 1): "wrong_gateway",
                  inject(receiver.db, stale, 2): "expired",
                  inject(receiver.db, oversize, 3): "oversize",
                  inject(receiver.db, unknown, 4): "unknown_action"}
        got = settled(expect, "the gateway's five rejections")
        for d, reason in expect.items():
            assert got[d]["state"] == "rejected" and got[d]["outcome"].startswith(reason), (reason, got[d])
        # a replay in the same run: the same bytes within the repeat window are one delivery, after it refused
        replay = inject(receiver.db, read(good), 5)
        got = settled([replay], "the replay's rejection", timeout=40)
        assert got[replay]["outcome"].startswith("replayed"), got[replay]
        assert got[digest]["state"] == "applied"  # the first outcome stays the command's
        assert config_text() == applied_config

        # -- an uplink change that delivers is kept -------------------------------------------------------------
        keep = signed("keep.cose", "config_set", "uplink.timeout_s", "5")  # op_seq 3
        cli("command", "send", "--http", receiver.url, keep)
        d_keep = (operator.kid, 3)
        row = settled([d_keep], "the kept uplink change")[d_keep]
        assert row["state"] == "applied" and "checked: delivered through" in row["outcome"], row
        assert "timeout_s = 5.0" in config_text()
        kept_config = config_text()

        # -- an uplink change to an unreachable URL is reverted within check_s; data keeps flowing ---------------
        dead = "http://127.0.0.1:%d/v1/batches" % closed_port()
        bad = signed("bad.cose", "config_set", "uplink.url", dead)  # op_seq 4
        cli("command", "send", "--http", receiver.url, bad)
        d_bad = (operator.kid, 4)
        wait_until(lambda: os.path.exists(os.path.join(store, "downlink-check.json")), 20, "the check to start")
        started = time.monotonic()
        wait_until(lambda: not os.path.exists(os.path.join(store, "downlink-check.json")), CHECK_S + 10,
                   "the revert")
        reverted_after = time.monotonic() - started
        assert reverted_after <= CHECK_S + 2, reverted_after
        row = settled([d_bad], "the revert's outcome")[d_bad]
        assert row["state"] == "reverted" and "no batch delivered through" in row["outcome"], row
        assert config_text() == kept_config
        before = records(receiver.db, "/unit-1/temp")
        wait_until(lambda: records(receiver.db, "/unit-1/temp") > before + 4, 20, "readings after the revert")

        # -- killed during the check: the next start is back on the previous config -----------------------------
        cut = signed("cut.cose", "config_set", "uplink.url", dead)  # op_seq 5
        cli("command", "send", "--http", receiver.url, cut)
        wait_until(lambda: os.path.exists(os.path.join(store, "downlink-check.json")), 20, "the second check")
        wait_until(lambda: dead in config_text(), 10, "the new config on disk")
        gateway.stop(signal.SIGKILL)
        gateway.start()
        assert config_text() == kept_config and not os.path.exists(os.path.join(store, "downlink-check.json"))
        d_cut = (operator.kid, 5)
        row = settled([d_cut], "the outcome of the interrupted check")[d_cut]
        assert row["state"] == "reverted" and "stopped during the check" in row["outcome"], row

        # -- a replay after the restart ---------------------------------------------------------------------------
        again = inject(receiver.db, read(good), 6)
        row = settled([again], "the replay after the restart")[again]
        assert row["state"] == "rejected" and row["outcome"].startswith("replayed"), row
        wait_until(lambda: records(receiver.db, "/unit-1/temp") > before + 12, 20, "readings after the restart")
        assert gateway.stop() == 0
        stopped = gateway.text()
        # the replay; and the interrupted command again if a batch queued during the check was answered before
        # the "reverted" outcome arrived (its state at the receiver stays reverted: asserted above)
        assert re.search(r"'downlink.rejected.replayed': [12]\b", stopped) and "'downlink.reverted': 1" in stopped
        with open(os.path.join(store, "downlink-seq.json")) as f:
            assert json.load(f) == {operator.kid: 5}
    finally:
        if gateway.proc is not None and gateway.proc.poll() is None:
            gateway.stop()
        node.stop()
        receiver.stop()
    with open(os.path.join(work, "agent.log"), "rb") as f:
        first_run = f.read().decode("utf-8", "replace").split("agent stopped:")[0]
    for reason in ("unknown_key", "wrong_gateway", "expired", "oversize", "unknown_action", "replayed"):
        assert "command rejected (%s)" % reason in first_run, reason
    print("command latency %.2f s (send to outcome listed), revert after %.2f s (check_s %g)"
          % (latency, reverted_after, CHECK_S))


@pytest.mark.timeout(120)
def test_a_script_drives_the_demo_through_edge_gateway_receive(tmp_path):
    """``demo --store DIR`` trusts the operator key in DIR (made by ``operator keygen`` here, or by the demo)."""
    work, store = str(tmp_path), str(tmp_path / "demo")
    prepare_store(store)
    cli("operator", "keygen", "--out", store)
    receiver = Receiver(work, os.path.join(store, "jwks.json"), reserve_port(),
                        operators=os.path.join(store, "operator.jwks.json")).start()
    with open(os.path.join(work, "demo.log"), "ab") as log:
        demo = spawn(["demo", "--store", store, "--uplink", receiver.url, "--duration", "60", "--clock", "synced"],
                     log)
    try:
        path = os.path.join(work, "requeue.cose")
        cli("command", "sign", "--key", os.path.join(store, "operator.pem"), "--gw", GW, "--out", path,
            "store_requeue")
        assert "queued" in cli("command", "send", "--http", receiver.url, path)
        wait_until(lambda: "applied" in cli("command", "status", "--db", receiver.db, "--gw", GW), 30,
                   "the demo's outcome")
        rows = [json.loads(x) for x in cli("command", "status", "--db", receiver.db, "--gw", GW,
                                           "--json").splitlines()]
        assert [(r["action"], r["state"]) for r in rows] == [("store_requeue", "applied")]
        assert rows[0]["outcome"].endswith("nothing is quarantined [cmd %s]" % rows[0]["digest"])
    finally:
        killpg(demo, signal.SIGTERM)
        receiver.stop()
    with open(os.path.join(work, "demo.log")) as f:
        assert "operator key %s" % os.path.join(store, "operator.pem") in f.read()
