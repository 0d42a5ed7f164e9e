"""The reference receiver's PostgreSQL storage (``backend.storage.Storage``), for a fleet: ``--db postgresql://...``.

The same promises as the SQLite storage (``backend.storage``): a batch is one transaction and ``store`` returns
after its COMMIT; ``(gw, boot, seq)`` is the primary key of ``batches`` and the insert is ``ON CONFLICT DO
NOTHING``, so two receivers racing on one batch store it once, and the loser compares digests (duplicate or
conflict). psycopg's errors become ``StorageError`` here (the receiver answers 503, the gateway retries); a broken
connection is reopened at the next batch.

Readings go to ``readings`` (schema 6), keyed by an integer sensor id ``sid`` from the dictionary ``sensors (id,
gw, n)``; ``records`` is a view with the columns of every earlier version (``readings JOIN sensors``), so queries
written for it keep working. ``store_many`` maps ``(gw, n)`` to ``sid`` through a bounded in-process cache
(``_sensor_ids``). ``readings`` is partitioned by day on ``t`` (declarative range partitions
``readings_YYYYMMDD``, ``[day, day + 1)`` in Unix seconds). A day's partition is created when a batch first needs
it, and the next ``AHEAD_DAYS`` days are created ahead, each in its own short transaction before the batch's. Times
outside the window a partition may be made for (older than the retention, or more than ``AHEAD_DAYS`` ahead of the
receiver's clock: a gateway whose clock is wrong) go to the default partition ``readings_other``, so a bad clock
cannot make thousands of tables; when the window reaches such a day, its rows move from the default partition into
the new one in the same transaction. Retention (``retention_days``) drops whole day partitions; rows of the default
partition older than the retention are deleted by row (they are the exception).

Indexes: ``sensors_by_gw_name (gw, n)`` (unique: the id of a name, and a gateway's names) and ``readings (sid,
t)``, declared on the parent, so every partition has it. "One sensor over a day" through the view is a seek of the
first and a range of the second; version 6 replaced the two text indexes ``(gw, n, t)`` and ``(gw, t)`` of every
reading by this one (docs/performance.md, "The backend at fleet scale").
"""

import contextlib
import datetime
import logging
import urllib.parse
from decimal import Decimal, InvalidOperation

import psycopg

from backend.command_queue import outcome_rows, record_outcomes
from backend.storage import (CONFLICT, CONFLICT_REASON, DUPLICATE, STORED, Storage, StorageError, UnstorableError,
                             batch_rows, redact)

log = logging.getLogger(__name__)

DAY = 86400
EPOCH = datetime.date(1970, 1, 1)
#: day partitions made ahead of the receiver's clock (and the furthest ahead a reading gets its own partition)
AHEAD_DAYS = 2
#: without a retention, the oldest day that gets its own partition (2000-01-01): older times go to the default
OLDEST_DAY = 10957
#: an advisory lock key (any constant): schema migration and partition changes of all receivers take turns
LOCK_KEY = 0x6564676567770001

#: ``(version, statements)``, applied in order in one transaction at open (``schema_version`` records them)
MIGRATIONS = (
    (1, ("""CREATE TABLE batches (
            gw text NOT NULL, boot bigint NOT NULL, seq bigint NOT NULL, kid text NOT NULL, clock smallint NOT NULL,
            anchor_mono double precision, anchor_wall double precision, received double precision NOT NULL,
            records integer NOT NULL, digest bytea, PRIMARY KEY (gw, boot, seq))""",
         """CREATE TABLE records (
            gw text NOT NULL, boot bigint NOT NULL, seq bigint NOT NULL, n text NOT NULL, t double precision NOT NULL,
            u text, v double precision, vs text, vb smallint) PARTITION BY RANGE (t)""",
         "CREATE TABLE records_other PARTITION OF records DEFAULT",
         "CREATE INDEX records_by_name ON records (n, t)",
         "CREATE INDEX records_by_gw ON records (gw, t)",
         """CREATE TABLE conflicts (
            id bigserial PRIMARY KEY, gw text NOT NULL, boot bigint NOT NULL, seq bigint NOT NULL, kid text NOT NULL,
            received double precision NOT NULL, reason text NOT NULL, digest bytea NOT NULL, data bytea NOT NULL,
            UNIQUE (gw, boot, seq, digest))""")),
    # wire format 2: the exact decimal of each value ("21.50" keeps its scale in numeric), beside the double in v
    (2, ("ALTER TABLE records ADD COLUMN v_exact numeric",)),
    # the command queue and the commands' outcomes (backend.command_queue)
    (3, ("""CREATE TABLE commands (
            gw text NOT NULL, kid text NOT NULL, op_seq bigint NOT NULL, digest text NOT NULL, exp bigint NOT NULL,
            action text NOT NULL, data bytea NOT NULL, queued double precision NOT NULL, handed integer NOT NULL,
            last_handed double precision, state text NOT NULL, outcome text, done double precision,
            PRIMARY KEY (gw, kid, op_seq))""",
         "CREATE INDEX commands_by_state ON commands (gw, state)",
         "CREATE INDEX commands_by_digest ON commands (gw, digest)",
         """CREATE TABLE command_outcomes (
            gw text NOT NULL, op_seq bigint, kid text, digest text, state text NOT NULL, text text NOT NULL,
            t double precision, received double precision NOT NULL, boot bigint NOT NULL, seq bigint NOT NULL)""",
         "CREATE INDEX command_outcomes_by_gw ON command_outcomes (gw, received)")),
    # the read API (backend.readapi): a gateway's names and each name's newest record, a gateway's last batch
    (4, ("CREATE INDEX records_by_gw_name ON records (gw, n, t)",
         "CREATE INDEX batches_by_received ON batches (gw, received)")),
    # ingest at fleet scale: every query names the gateway, so (gw, n, t) serves "one sensor over a day" and
    # (n, t) was a third index written per reading for nothing (docs/performance.md, "The backend at fleet scale")
    (5, ("DROP INDEX IF EXISTS records_by_name",)),
    # a sensor dictionary: readings keyed by an integer sensor id with one index (sid, t), about 2 us of server CPU
    # a reading less than two text indexes, half the bytes; ``records`` becomes a view with the old columns
    # (docs/performance.md, "The backend at fleet scale"). The day partitions of ``records`` get their twins in
    # ``readings`` (same bounds), the rows move over, then ``records`` is dropped and made the view.
    (6, ("""CREATE TABLE sensors (
            id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, gw text NOT NULL, n text NOT NULL,
            CONSTRAINT sensors_by_gw_name UNIQUE (gw, n))""",
         """CREATE TABLE readings (
            sid integer NOT NULL, boot bigint NOT NULL, seq bigint NOT NULL, t double precision NOT NULL,
            u text, v double precision, vs text, vb smallint, v_exact numeric) PARTITION BY RANGE (t)""",
         "CREATE TABLE readings_other PARTITION OF readings DEFAULT",
         "CREATE INDEX readings_by_sid ON readings (sid, t)",
         """DO $$ DECLARE p record; BEGIN
              FOR p IN SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i
                       JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class r ON r.oid = i.inhparent
                       WHERE r.relname = 'records' AND c.relname ~ '^records_[0-9]{8}$' LOOP
                EXECUTE format('CREATE TABLE %I PARTITION OF readings %s', 'readings_' || substr(p.relname, 9),
                               p.bound);
              END LOOP; END $$""",
         "INSERT INTO sensors (gw, n) SELECT DISTINCT gw, n FROM records ORDER BY gw, n",
         """INSERT INTO readings (sid, boot, seq, t, u, v, vs, vb, v_exact)
            SELECT s.id, r.boot, r.seq, r.t, r.u, r.v, r.vs, r.vb, r.v_exact FROM records r
            JOIN sensors s ON s.gw = r.gw AND s.n = r.n""",
         "DROP TABLE records",
         """CREATE VIEW records AS SELECT s.gw, r.boot, r.seq, s.n, r.t, r.u, r.v, r.vs, r.vb, r.v_exact
            FROM readings r JOIN sensors s ON s.id = r.sid""")),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def partition_name(day):
    """``readings_YYYYMMDD`` for a day number (days since 1970-01-01)."""
    return "readings_" + (EPOCH + datetime.timedelta(days=day)).strftime("%Y%m%d")


def _placeholders(conn):
    """``execute(sql, args)`` with ``?`` placeholders (``backend.command_queue``'s SQL has no literal ``%``)."""
    return lambda sql, args=(): conn.execute(sql.replace("?", "%s"), args)


#: a group of batches (``store_many``): their ``batches`` rows, then the records of those whose row was new (the
#: key the INSERT returned), every column passed as one array and unnested: one statement, one round trip, for the
#: whole group. Returns the keys inserted; a key already there (a duplicate, a conflict) returns nothing.
INSERT_GROUP = """WITH b AS (
    INSERT INTO batches (gw, boot, seq, kid, clock, anchor_mono, anchor_wall, received, records, digest)
    SELECT * FROM unnest(%b::text[], %b::int8[], %b::int8[], %b::text[], %b::int2[], %b::float8[], %b::float8[],
                         %b::float8[], %b::int4[], %b::bytea[])
    ON CONFLICT (gw, boot, seq) DO NOTHING RETURNING gw, boot, seq),
  r AS (
    INSERT INTO readings (sid, boot, seq, t, u, v, vs, vb, v_exact)
    SELECT x.sid, x.boot, x.seq, x.t, x.u, x.v, x.vs, x.vb, x.v_exact::numeric
    FROM unnest(%b::text[], %b::int8[], %b::int8[], %b::int4[], %b::float8[], %b::text[], %b::float8[], %b::text[],
                %b::int2[], %b::text[]) AS x (gw, boot, seq, sid, t, u, v, vs, vb, v_exact)
    JOIN b ON b.gw = x.gw AND b.boot = x.boot AND b.seq = x.seq)
SELECT gw, boot, seq FROM b"""


#: a group of at least this many batches goes in by ``INSERT_BATCHES`` and a COPY of the records (fewer round
#: trips pay off from here); smaller ones by the one statement ``INSERT_GROUP``
COPY_MIN = 4
#: the ``batches`` rows of a group (the records follow by COPY, ``COPY_RECORDS``); returns the keys inserted
INSERT_BATCHES = """INSERT INTO batches (gw, boot, seq, kid, clock, anchor_mono, anchor_wall, received, records, digest)
    SELECT * FROM unnest(%b::text[], %b::int8[], %b::int8[], %b::text[], %b::int2[], %b::float8[], %b::float8[],
                         %b::float8[], %b::int4[], %b::bytea[])
    ON CONFLICT (gw, boot, seq) DO NOTHING RETURNING gw, boot, seq"""
#: binary format: numbers go as their bytes, not as text the server parses back (``v_exact`` as a ``Decimal``,
#: which keeps the scale: "21.50" stays 21.50). Against text COPY, measured on 200,000 rows of 100-record batches:
#: server 2.2 instead of 2.5 us a row, client 1.6 instead of 1.7 (the Decimal costs about what the escaping saved)
COPY_RECORDS = "COPY readings (sid, boot, seq, t, u, v, vs, vb, v_exact) FROM STDIN (FORMAT BINARY)"
COPY_TYPES = ("int4", "int8", "int8", "float8", "text", "float8", "text", "int2", "numeric")

#: the sensor dictionary: the names of a group not in the cache, inserted sorted (two workers adding the same new
#: names never wait on each other in a cycle) in their own autocommit statement; then their ids are read by a second
#: statement, whose snapshot sees the rows another worker committed while this INSERT waited on them
INSERT_SENSORS = """INSERT INTO sensors (gw, n) SELECT * FROM unnest(%b::text[], %b::text[]) AS x (gw, n)
    ORDER BY gw, n ON CONFLICT (gw, n) DO NOTHING"""
SELECT_SENSORS = """SELECT s.id, s.gw, s.n FROM sensors s JOIN unnest(%b::text[], %b::text[]) AS x (gw, n)
    ON s.gw = x.gw AND s.n = x.n"""
#: the most ``(gw, n) -> sid`` pairs a worker keeps in memory (a dict entry and the name each); past it the cache
#: starts over
SID_CACHE = 100_000


def _float(x):
    return None if x is None else float(x)


def _group_args(group, received, sids=None):
    """The parameters of ``INSERT_GROUP`` (``INSERT_BATCHES`` without ``sids``) for the group's entries
    ``(index, head, meta, rows, ...)``: one list per column, numbers as floats where the column is ``double
    precision`` (psycopg wants one type per array), the name replaced by its sensor id (``sids[gw][n]``)."""
    records = sids is not None
    batch_cols = [[] for _ in range(10)]
    record_cols = [[] for _ in range(10)]
    for _, head, meta, rows, digest, _, _ in group:
        for col, value in zip(batch_cols, head + meta + (received, len(rows), digest)):
            col.append(value)
        if rows and records:
            for col, values in zip(record_cols, zip(*rows)):
                col.extend(values)
    for cols, floats in ((batch_cols, (5, 6, 7)), (record_cols, (4, 6))):
        for k in floats:
            cols[k] = [_float(x) for x in cols[k]]
    if records:
        record_cols[3] = [sids[gw][n] for gw, n in zip(record_cols[0], record_cols[3])]
    return batch_cols + record_cols if records else batch_cols


def _no_nul(rows):
    """PostgreSQL text cannot hold U+0000 (SQLite can): such a batch is unstorable here, before the transaction."""
    for i, row in enumerate(rows):
        for value in (row[0], row[3], row[5], row[7]):
            if value is not None and "\0" in value:
                raise UnstorableError("record %d: text holds U+0000, which PostgreSQL cannot store" % i)


class PostgresStorage(Storage):
    """One psycopg connection (autocommit; explicit transactions). Not thread-safe: the caller locks."""

    engine = "postgresql"

    def __init__(self, conninfo, retention_days=None, connect_timeout=5.0):
        if retention_days is not None and (retention_days.__class__ is not int or retention_days < 1):
            raise ValueError("retention_days must be a whole number of days >= 1, not %r" % (retention_days,))
        self.conninfo = conninfo
        self.retention_days = retention_days
        self.connect_timeout = max(1, int(connect_timeout + 0.999))
        self.name = redact(conninfo)
        self._partitions = set()  # days known to have a partition (a cache; the catalog is the truth)
        self._sids = {}  # {gw: {n: sid}}: the sensor dictionary's rows this worker has seen (ids never change)
        self._sid_count = 0
        self._maintained_day = None
        self.conn = None
        try:
            self._connect()
            self.migrate()
        except psycopg.Error as exc:
            self.close()
            raise StorageError("cannot open %s: %s" % (self.name, exc)) from exc
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_target(cls, url, timeout=5.0):
        """``postgresql://user@host:port/db?retention_days=N``: the one setting that is ours is taken out of the
        query; the rest goes to libpq as it is."""
        u = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(u.query, keep_blank_values=True)
        retention = [v for k, v in query if k == "retention_days"]
        rest = [(k, v) for k, v in query if k != "retention_days"]
        days = None
        if retention:
            if not retention[-1].isascii() or not retention[-1].isdigit():
                raise ValueError("retention_days must be a whole number of days, not %r" % retention[-1][:20])
            days = int(retention[-1])
        return cls(urllib.parse.urlunsplit(u._replace(query=urllib.parse.urlencode(rest))), days, timeout)

    # -- connection -----------------------------------------------------------------------------------------------
    def _connect(self):
        self.conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=self.connect_timeout)

    def _usable(self):
        """The connection, reopened when the last one broke (a restarted server, a dropped link)."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            if self.conn is not None:
                self.conn.close()
            self._connect()
            self._partitions.clear()
            self._sids.clear()
            self._sid_count = 0
        return self.conn

    # -- schema ---------------------------------------------------------------------------------------------------
    def schema_version(self):
        row = self.conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        return row[0]

    def migrate(self):
        """Bring the schema to ``SCHEMA_VERSION`` (one transaction, under the advisory lock: receivers starting
        together migrate once)."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            self.conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                              "applied timestamptz NOT NULL DEFAULT now())")
            current = self.schema_version()
            if current > SCHEMA_VERSION:
                raise StorageError("%s has schema version %d; this receiver knows up to %d (upgrade the receiver)"
                                   % (self.name, current, SCHEMA_VERSION))
            for version, statements in MIGRATIONS:
                if version > current:
                    for statement in statements:
                        self.conn.execute(statement)
                    self.conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                    log.info("receiver database %s: schema version %d", self.name, version)

    # -- partitions -----------------------------------------------------------------------------------------------
    def partitions(self):
        """The days that have a partition, sorted (from the catalog)."""
        rows = self._usable().execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'readings' AND c.relname ~ '^readings_[0-9]{8}$'"
        ).fetchall()
        return sorted((datetime.datetime.strptime(name[9:], "%Y%m%d").date() - EPOCH).days for (name,) in rows)

    def _window(self, now):
        """The days ``[first, last]`` that may have their own partition at the receiver's time ``now``."""
        today = int(now // DAY)
        first = today - self.retention_days if self.retention_days else OLDEST_DAY
        return first, today + AHEAD_DAYS

    def _ensure(self, days):
        """Create the partitions of ``days`` that are missing, each with the rows the default partition holds for
        it moved in (a day that was ahead of the window when they came)."""
        missing = [d for d in sorted(days) if d not in self._partitions]
        if not missing:
            return
        conn = self._usable()
        for day in missing:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                name = partition_name(day)
                if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None:
                    lo, hi = day * DAY, (day + 1) * DAY
                    conn.execute("CREATE TEMP TABLE moving ON COMMIT DROP AS WITH m AS (DELETE FROM readings_other "
                                 "WHERE t >= %s AND t < %s RETURNING *) SELECT * FROM m" % (lo, hi))
                    conn.execute("CREATE TABLE %s PARTITION OF readings FOR VALUES FROM (%d) TO (%d)"
                                 % (name, lo, hi))
                    moved = conn.execute("INSERT INTO readings SELECT * FROM moving").rowcount
                    log.info("receiver database %s: partition %s created (%d rows moved in)", self.name, name,
                             moved)
            self._partitions.add(day)

    def maintain(self, now):
        """Create today's and the next ``AHEAD_DAYS`` days' partitions and apply the retention. Runs at the first
        batch of each day of the receiver's clock; returns the partitions dropped."""
        first, last = self._window(now)
        self._ensure(range(int(now // DAY), last + 1))
        dropped = self.drop_expired(now) if self.retention_days else []
        self._maintained_day = int(now // DAY)
        return dropped

    def drop_expired(self, now):
        """Retention: drop the day partitions wholly older than ``retention_days`` before ``now`` (no row deletes),
        and delete the default partition's rows that old. Returns the names dropped."""
        if not self.retention_days:
            return []
        first, _ = self._window(now)
        conn = self._usable()
        dropped = []
        try:
            for day in self.partitions():
                if day < first:
                    name = partition_name(day)
                    with conn.transaction():
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                        conn.execute("DROP TABLE IF EXISTS %s" % name)
                    self._partitions.discard(day)
                    dropped.append(name)
            conn.execute("DELETE FROM readings_other WHERE t < %s", (first * DAY,))
        except psycopg.Error as exc:
            raise StorageError("%s: retention failed: %s" % (self.name, exc)) from exc
        if dropped:
            log.info("receiver database %s: retention %d days dropped %s", self.name, self.retention_days,
                     ", ".join(dropped))
        return dropped

    # -- the role -------------------------------------------------------------------------------------------------
    def store(self, batch, digest, data, received):
        (result,) = self.store_many([(batch, digest, data)], received)
        if isinstance(result, UnstorableError):
            raise result
        return result

    def store_many(self, items, received):
        """Group commit, one transaction: the batch rows of ``items``, the records of those that were new, the
        command outcomes they carry, and the duplicate/conflict check of the others. From ``COPY_MIN`` batches the
        records go in by COPY (``INSERT_BATCHES``, then ``COPY_RECORDS``: about a third less CPU a record, on
        either side, than the array statement); a smaller group is one statement (``INSERT_GROUP``), in
        autocommit when it has no outcomes or repeats. Keys are inserted in sorted order, so two workers' groups
        never wait on each other in a cycle."""
        results = [None] * len(items)
        group, later, seen = [], [], set()  # later: a key that is already earlier in this group
        for i, (batch, digest, data) in enumerate(items):
            try:
                head, meta, rows = batch_rows(batch)
                _no_nul(rows)
            except UnstorableError as exc:
                results[i] = exc
                continue
            (later if head in seen else group).append((i, head, meta, rows, digest, data, outcome_rows(batch)))
            seen.add(head)
        if not group:
            return results
        group.sort(key=lambda entry: entry[1])
        try:
            conn = self._usable()
            if self._maintained_day != int(received // DAY):
                self.maintain(received)
            first, last = self._window(received)
            self._ensure({int(r[4] // DAY) for entry in group for r in entry[3] if first <= r[4] // DAY <= last})
            sids = self._sensor_ids(conn, group)
            if len(group) >= COPY_MIN:
                with conn.transaction():
                    inserted = self._insert_group(conn, _group_args(group, received), INSERT_BATCHES)
                    with conn.cursor().copy(COPY_RECORDS) as copy:
                        copy.set_types(COPY_TYPES)
                        write = copy.write_row
                        for _, head, _, rows, _, _, _ in group:
                            if head in inserted:
                                ids = sids[head[0]]
                                for r in rows:
                                    e = r[9]
                                    write((ids[r[3]], r[1], r[2], r[4], r[5], r[6], r[7], r[8],
                                           None if e is None else Decimal(e)))
                    self._settle(conn, group, later, inserted, received, results)
                return results
            args = _group_args(group, received, sids)
            if later or any(entry[6] for entry in group):
                with conn.transaction():
                    self._settle(conn, group, later, self._insert_group(conn, args), received, results)
            else:
                inserted = self._insert_group(conn, args)
                if len(inserted) == len(group):
                    for i, _, _, rows, _, _, _ in group:
                        results[i] = (STORED, len(rows))
                else:
                    with conn.transaction():
                        self._settle(conn, group, later, inserted, received, results)
        except (psycopg.Error, InvalidOperation) as exc:  # InvalidOperation: a v_exact no decimal (binary COPY)
            raise StorageError("receiver database %s: %s" % (self.name, exc)) from exc
        return results

    def _sensor_ids(self, conn, group):
        """``{gw: {n: sid}}`` covering every name of the group's records: from the cache, and the names it lacks
        inserted into ``sensors`` (``INSERT_SENSORS``, committed at once, outside the group's transaction: a
        sensor row without readings is harmless) and read back (``SELECT_SENSORS``)."""
        if self._sid_count >= SID_CACHE:
            self._sids.clear()
            self._sid_count = 0
        cache = self._sids
        missing = set()
        for entry in group:
            gw = entry[1][0]
            known = cache.get(gw)
            if known is None:
                known = cache[gw] = {}
            for r in entry[3]:
                if r[3] not in known:
                    missing.add((gw, r[3]))
        if missing:
            gws, names = map(list, zip(*sorted(missing)))
            conn.execute(INSERT_SENSORS, (gws, names), prepare=True)
            for sid, gw, n in conn.execute(SELECT_SENSORS, (gws, names), prepare=True).fetchall():
                cache[gw][n] = sid
                self._sid_count += 1
            lost = [key for key in missing if key[1] not in cache[key[0]]]
            if lost:  # only if someone deleted them in between
                raise StorageError("receiver database %s: the sensor %s of %s vanished from table sensors"
                                   % (self.name, lost[0][1], lost[0][0]))
        return cache

    @staticmethod
    def _insert_group(conn, args, sql=INSERT_GROUP):
        return {tuple(key) for key in conn.execute(sql, args, prepare=True).fetchall()}

    def _settle(self, conn, group, later, inserted, received, results):
        """Inside the group's transaction: record the outcomes of the batches inserted; for the others, compare
        digests with the stored batch (duplicate) or keep the new bytes apart (conflict)."""
        for i, head, meta, rows, digest, data, outcomes in group:
            if head in inserted:
                results[i] = (STORED, len(rows))
                if outcomes:
                    record_outcomes(_placeholders(conn), outcomes, head, received)
            else:
                results[i] = (self._known(conn, head, meta, digest, data, received), len(rows))
        for i, head, meta, rows, digest, data, _ in later:
            results[i] = (self._known(conn, head, meta, digest, data, received), len(rows))

    @staticmethod
    def _known(conn, head, meta, digest, data, received):
        known = conn.execute("SELECT digest FROM batches WHERE gw = %s AND boot = %s AND seq = %s", head).fetchone()
        if known[0] is None or bytes(known[0]) == digest:
            return DUPLICATE
        conn.execute("INSERT INTO conflicts (gw, boot, seq, kid, received, reason, digest, data) "
                     "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                     head + (meta[0], received, CONFLICT_REASON, digest, bytes(data)))
        return CONFLICT

    @contextlib.contextmanager
    def transaction(self):
        try:
            conn = self._usable()
            with conn.transaction():
                yield _placeholders(conn)
        except psycopg.Error as exc:
            raise StorageError("receiver database %s: %s" % (self.name, exc)) from exc

    def stats(self):
        return {"engine": self.engine, "schema_version": SCHEMA_VERSION, "partitions": len(self._partitions),
                "retention_days": self.retention_days}

    def query(self, sql, args=()):
        """Rows for tests: ``?`` placeholders, as with SQLite (a literal ``%`` is fine)."""
        conn = self._usable()
        if not args:  # no parameters: psycopg leaves the text alone
            return [tuple(r) for r in conn.execute(sql).fetchall()]
        return [tuple(r) for r in conn.execute(sql.replace("%", "%%").replace("?", "%s"), args).fetchall()]

    # -- the read side: the shared SQL of ``Storage``, and the names found in the partitions of the window only --
    BUCKET = "FLOOR((t - ?) / ?)"

    def _rows(self, sql, args=()):
        try:
            return self.query(sql, args)
        except psycopg.Error as exc:
            raise StorageError("receiver database %s: %s" % (self.name, exc)) from exc

    #: one name's readings: its sensor id looked up once (an InitPlan on ``sensors_by_gw_name``), then a range of
    #: ``readings_by_sid (sid, t)`` that keeps its order (through the view, ``ORDER BY t LIMIT`` would sort)
    ONE_NAME = "readings WHERE sid = (SELECT id FROM sensors WHERE gw = ? AND n = ?)"

    def latest_time(self, gw):
        """As ``Storage.latest_time``: the newest time of each of the gateway's sensors (a backward seek on
        ``(sid, t)`` each), not a scan of the gateway's readings through the view."""
        return self._rows("SELECT MAX(m) FROM sensors s CROSS JOIN LATERAL (SELECT MAX(t) AS m FROM readings r "
                          "WHERE r.sid = s.id) x WHERE s.gw = ?", (gw,))[0][0]

    def names(self, gw, since, limit):
        """As ``Storage.names``: the gateway's sensors in name order (``sensors_by_gw_name``), each kept if it has
        a reading (at ``t >= since``: a seek in the day partitions from ``since`` on, pruned by the planner)."""
        bound = "" if since is None else " AND r.t >= ?"
        return [n for (n,) in self._rows(
            "SELECT n FROM sensors s WHERE s.gw = ? AND EXISTS (SELECT 1 FROM readings r WHERE r.sid = s.id%s) "
            "ORDER BY n LIMIT ?" % bound, (gw,) + (() if since is None else (since,)) + (int(limit),))]

    def close(self):
        if self.conn is not None:
            self.conn.close()
