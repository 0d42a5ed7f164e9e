"""The receiver on PostgreSQL (issue 16, part 1): a real server (``tests.support.postgres``), real HTTP on loopback.

The answers are the same as on SQLite (201 stored, 200 duplicate, 409 conflict, 422 unstorable, 503 when the
database fails), so those tests run on both engines. Then what only PostgreSQL has: the schema built from an
empty database and left alone at a second start, day partitions with their indexes, retention by dropping
partitions, and a receiver process killed with SIGKILL mid-stream that loses no acknowledged batch.
"""

import dataclasses
import http.client
import json
import signal
import subprocess
import threading

import psycopg
import pytest

from backend import receiver as receiver_mod
from backend.receiver import Receiver, ReceiverServer
from backend.receiver_pg import AHEAD_DAYS, DAY, PostgresStorage, partition_name
from gateway.adapters.keys import SigningKey, TrustStore
from gateway.core import senml, wire
from gateway.core.model import Reading
from tests.support import post_batch, reserve_port, wait_for_port, wait_until

GW = "gw-test"
#: the receiver's fake "now" in the retention tests: 2026-11-30 12:00 UTC
NOW = 20422 * DAY + 12 * 3600


@pytest.fixture
def other_key():
    return SigningKey.generate()


@pytest.fixture
def two_gw_trust(signing_key, other_key):
    return TrustStore({"keys": [signing_key.jwk(GW), other_key.jwk("gw-other")]})


@pytest.fixture
def server(db_target, two_gw_trust):
    srv = ReceiverServer(Receiver(db_target, two_gw_trust)).start()
    yield srv
    srv.stop()
    srv.receiver.close()


post = post_batch  # (status, body, Retry-After)

def batch(key, seq, gw=GW, values=(4.0, 4.25, 4.5), t0=1_700_000_000.0, boot=1, name="temp", resolution=None):
    readings = [Reading("s1", name, v, "Cel", t0 + i, resolution) for i, v in enumerate(values)]
    return wire.sign(wire.encode_payload(gw, boot, seq, True, senml.encode_records(readings, (), gw + "/")), key)


# -- the same answers on both engines ----------------------------------------------------------------------------

def test_the_exact_decimal_is_stored_for_sql_users(server, signing_key):
    """Format 2 batches keep the decimal the sensor reported (v_exact, text on SQLite, numeric on PostgreSQL);
    format 1 batches are still accepted, with no exact value (NULL): they carried none."""
    from drivers.serial.lines import LineDecoder
    _, ms = LineDecoder().decode(b"temp[Cel]=21.50 hum[%RH]=47.4 t2[Cel]=-0.5 n=0 big=9007199254740993")
    readings = [Reading("board-1", m.name, m.value, m.unit, 1_700_000_000.0, m.resolution) for m in ms]
    readings += [Reading("fridge-3", "temp", v, "Cel", 1_700_000_001.0 + i, 0.01) for i, v in
                 enumerate((3.95, 16.02, 0.0))]
    data = wire.sign(wire.encode_payload(GW, 1, 1, True, senml.encode_records(readings, (), GW + "/")), signing_key)
    old = wire.sign(__import__("cbor2").dumps({"v": 1, "gw": GW, "boot": 1, "seq": 2, "clock": True, "senml": [
        {-2: GW + "/old/temp", -3: 1_700_000_000, 2: 3.94921875}]}, canonical=True), signing_key)
    assert post(server.url, data)[0] == 201 and post(server.url, old)[0] == 201
    rows = sorted(server.receiver.query("SELECT n, t, CAST(v_exact AS TEXT), v FROM records"))
    assert [(n.split("/", 1)[1], x) for n, _, x, _ in rows] == [
        ("board-1/big", "9007199254740993"), ("board-1/hum", "47.4"), ("board-1/n", "0"), ("board-1/t2", "-0.5"),
        ("board-1/temp", "21.50"), ("fridge-3/temp", "3.95"), ("fridge-3/temp", "16.02"), ("fridge-3/temp", "0.00"),
        ("old/temp", None)]
    assert [v for _, _, _, v in rows][-4:] == [3.95, 16.02, 0.0, 3.94921875]  # v: the nearest double, as before


def test_a_database_from_before_exact_values_is_migrated_and_keeps_its_rows(tmp_path, two_gw_trust, signing_key):
    import sqlite3
    from backend.receiver_db import MIGRATIONS
    path = str(tmp_path / "rx.sqlite")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied REAL NOT NULL)")
    for version, statements in MIGRATIONS[:2]:  # the schema a receiver before format 2 made
        for statement in statements:
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
    db.execute("INSERT INTO records (gw, boot, seq, n, t, v) VALUES ('gw-test', 1, 0, 'gw-test/s/x', 5, 4.25)")
    db.commit()
    db.close()
    srv = ReceiverServer(Receiver(path, two_gw_trust)).start()
    try:
        assert post(srv.url, batch(signing_key, 1, values=(4.25,)))[0] == 201
        assert srv.receiver.query("SELECT n, v, v_exact FROM records ORDER BY t") == [
            ("gw-test/s/x", 4.25, None), (GW + "/s1/temp", 4.25, "4.25")]
    finally:
        srv.stop()
        srv.receiver.close()

def test_stores_answers_duplicates_and_keeps_conflicts_apart(server, signing_key):
    first, reused = batch(signing_key, 7), batch(signing_key, 7, values=(9.0, 9.5, 10.0))
    status, body, _ = post(server.url, first)
    assert (status, body["status"], body["records"]) == (201, "stored", 3)
    assert post(server.url, first)[:2] == (200, {"status": "duplicate", "gw": GW, "boot": 1, "seq": 7})
    for _ in range(2):
        status, body, _ = post(server.url, reused)
        assert (status, body["status"], body["error"]) == (409, "conflict", "conflict")
    rx = server.receiver
    assert rx.query("SELECT v FROM records ORDER BY t") == [(4.0,), (4.25,), (4.5,)]  # the first content stays
    assert rx.query("SELECT n, t, u FROM records WHERE n = ? ORDER BY t", (GW + "/s1/temp",))[0] == (
        GW + "/s1/temp", 1_700_000_000.0, "Cel")
    rows = rx.query("SELECT gw, boot, seq, kid, data FROM conflicts")
    assert len(rows) == 1 and rows[0][:4] == (GW, 1, 7, signing_key.kid) and bytes(rows[0][4]) == reused
    stats = rx.stats()
    assert (stats["stored"], stats["duplicates"], stats["conflicts"], stats["rejected"]) == (1, 1, 2, 0)


def test_a_group_commit_answers_each_batch_as_if_it_came_alone(db_target, two_gw_trust, signing_key, other_key):
    """``store_many`` (the MQTT consumer's group commit): one transaction for the group, one answer per batch, in
    order; a key repeated inside the group is a duplicate or a conflict of its first, never stored twice."""
    rx = Receiver(db_target, two_gw_trust)
    try:
        assert rx.process(batch(signing_key, 1))[0] == 201  # stored before the group

        def checked(data):
            status, verified, digest, signed = rx.check(data)
            assert status is None
            return verified, digest, signed
        items = [checked(d) for d in (batch(signing_key, 3, resolution=0.01), batch(signing_key, 1),
                                      batch(signing_key, 2), batch(signing_key, 2), batch(signing_key, 2, values=(9.0,)),
                                      batch(other_key, 1, gw="gw-other"))]
        lax = checked(batch(signing_key, 4))
        items.append((dataclasses.replace(lax[0], seq=1 << 63),) + lax[1:])  # what a lax verifier would pass
        answers = rx.store_many(items)
        assert [status for status, _ in answers] == [201, 200, 201, 200, 409, 201, 422]
        assert [body.get("status") for _, body in answers[:6]] == ["stored", "duplicate", "stored", "duplicate",
                                                                    "conflict", "stored"]
        assert rx.query("SELECT gw, seq, records FROM batches ORDER BY gw, seq") == [
            ("gw-other", 1, 3), (GW, 1, 3), (GW, 2, 3), (GW, 3, 3)]
        assert rx.query("SELECT seq, COUNT(*) FROM records WHERE gw = ? GROUP BY seq ORDER BY seq", (GW,)) == [
            (1, 3), (2, 3), (3, 3)]
        # the group's readings (PostgreSQL: binary COPY) keep their exact decimals, scale and all
        assert rx.query("SELECT CAST(v_exact AS TEXT), v FROM records WHERE gw = ? AND seq = 3 ORDER BY t", (GW,)) == [
            ("4.00", 4.0), ("4.25", 4.25), ("4.50", 4.5)]
        assert rx.query("SELECT seq FROM conflicts") == [(2,)]
        stats = rx.stats()
        assert (stats["stored"], stats["duplicates"], stats["conflicts"], stats["rejected"]) == (4, 2, 1, 1)
    finally:
        rx.close()


@pytest.mark.parametrize("change", [
    {"records": [{"n": GW + "/s1/temp", "t": 1.0, "v": -(10 ** 30)}]},
    {"records": [{"n": GW + "/s1/temp", "t": 1.0, "v": float("nan")}]},
    {"records": [{"n": GW + "/s1/temp", "t": 1.0, "vs": "\ud800"}]},
    {"seq": 1 << 63},
], ids=["v-bignum", "v-nan", "surrogate", "seq-2^63"])
def test_unstorable_values_are_422_before_the_transaction(server, signing_key, other_key, monkeypatch, change):
    """What today's verifier already refuses (as in test_security_receiver.py): the storage guards itself."""
    real_verify = wire.verify

    def lax_verify(data, trust, max_bytes):
        b = real_verify(data, trust, max_bytes)
        return dataclasses.replace(b, **change) if b.gw == GW else b

    monkeypatch.setattr(receiver_mod, "verify", lax_verify)
    status, body, _ = post(server.url, batch(signing_key, 1))
    assert (status, body["error"]) == (422, "unstorable")
    assert server.receiver.query("SELECT COUNT(*) FROM batches") == [(0,)]
    assert post(server.url, batch(other_key, 1, gw="gw-other"))[0] == 201  # the connection is still usable


def test_text_with_nul_is_unstorable_on_postgresql_only_where_it_cannot_be_held(server, signing_key, db_target):
    data = wire.sign(wire.encode_payload(GW, 1, 2, True, [{-2: GW + "/s1/x", 3: "a\0b", 6: 1_700_000_000}]),
                     signing_key)
    status, body, _ = post(server.url, data)
    if db_target.startswith("postgresql"):
        assert (status, body["error"]) == (422, "unstorable")
    else:
        assert status == 201  # SQLite text holds U+0000


def test_a_lost_database_connection_is_503_with_retry_after_then_recovers(pg_url, two_gw_trust, signing_key):
    srv = ReceiverServer(Receiver(pg_url, two_gw_trust)).start()
    try:
        assert post(srv.url, batch(signing_key, 1))[0] == 201
        pid = srv.receiver._store.conn.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        status, body, retry = post(srv.url, batch(signing_key, 2))
        assert (status, body["error"]) == (503, "store_failed") and int(retry) >= 1
        assert post(srv.url, batch(signing_key, 2))[0] == 201  # reconnected: the retry is stored, once
        assert srv.receiver.query("SELECT seq, records FROM batches ORDER BY seq") == [(1, 3), (2, 3)]
        assert srv.receiver.stats()["store_failures"] == 1
    finally:
        srv.stop()
        srv.receiver.close()


def test_a_database_that_cannot_be_reached_is_a_storage_error(postgres, two_gw_trust):
    from backend.storage import StorageError
    with pytest.raises(StorageError, match="cannot open"):
        Receiver(postgres.url("no_such_database"), two_gw_trust)


def test_two_receivers_on_one_database_store_each_batch_once(pg_url, two_gw_trust, signing_key):
    """The fleet shape: several receivers, one database. They race on every batch; the primary key decides."""
    receivers = [Receiver(pg_url, two_gw_trust) for _ in range(2)]
    data = [batch(signing_key, seq, t0=NOW + seq) for seq in range(1, 41)]
    answers = [[], []]
    try:
        def run(i):
            for d in data:
                answers[i].append(receivers[i].process(d)[0])
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        for a, b in zip(*answers):
            assert sorted((a, b)) == [200, 201]  # one stored it, the other saw a duplicate
        assert receivers[0].query("SELECT COUNT(*), COUNT(DISTINCT seq) FROM records") == [(120, 40)]
    finally:
        for rx in receivers:
            rx.close()


def test_workers_adding_the_same_new_sensors_at_once_get_one_id_each(pg_url, two_gw_trust, signing_key):
    """The sensor dictionary (schema 6) under concurrency. First, deterministic: another worker's INSERT of a name
    is still uncommitted when this receiver needs the same name; it waits for it and then uses that row's id
    (not a second row, not a missing id). Then four receivers with the same new names released together."""
    name = GW + "/s1/held"
    rx = Receiver(pg_url, two_gw_trust)
    try:
        with psycopg.connect(pg_url) as other, psycopg.connect(pg_url, autocommit=True) as watch:
            held = other.execute("INSERT INTO sensors (gw, n) VALUES (%s, %s) RETURNING id", (GW, name)).fetchone()
            answer = []
            worker = threading.Thread(target=lambda: answer.append(rx.process(batch(signing_key, 1, name="held"))))
            worker.start()
            wait_until(lambda: watch.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                             "AND query LIKE 'INSERT INTO sensors%%'").fetchone()[0],
                       what="the receiver waiting on the uncommitted sensor row")
            other.commit()
        worker.join(timeout=30)
        assert answer and answer[0][0] == 201
        assert rx.query("SELECT id FROM sensors WHERE n = ?", (name,)) == [held]
        assert rx.query("SELECT n, v FROM records WHERE seq = 1 ORDER BY t") == [(name, 4.0), (name, 4.25),
                                                                                (name, 4.5)]
    finally:
        rx.close()
    receivers = [Receiver(pg_url, two_gw_trust) for _ in range(4)]
    start, answers = threading.Barrier(4), []
    try:
        def run(i):
            # the same three new names in each receiver's batch (its own seq): all three unknown to every receiver
            readings = [Reading("s1", q, float(i), "Cel", 1_700_000_000.0 + k) for k, q in enumerate("abc")]
            data = wire.sign(wire.encode_payload(GW, 1, 10 + i, True, senml.encode_records(readings, (), GW + "/")),
                             signing_key)
            start.wait(timeout=30)
            answers.append(receivers[i].process(data)[0])
        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert answers == [201] * 4
        assert receivers[0].query("SELECT n, COUNT(*) FROM sensors WHERE n LIKE '%/s1/_' GROUP BY n ORDER BY n") == [
            (GW + "/s1/" + q, 1) for q in "abc"]
        assert receivers[0].query("SELECT seq, n, v FROM records WHERE seq >= 10 ORDER BY seq, n") == [
            (10 + i, GW + "/s1/" + q, float(i)) for i in range(4) for q in "abc"]
    finally:
        for r in receivers:
            r.close()


def test_receive_refuses_a_database_it_cannot_open_and_hides_the_password(postgres, tmp_path, signing_key):
    jwks = tmp_path / "trust.jwks"
    jwks.write_text(json.dumps({"keys": [signing_key.jwk(GW)]}))
    url = "postgresql://edge:s3cret@127.0.0.1:%d/no_such_database" % postgres.port
    proc = subprocess.run(["edge-gateway", "receive", "--listen", "127.0.0.1:0", "--trust", str(jwks), "--db", url],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot open the receiver database" in proc.stderr
    assert "s3cret" not in proc.stderr and "edge:***@" in proc.stderr


# -- the schema ---------------------------------------------------------------------------------------------------
def _catalog(conn):
    tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename IN "
                                          "('readings', 'sensors')")}
    partitioned = {r[0] for r in conn.execute("SELECT c.relname FROM pg_partitioned_table p "
                                              "JOIN pg_class c ON c.oid = p.partrelid")}
    return tables, indexes, partitioned


def test_schema_is_built_from_an_empty_database_and_left_alone_at_a_second_start(pg_url):
    first = PostgresStorage.from_target(pg_url)
    try:
        tables, indexes, partitioned = _catalog(first.conn)
        assert {"schema_version", "batches", "sensors", "readings_other", "conflicts", "commands",
                "command_outcomes"} <= tables and "records" not in tables
        # version 6: one index on the readings, (sid, t); the sensors' (gw, n) serves "a gateway's sensors"
        assert indexes == {"readings_by_sid", "sensors_pkey", "sensors_by_gw_name"} and partitioned == {"readings"}
        assert first.query("SELECT viewname FROM pg_views WHERE viewname = 'records'") == [("records",)]
        versions = first.query("SELECT version FROM schema_version ORDER BY version")
        from backend.receiver_pg import SCHEMA_VERSION
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)] and SCHEMA_VERSION >= 3
        assert first.stats()["schema_version"] == SCHEMA_VERSION
    finally:
        first.close()
    again = PostgresStorage.from_target(pg_url)
    try:
        assert again.query("SELECT version FROM schema_version ORDER BY version") == versions  # nothing twice
        assert _catalog(again.conn) == (tables, indexes, partitioned)
    finally:
        again.close()


def test_a_version_5_database_moves_its_records_into_readings_and_keeps_them(pg_url):
    """Schema 6 on a database with data: the rows of every old day partition and of the default partition come
    back unchanged through the ``records`` view, each old day has its ``readings_`` partition, the old tables are
    gone, and retention still drops whole partitions."""
    from backend.receiver_pg import MIGRATIONS
    day = NOW // DAY
    rows = [(GW, 1, 1, GW + "/s1/temp", (day - 5) * DAY + 60.0, "Cel", 4.25, None, None, "4.25"),
            (GW, 1, 2, GW + "/s1/temp", day * DAY + 1.5, "Cel", 4.5, None, None, "4.50"),
            (GW, 1, 2, GW + "/s1/door", day * DAY + 2.0, None, None, "open", None, None),
            ("gw-other", 3, 9, "gw-other/s2/ok", day * DAY + 3.0, None, None, None, 1, None),
            (GW, 1, 3, GW + "/s1/temp", (day + 30) * DAY, "Cel", -0.5, None, None, "-0.5")]  # default partition
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, applied timestamptz NOT NULL "
                     "DEFAULT now())")
        for version, statements in MIGRATIONS[:5]:
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        for d in (day - 5, day):  # as version 5 named them
            conn.execute("CREATE TABLE records_%s PARTITION OF records FOR VALUES FROM (%d) TO (%d)"
                         % (partition_name(d)[9:], d * DAY, (d + 1) * DAY))
        with conn.cursor().copy("COPY records (gw, boot, seq, n, t, u, v, vs, vb, v_exact) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    store = PostgresStorage.from_target(pg_url + "?retention_days=3")
    try:
        cols = "gw, boot, seq, n, t, u, v, vs, vb, CAST(v_exact AS TEXT)"
        assert store.query("SELECT %s FROM records ORDER BY t" % cols) == rows
        assert store.partitions() == [day - 5, day]
        assert store.query("SELECT tableoid::regclass::text, COUNT(*) FROM readings GROUP BY 1 ORDER BY 1") == [
            (partition_name(day - 5), 1), (partition_name(day), 3), ("readings_other", 1)]
        assert store.query("SELECT COUNT(*) FROM pg_class WHERE relname LIKE 'records%'") == [(1,)]  # the view
        assert store.query("SELECT n FROM sensors ORDER BY id") == [(n,) for n in sorted({r[3] for r in rows})]
        assert store.drop_expired(NOW) == [partition_name(day - 5)]
        assert store.query("SELECT %s FROM records ORDER BY t" % cols) == rows[1:]
    finally:
        store.close()


def test_a_database_from_a_newer_receiver_is_refused(pg_url, tmp_path):
    from backend.receiver_db import SqliteStorage
    from backend.storage import StorageError
    PostgresStorage.from_target(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(StorageError, match="schema version 99"):
        PostgresStorage.from_target(pg_url)
    path = str(tmp_path / "rx.sqlite")
    SqliteStorage(path).close()
    s = SqliteStorage(path)
    s.query("INSERT INTO schema_version VALUES (99, 0)")
    s.close()
    with pytest.raises(StorageError, match="schema version 99"):
        SqliteStorage(path)


def test_sqlite_schema_is_versioned_too(tmp_path):
    from backend.receiver_db import SCHEMA_VERSION, SqliteStorage
    path = str(tmp_path / "rx.sqlite")
    for _ in range(2):
        s = SqliteStorage(path)
        try:
            assert s.query("SELECT version FROM schema_version ORDER BY version") == [
                (v,) for v in range(1, SCHEMA_VERSION + 1)]
            assert s.stats() == {"engine": "sqlite", "schema_version": SCHEMA_VERSION}
            plan = " ".join(str(r) for r in s.query(
                "EXPLAIN QUERY PLAN SELECT * FROM records WHERE gw = ? AND t >= ?", (GW, 0)))
            assert "records_by_gw" in plan
        finally:
            s.close()


def test_readings_of_a_day_are_one_partition_and_index_lookups(pg_url, two_gw_trust, signing_key):
    rx = Receiver(pg_url, two_gw_trust, clock=lambda: NOW)
    try:
        day = NOW // DAY
        for seq, t0 in enumerate((NOW - 3600, NOW - DAY - 60, NOW + 10), start=1):
            assert rx.process(batch(signing_key, seq, t0=t0))[0] == 201
        store = rx._store
        parts = store.partitions()
        assert {day - 1, day} <= set(parts) and set(range(day, day + AHEAD_DAYS + 1)) <= set(parts)
        # each reading sits in its day's partition
        got = store.query("SELECT tableoid::regclass::text, COUNT(*) FROM readings GROUP BY 1 ORDER BY 1")
        assert got == [(partition_name(day - 1), 3), (partition_name(day), 6)]
        store.conn.execute("SET enable_seqscan = off")  # the tables are tiny: ask which plan the index gives
        one_day = store.query("EXPLAIN SELECT t, v FROM records WHERE gw = ? AND n = ? AND t >= ? AND t < ?",
                              (GW, GW + "/s1/temp", day * DAY, (day + 1) * DAY))
        plan = "\n".join(r[0] for r in one_day)
        assert partition_name(day) in plan and partition_name(day - 1) not in plan  # pruned to one partition
        # through the view: the sensor by its unique (gw, n), then a nested loop into (sid, t)
        assert "Nested Loop" in plan and "sensors_by_gw_name" in plan and "sid_t_idx" in plan, plan
        last_hour = "\n".join(r[0] for r in store.query(
            "EXPLAIN SELECT * FROM records WHERE gw = ? AND t >= ?", (GW, NOW - 3600)))
        assert "Nested Loop" in last_hour and "sensors_by_gw_name" in last_hour and "sid_t_idx" in last_hour
        assert "Seq Scan" not in plan + last_hour and partition_name(day - 1) not in last_hour, last_hour
    finally:
        rx.close()


# -- retention ----------------------------------------------------------------------------------------------------
def test_retention_drops_old_partitions_whole_and_keeps_new_data(pg_url, two_gw_trust, signing_key):
    now = [NOW - 5 * DAY]
    rx = Receiver(pg_url + "?retention_days=3", two_gw_trust, clock=lambda: now[0])
    try:
        old_day = int(now[0] // DAY)
        assert rx.process(batch(signing_key, 1, t0=now[0]))[0] == 201  # five days ago, on its own day
        # a gateway with a clock a week ahead: its readings wait in the default partition
        assert rx.process(batch(signing_key, 2, t0=NOW + 2 * DAY))[0] == 201
        store = rx._store
        assert old_day in store.partitions()
        assert store.query("SELECT COUNT(*) FROM readings_other") == [(3,)]
        now[0] = NOW  # five days later
        assert rx.process(batch(signing_key, 3, t0=NOW))[0] == 201
        parts = store.partitions()
        assert old_day not in parts and min(parts) >= NOW // DAY - 3  # dropped whole
        assert store.query("SELECT seq, COUNT(*) FROM records GROUP BY seq ORDER BY seq") == [(2, 3), (3, 3)]
        # the readings from ahead moved out of the default partition once their day came into the window
        assert store.query("SELECT COUNT(*) FROM readings_other") == [(0,)]
        assert store.query("SELECT DISTINCT tableoid::regclass::text FROM readings WHERE seq = 2") == [
            (partition_name(int((NOW + 2 * DAY) // DAY)),)]
        # the dedup memory stays: the old batch is still a duplicate, not stored again
        assert rx.process(batch(signing_key, 1, t0=NOW - 5 * DAY))[0] == 200
        assert store.drop_expired(NOW) == []  # nothing more to drop
    finally:
        rx.close()


def test_retention_days_must_be_a_whole_number(pg_url, two_gw_trust):
    for bad in ("0", "x", "1.5"):
        with pytest.raises(ValueError, match="retention_days"):
            Receiver(pg_url + "?retention_days=" + bad, two_gw_trust)


# -- a receiver process killed mid-stream -------------------------------------------------------------------------
def test_a_receiver_killed_mid_stream_loses_no_acknowledged_batch(pg_url, tmp_path, signing_key):
    jwks = tmp_path / "trust.jwks"
    jwks.write_text(json.dumps({"keys": [signing_key.jwk(GW)]}))
    port = reserve_port()
    argv = ["edge-gateway", "receive", "--listen", "127.0.0.1:%d" % port, "--trust", str(jwks), "--db", pg_url,
            "--log-level", "warning"]
    url = "http://127.0.0.1:%d/v1/batches" % port
    batches = [batch(signing_key, seq, values=tuple(float(seq * 10 + i) for i in range(20)), t0=NOW + seq)
               for seq in range(1, 401)]
    acked, sent = set(), []
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, timeout=30, what="edge-gateway receive", alive=lambda: proc.poll() is None)

        def stream():
            for seq, data in enumerate(batches, start=1):
                sent.append(seq)
                try:
                    status = post(url, data, timeout=10)[0]
                except (OSError, http.client.HTTPException):
                    return  # the receiver is gone
                if status == 201:
                    acked.add(seq)
        poster = threading.Thread(target=stream, daemon=True)
        poster.start()
        wait_until(lambda: len(acked) >= 40, timeout=60, what="40 acknowledged batches")
        proc.send_signal(signal.SIGKILL)  # mid-stream: the poster is sending
        proc.wait(timeout=10)
        poster.join(timeout=30)
        assert not poster.is_alive()
        assert 40 <= len(acked) < len(batches)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    with psycopg.connect(pg_url) as conn:
        stored = dict(conn.execute("SELECT seq, records FROM batches").fetchall())
        counts = dict(conn.execute("SELECT seq, COUNT(*) FROM records GROUP BY seq").fetchall())
    assert acked <= set(stored), "acknowledged but not stored: %s" % sorted(acked - set(stored))
    assert all(stored[s] == counts.get(s) == 20 for s in stored)  # no half-stored batch
    assert set(stored) <= set(sent)
    # a restarted receiver takes the rest; what was committed but not acknowledged is a duplicate
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, timeout=30, what="edge-gateway receive (restarted)", alive=lambda: proc.poll() is None)
        for seq, data in enumerate(batches, start=1):
            if seq not in acked:
                assert post(url, data)[0] == (200 if seq in stored else 201)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT seq) FROM records").fetchone() == (8000, 400)
