"""The durable queue: signed batches in SQLite (WAL), deleted only when the upstream acknowledges them.

Semantics (``docs/wire-format.md`` and ``docs/operations.md`` say the same for users):

* A batch is **accepted** when ``put`` returns: it was signed before, so what is on disk is the bytes on the
  wire, deflated with zlib when that is smaller (~4x less to write to an SD card; ``pending`` gives back the
  signed bytes bit for bit, and a blob damaged on disk is quarantined, never sent). With ``sync_interval=0`` the
  commit ran with ``synchronous=FULL`` in WAL mode (one fsync of the WAL per commit). With ``sync_interval`` > 0
  it ran with ``synchronous=NORMAL``: it reached the OS, so a killed process loses nothing, and ``sync`` (one
  fsync of the WAL) makes it survive a power cut; ``sync_due`` says when a batch still queued has waited
  ``sync_interval`` seconds for that (a batch acknowledged meanwhile needs no fsync at all: the upstream has it). The agent commits every batch waiting for the disk in one transaction (group commit), and batches are cut every
  ``batch.max_age_s`` seconds or ``batch.max_readings`` readings, so fsyncs are batched by construction;
  ``fsyncs`` counts them (commits, plus two per checkpoint). The WAL is checkpointed and truncated by us once it
  holds ``checkpoint_pages`` pages, which bounds it on disk (``docs/store-and-forward.md``).
* The queue is bounded by bytes (the signed batches' sizes; the files add a documented slack) and by age (only
  with a plausible wall clock, see ``_expire``). Making room drops the oldest non-alarm batches first; alarms go only
  when nothing else is left. Every drop is counted in ``meta`` in the same transaction, so the counters survive
  restarts and the agent reports them upstream in its health records.
* ``pending`` yields alarms first, then the rest oldest first. ``ack`` deletes; ``quarantine`` moves a batch the
  upstream rejected (4xx) aside, where it neither blocks the queue nor is lost; ``requeue_due`` gives it a bounded
  number of automatic retries (``RETRY_DELAYS``), ``requeue_quarantined`` sends them all again by hand.
* The boot epoch (``gateway.adapters.boot_epoch``) is a start counter with 32 random bits, persisted in ``meta`` and in
  ``<name>.boot`` beside the queue, so it never repeats even when the queue is lost. ``seq`` restarts at 0 in every
  boot epoch, so the hot path writes no metadata.
* A database that does not open as SQLite, or fails ``PRAGMA quick_check``, is renamed to
  ``<name>.corrupt-<n>`` (kept for the operator) and a new one is created; every batch SQLite can still read is
  salvaged into it (``gateway.adapters.store_salvage``, counted ``salvaged_batches``/``lost_batches``); ``recovered_from``
  and ``salvage`` say so and the agent reports it.
"""

import logging
import os
import sqlite3
import threading
import zlib

from gateway.adapters import boot_epoch
from gateway.adapters import store_salvage
from gateway.adapters.store_bounds import SANE_WALL, QueueBounds  # noqa: F401 (SANE_WALL: part of this module's API)
from gateway.adapters.store_durability import Durability
from gateway.adapters.store_quarantine import Quarantine
from gateway.core.clock import SystemClock
from gateway.core.errors import StoreError
from gateway.core.model import EncodedBatch, StoreSnapshot
from gateway.adapters.store_errors import classify as _classify, store_error as _store_error

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prio INTEGER NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
    created REAL NOT NULL, readings INTEGER NOT NULL, events INTEGER NOT NULL,
    data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS batches_alarm ON batches (prio) WHERE prio > 0;
CREATE TABLE IF NOT EXISTS retries (
    boot INTEGER NOT NULL, seq INTEGER NOT NULL, attempts INTEGER NOT NULL,
    PRIMARY KEY (boot, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, prio INTEGER NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
    created REAL NOT NULL, readings INTEGER NOT NULL, events INTEGER NOT NULL, data BLOB NOT NULL,
    reason TEXT NOT NULL, at REAL NOT NULL);
"""

COUNTERS = ("dropped_batches", "dropped_readings", "dropped_alarm_batches", "expired_batches", "quarantined",
            "conflict_batches", "poison_batches", "salvaged_batches", "lost_batches")
SESSION_COUNTERS = ("acked_batches", "acked_readings", "accepted_batches", "accepted_readings")
_COLUMNS = "id, prio, boot, seq, created, readings, events, data"
_ZLIB = b"\x78"  # a zlib stream's first byte; a stored COSE batch starts with 0xd2 (tag 18)


def _deflate(data):
    """What goes into the ``data`` column: the signed batch, deflated when that is smaller (it nearly always is:
    ~0.25x for a batch of 1,000 readings, at ~0.1 us per reading)."""
    packed = zlib.compress(data, 1)
    return packed if len(packed) < len(data) else data


def _inflate(blob):
    """The exact signed bytes back; raises ``zlib.error`` if a deflated blob was damaged on disk."""
    return zlib.decompress(blob) if blob[:1] == _ZLIB else blob
log = logging.getLogger(__name__)




class Store(QueueBounds, Quarantine, Durability):
    # 1 KiB pages: a batch of ~1,000 readings (~9 KB) fills its overflow pages to ~90 %, and an ack rewrites two
    # small pages instead of two 4 KiB ones. Measured: disk bytes per accepted reading fall from ~6x the wire
    # bytes (4 KiB pages, counters written per commit) to ~1.5x (docs/performance.md). Applies to new stores.
    def __init__(self, path, max_bytes=64 << 20, max_age=30 * 86400.0, clock=None, page_size=1024,
                 checkpoint_pages=1000, expire_every=60.0, random_bytes=os.urandom, sync_interval=0.0):
        self.path = os.fspath(path)
        self.boot_path = self.path + boot_epoch.SUFFIX
        self._random_bytes = random_bytes
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.clock = clock or SystemClock()
        self.recovered_from = None
        self.salvage = None  # a store_salvage.Salvage report when a corrupt queue was salvaged at this start
        self.fsyncs = 0
        self.syncs = 0  # fsyncs by ``sync`` (the power-cut window), part of ``fsyncs``
        self.sync_interval = sync_interval
        self._unsynced = {}  # store id -> monotonic time of its commit, while queued and not yet fsynced
        self.commits = 0
        self._lock = threading.RLock()
        self._checkpoint_pages = checkpoint_pages
        self._wal_pages = 0
        self._expire_every = expire_every
        self._next_expiry = None
        self.checkpoints = 0
        self._page_size = page_size
        self.session = dict.fromkeys(SESSION_COUNTERS, 0)
        try:
            self._db = self._open(page_size)
        except sqlite3.DatabaseError as exc:
            if _classify(exc) != "corrupt":
                raise _store_error("open", self.path, exc) from exc
            self.recovered_from = self._move_aside()
            try:
                self._db = self._open(page_size)
            except sqlite3.DatabaseError as exc2:
                raise _store_error("recreate", self.path, exc2) from exc2
            self._salvage()
        self._page_size = self._db.execute("PRAGMA page_size").fetchone()[0]  # an existing store keeps its own
        self._resync_bytes()
        self.snapshot = None
        self._publish()

    def _resync_bytes(self):
        self._bytes = self._db.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM batches").fetchone()[0]

    # -- opening -------------------------------------------------------------------------------------------
    def _open(self, page_size):
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            raise StoreError("store directory %s does not exist" % directory, kind="io")
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            db.execute("PRAGMA page_size=%d" % page_size)
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError("cannot switch %s to WAL mode (got %s)" % (self.path, mode), kind="io")
            db.execute("PRAGMA synchronous=%s" % ("NORMAL" if self.sync_interval else "FULL"))
            db.execute("PRAGMA wal_autocheckpoint=0")
            # A queue appends and reads its oldest rows: a big page cache buys nothing and costs RAM on a 1 GB Pi.
            db.execute("PRAGMA cache_size=-256")  # we checkpoint ourselves, and count it
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError("database disk image is malformed: %s" % check)
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _salvage(self):
        """Copy what can still be read from the moved-aside queue into the new one (``gateway.adapters.store_salvage``).

        A failure here (the disk filled up meanwhile) is logged, not raised: the new queue stays usable and the
        moved-aside file still holds every batch, for an operator.
        """
        try:
            self._db.execute("BEGIN IMMEDIATE")
            report = store_salvage.salvage_into(self.recovered_from, self._db, COUNTERS)
            self._commit()
            self._sync_wal()
        except sqlite3.Error as exc:
            self._rollback()
            log.error("store: %s", _store_error("salvage %s into" % self.recovered_from, self.path, exc))
            return
        self.salvage = report
        level = logging.ERROR if report.lost or report.unknown else logging.WARNING
        log.log(level, "store: %s was corrupt and moved aside to %s (kept until an operator deletes it); %s",
                self.path, self.recovered_from, report.summary())

    def _move_aside(self):
        n = 0
        while os.path.exists("%s.corrupt-%d" % (self.path, n)):
            n += 1
        target = "%s.corrupt-%d" % (self.path, n)
        os.replace(self.path, target)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.replace(self.path + suffix, target + suffix)
        return target

    def close(self):
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("store: final checkpoint of %s failed (the WAL keeps the data): %s", self.path, exc)
            self._db.close()

    # -- metadata --------------------------------------------------------------------------------------------
    def _meta(self, key):
        row = self._db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return row[0] if row else 0

    def _bump(self, key, n=1):
        self._db.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = v + ?",
                         (key, n, n))

    def next_boot(self):
        """Start a new boot epoch and return it (``gateway.adapters.boot_epoch``): written durably to ``<name>.boot`` and to
        ``meta`` before it is returned, so no batch carries a boot that a later start could hand out again."""
        with self._lock:
            last_file = boot_epoch.read(self.boot_path)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                boot = boot_epoch.following(max(self._meta("boot"), last_file), self._random_bytes)
                boot_epoch.write(self.boot_path, boot)
                self._db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('boot', ?)", (boot,))
                self._commit()
                self._sync_wal()  # once per start: the boot epoch is durable in both places
            except sqlite3.Error as exc:
                self._rollback()
                raise _store_error("write the boot epoch to", self.path, exc) from exc
            except StoreError:
                self._rollback()
                raise
            return boot

    def counters(self):
        """Drop and quarantine counters (persisted, since the store was created) and the accepted/acked counters
        of this process (kept in memory: writing them at every commit would cost a page write each)."""
        with self._lock:
            rows = dict(self._db.execute("SELECT k, v FROM meta").fetchall())
        out = {k: rows.get(k, 0) for k in COUNTERS}
        out.update(self.session)
        return out

    def _publish(self):
        """Publish ``snapshot`` (depth and counters) after a change, on the thread that made it, with the lock held.
        Readers on the event loop take ``store.snapshot`` (one immutable value) and never wait for the lock."""
        try:
            *depth, oldest = self._depth_oldest()
            self.snapshot = StoreSnapshot(tuple(depth), self.counters(), oldest)
        except sqlite3.Error as exc:  # the change itself committed: a stale snapshot is better than a failed one
            log.error("store: cannot read the depth of %s: %s", self.path, exc)

    # -- the queue ---------------------------------------------------------------------------------------------
    def put(self, batch):
        return self.put_many([batch])[0]

    def put_many(self, batches):
        """Commit ``batches`` in one transaction, making room first. Returns their store ids.

        If the batches alone exceed ``max_bytes`` (a long store outage filled the memory buffer), the policy
        applies to them too: the oldest non-alarm ones are dropped and counted (their id is None), so one
        oversized group can never wedge the commit path.
        """
        now = self._now()
        blobs = {id(b): _deflate(b.data) for b in batches}
        admitted = self._admit(batches, blobs)
        need = sum(len(blobs[id(b)]) for b in batches if id(b) in admitted)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._make_room(need, now)
                ids = []
                refused = [b for b in batches if id(b) not in admitted]
                if refused:
                    self._count_drop(len(refused), sum(b.readings for b in refused),
                                     sum(1 for b in refused if b.priority))
                for b in batches:
                    if id(b) not in admitted:
                        ids.append(None)
                        continue
                    cur = self._db.execute(
                        "INSERT INTO batches (prio, boot, seq, created, readings, events, data) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (b.priority, b.boot, b.seq, b.created or now, b.readings, b.events, blobs[id(b)]))
                    ids.append(cur.lastrowid)
                self._commit()
                if self.sync_interval:
                    stamp = self.clock.monotonic()
                    self._unsynced.update((i, stamp) for i in ids if i is not None)
                self.session["accepted_batches"] += len(admitted)
                self.session["accepted_readings"] += sum(b.readings for b in batches if id(b) in admitted)
            except sqlite3.Error as exc:
                self._rollback()
                raise _store_error("commit a batch to", self.path, exc) from exc
            self._bytes += need
            self._maybe_checkpoint()
            self._publish()
            return ids

    def pending(self, limit=16, exclude=()):
        """Up to ``limit`` batches to deliver: alarms first, then oldest first; none whose id is in ``exclude``
        (the agent's suspected poison batches waiting out their own retry delay, at most a few hundred)."""
        skip = " AND id NOT IN (%s)" % ",".join("%d" % int(i) for i in exclude) if exclude else ""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT %s FROM batches WHERE prio > 0%s ORDER BY id LIMIT ?" % (_COLUMNS, skip),
                    (limit,)).fetchall()
                if len(rows) < limit:
                    rows += self._db.execute(
                        "SELECT %s FROM batches WHERE prio = 0%s ORDER BY id LIMIT ?" % (_COLUMNS, skip),
                        (limit - len(rows),)).fetchall()
            except sqlite3.Error as exc:
                raise _store_error("read the queue in", self.path, exc) from exc
        out, damaged = [], []
        for r in rows:
            try:
                data = _inflate(r[7])
            except zlib.error as exc:
                damaged.append((r[0], "damaged on disk: %s" % exc))
                continue
            out.append(EncodedBatch(boot=r[2], seq=r[3], data=data, priority=r[1], readings=r[5], events=r[6],
                                    created=r[4], store_id=r[0]))
        for store_id, reason in damaged:  # kept aside for inspection, counted; never sent, never a crash
            log.error("store: batch %d in %s: %s; quarantined", store_id, self.path, reason)
            self.quarantine(store_id, reason)
        return out

    def ack(self, store_ids):
        """Delete delivered batches. Unknown ids (already dropped by policy) are ignored."""
        if not store_ids:
            return
        # An ack need not be durable: if a power cut undoes it, the batch is sent again and the backend drops the
        # repeat. So it commits without an fsync (synchronous=NORMAL in WAL mode); the next accepted batch's fsync
        # or the next checkpoint makes it durable. This halves the fsyncs per delivered batch (SD card wear).
        with self._lock:
            try:
                if not self.sync_interval:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    marks = ",".join("?" * len(store_ids))
                    size, readings, count = self._db.execute(
                        "SELECT COALESCE(SUM(LENGTH(data)), 0), COALESCE(SUM(readings), 0), COUNT(*) FROM batches "
                        "WHERE id IN (%s)" % marks, list(store_ids)).fetchone()
                    self._db.execute("DELETE FROM batches WHERE id IN (%s)" % marks, list(store_ids))
                    self._db.execute("COMMIT")
                finally:
                    if self._db.in_transaction:
                        self._rollback()
                    if not self.sync_interval:
                        self._db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                self._rollback()
                raise _store_error("delete acknowledged batches from", self.path, exc) from exc
            self.commits += 1
            for i in store_ids:
                self._unsynced.pop(i, None)  # delivered: the upstream holds it, a power cut here costs a resend
            self.session["acked_batches"] += count
            self.session["acked_readings"] += readings
            self._bytes -= size
            self._maybe_checkpoint()
            self._publish()

    def depth(self):
        """``(batches, readings, bytes, alarm_batches)`` waiting for delivery."""
        return self._depth_oldest()[:4]

    def _depth_oldest(self):
        """``depth()`` and the wall time the oldest waiting batch was cut (``created``, None: none), in one scan."""
        with self._lock:
            n, readings, alarms, oldest = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(readings), 0), COALESCE(SUM(prio > 0), 0), MIN(created) "
                "FROM batches").fetchone()
        return n, readings, self._bytes, alarms, oldest

    def dump(self, out):
        """Write every queued batch, then every quarantined one, to the file object ``out`` as a CBOR sequence
        (RFC 8742): the exact signed bytes. Returns ``(queued, quarantined)``, the counts written. A blob damaged
        on disk is skipped (``pending`` quarantines a queued one; a quarantined one stays for inspection)."""
        counts = []
        with self._lock:
            for query in ("SELECT data FROM batches ORDER BY prio DESC, id", "SELECT data FROM quarantine ORDER BY id"):
                n = 0
                for (blob,) in self._db.execute(query).fetchall():
                    try:
                        out.write(_inflate(blob))
                    except zlib.error:
                        continue
                    n += 1
                counts.append(n)
        return tuple(counts)

    def _now(self):
        return self.clock.wall()
