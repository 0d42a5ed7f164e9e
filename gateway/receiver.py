"""The reference backend: verify each batch, drop repeats on ``(gw, boot, seq)``, store the readings in SQLite.

It answers 2xx only after the batch is committed with ``synchronous=FULL``, so an acknowledged batch survives a
crash of the receiver too. Rejected input gets a 4xx with a JSON reason and a counter; nothing a peer sends can
crash it.

HTTP API:

* ``POST /v1/batches`` (any path but ``/stats``), body = one COSE_Sign1, ``Content-Type:
  application/cose; cose-type="cose-sign1"``. ``201`` stored, ``200`` duplicate (already stored), ``400``
  malformed, ``403`` unknown key / bad signature / wrong gateway, ``411`` no length, ``413`` too large, ``415``
  wrong content type, ``503`` in maintenance (with ``Retry-After``).
* ``GET /stats``: counters as JSON.

The verify-and-store core (``Receiver.process``) is shared with the MQTT consumer.
"""

import json
import logging
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gateway.errors import VerifyError
from gateway.wire import MAX_BATCH_BYTES, verify

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    gw TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, kid TEXT NOT NULL, clock INTEGER NOT NULL,
    anchor_mono REAL, anchor_wall REAL, received REAL NOT NULL, records INTEGER NOT NULL,
    PRIMARY KEY (gw, boot, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    gw TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, n TEXT NOT NULL, t REAL NOT NULL, u TEXT,
    v REAL, vs TEXT, vb INTEGER);
CREATE INDEX IF NOT EXISTS records_by_name ON records (n, t);
"""

_STATUS = {"oversize": 413, "unknown_kid": 403, "bad_signature": 403, "gw_mismatch": 403, "bad_alg": 403}


class Receiver:
    """Verify and store. Thread-safe: HTTP handler threads and MQTT callbacks call ``process``."""

    def __init__(self, db_path, trust, max_bytes=MAX_BATCH_BYTES):
        self.trust = trust
        self.max_bytes = max_bytes
        self.db_path = db_path
        self._db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self.counters = {"received": 0, "stored": 0, "duplicates": 0, "rejected": 0, "records": 0}
        self.rejections = {}
        self.maintenance_until = 0.0

    def process(self, data):
        """Verify and store one batch. Returns ``(status, body_dict)`` with an HTTP-style status."""
        with self._lock:
            self.counters["received"] += 1
        try:
            batch = verify(data, self.trust, self.max_bytes)
        except VerifyError as exc:
            return self.reject(exc.reason, str(exc))
        rows = [(batch.gw, batch.boot, batch.seq, r["n"], r["t"], r.get("u"), r.get("v"), r.get("vs"),
                 None if "vb" not in r else int(r["vb"])) for r in batch.records]
        anchor = batch.anchor or (None, None)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (batch.gw, batch.boot, batch.seq, batch.kid, int(batch.clock), anchor[0], anchor[1],
                     time.time(), len(rows)))
                if cur.rowcount == 0:
                    self._db.execute("ROLLBACK")
                    self.counters["duplicates"] += 1
                    return 200, {"status": "duplicate", "gw": batch.gw, "boot": batch.boot, "seq": batch.seq}
                self._db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                log.error("cannot store batch %s: %s", batch.key, exc)
                return 503, {"error": "store_failed", "detail": str(exc)}
            self.counters["stored"] += 1
            self.counters["records"] += len(rows)
        return 201, {"status": "stored", "gw": batch.gw, "boot": batch.boot, "seq": batch.seq,
                     "records": len(rows)}

    def reject(self, reason, detail):
        with self._lock:
            self.counters["rejected"] += 1
            self.rejections[reason] = self.rejections.get(reason, 0) + 1
        log.warning("rejected batch: %s", detail)
        return _STATUS.get(reason, 400), {"error": reason, "detail": detail}

    def stats(self):
        with self._lock:
            return dict(self.counters, rejections=dict(self.rejections))

    def query(self, sql, args=()):
        """Read-only access for tests, scenarios and the demo summary."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self):
        with self._lock:
            self._db.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: without this, 40 ms delayed-ACK stalls
    server_version = "edge-gateway-receiver"

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def _answer(self, status, body, headers=None):
        data = (json.dumps(body, sort_keys=True) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.rstrip("/") == "/stats":
            self._answer(200, self.server.receiver.stats())
        else:
            self._answer(404, {"error": "not_found"})

    def do_POST(self):
        receiver = self.server.receiver
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._answer(411, receiver.reject("no_length", "Content-Length is required")[1])
            return
        length = int(length)
        if length > receiver.max_bytes:
            self.close_connection = True
            self._answer(413, receiver.reject("oversize", "body of %d bytes is over the limit" % length)[1])
            return
        try:
            data = self.rfile.read(length)
        except OSError:
            self.close_connection = True
            return
        if len(data) != length:
            self.close_connection = True
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in ("application/cose", "application/cbor", "application/octet-stream"):
            self._answer(415, receiver.reject("content_type", "Content-Type must be application/cose")[1])
            return
        wait = receiver.maintenance_until - time.monotonic()
        if wait > 0:
            self._answer(503, {"error": "maintenance"}, {"Retry-After": str(max(1, int(wait + 0.999)))})
            return
        status, body = receiver.process(data)
        self._answer(status, body)


class ReceiverServer:
    """The HTTP front of a ``Receiver`` on its own thread. ``port=0`` picks a free port."""

    def __init__(self, receiver, host="127.0.0.1", port=0):
        self.receiver = receiver
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.receiver = receiver
        self.thread = None

    @property
    def url(self):
        host, port = self.httpd.server_address[:2]
        if ":" in host:
            host = "[%s]" % host
        return "http://%s:%d/v1/batches" % (host, port)

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="receiver", daemon=True)
        self.thread.start()
        return self

    def maintenance(self, seconds):
        """Answer 503 with Retry-After for ``seconds`` (an outage drill without stopping the process)."""
        self.receiver.maintenance_until = time.monotonic() + seconds

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread:
            self.thread.join(5)
