"""The reference backend: verify each batch, drop repeats on ``(gw, boot, seq)``, store the readings (SQLite or
PostgreSQL, behind ``backend.storage``).

It answers 2xx only after the batch is committed (SQLite ``synchronous=FULL``, a PostgreSQL COMMIT), so an acknowledged batch survives a
crash of the receiver too. Rejected input gets a 4xx with a JSON reason and a counter; nothing a peer sends can
crash it, wedge its database connection or earn a 5xx (a 5xx means *our* storage failed: retry later).

HTTP API:

* ``POST /v1/batches`` (that path only: any other is ``404 not_found``), body = one COSE_Sign1, ``Content-Type:
  application/cose; cose-type="cose-sign1"``. ``201`` stored, ``200`` duplicate (already stored, same content),
  ``409`` conflict (already stored with *different* content: kept apart in ``conflicts``, see
  ``backend.receiver_db``), ``400`` malformed (also a body with bytes after the COSE_Sign1, and a bad
  ``Content-Length``), ``403`` unknown key / bad signature / wrong gateway, ``411`` no length, ``413`` too large,
  ``415`` wrong content type, ``422`` verified but unstorable (an integer beyond 64 bits, NaN), ``500`` an
  internal error (a bug: counted in ``http_errors``), ``503`` storage failed or in maintenance (with
  ``Retry-After``).
* ``OPTIONS /v1/batches``: ``204`` with ``Allow: POST, OPTIONS`` and ``Accept-Post: application/cose``: "this is
  a batch endpoint". ``doctor`` and the console's ``uplink test`` probe with it; a ``404`` means a wrong path.
* ``Content-Encoding: deflate`` (a zlib stream, RFC 9110 section 8.4.1.2) is accepted: the body is inflated
  incrementally to at most ``max_bytes`` (more is ``413 oversize``, a zip bomb costs no memory), a damaged or
  truncated stream or bytes after it is ``400 malformed``; any other coding is ``415 content_encoding``. The
  inflated bytes are the signed COSE_Sign1, verified and stored as if they had come plain (the compression is
  hop-by-hop). Every answer carries ``Accept-Encoding: deflate`` (RFC 7694).
* ``GET /stats``: counters as JSON (``storage``: the engine, its schema version and what it tells cheaply).

The verify-and-store core (``Receiver.process``) is shared with the MQTT consumer.
"""

import hashlib
import io
import json
import logging
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cbor2

from gateway.core.errors import VerifyError
from backend.engines import open_storage
from backend.storage import CONFLICT, DUPLICATE, STORED, StorageError, UnstorableError, redact
from gateway.core.wire import HTTP_CONTENT_TYPE, MAX_BATCH_BYTES, verify

log = logging.getLogger(__name__)

#: the body's media type: the one the HTTP uplink sends (``gateway.core.wire.HTTP_CONTENT_TYPE``), without parameters;
#: plain CBOR and octet-stream are accepted too (curl, older gateways).
MEDIA_TYPE = HTTP_CONTENT_TYPE.split(";")[0].strip()
ACCEPTED_TYPES = (MEDIA_TYPE, "application/cbor", "application/octet-stream")

_STATUS = {"oversize": 413, "unknown_kid": 403, "bad_signature": 403, "gw_mismatch": 403, "bad_alg": 403,
           "unstorable": 422, "content_encoding": 415}
#: content codings a body may come in (HTTP ``Content-Encoding``, the MQTT v5 user property ``content-encoding``)
IDENTITY, DEFLATE = "identity", "deflate"
CODINGS = (IDENTITY, DEFLATE)
_OUTCOMES = {STORED: (201, "stored"), DUPLICATE: (200, "duplicates"), CONFLICT: (409, "conflicts")}
_MAX_LENGTH_DIGITS = 10
#: where batches are accepted (``ReceiverServer.url``); every other path is 404
BATCH_PATH = "/v1/batches"


def is_batch_path(target):
    """The request target names the batch endpoint (a trailing slash and a query string are ignored)."""
    return target.split("?", 1)[0].rstrip("/") == BATCH_PATH


def content_digest(data):
    """SHA-256 of the signed payload bytes of a COSE_Sign1 (``VerifyError`` if bytes follow the message).

    The payload, not the whole message: the same content under another key or header is the same batch.
    """
    stream = io.BytesIO(data)
    try:
        payload = cbor2.CBORDecoder(stream).decode().value[2]
    except (cbor2.CBORDecodeError, ValueError, TypeError, AttributeError, IndexError, ArithmeticError,
            LookupError, RecursionError) as exc:
        raise VerifyError("not a COSE_Sign1: %s" % (exc,), reason="malformed") from None
    extra = len(data) - stream.tell()
    if extra:
        raise VerifyError("%d bytes follow the COSE_Sign1 (one batch per message)" % extra, reason="malformed")
    if not isinstance(payload, bytes):
        raise VerifyError("COSE_Sign1 payload is not a byte string", reason="malformed")
    return hashlib.sha256(payload).digest()


def inflate(data, max_bytes):
    """The bytes a zlib stream (``Content-Encoding: deflate``) holds, never more than ``max_bytes`` of them.

    Incremental with ``max_length``: however much the stream would expand to, at most ``max_bytes + 1`` bytes are
    ever held. ``VerifyError`` reason ``oversize`` beyond ``max_bytes``; ``malformed`` for a damaged or truncated
    stream, or bytes after its end.
    """
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise VerifyError("deflate body does not inflate: %s" % exc, reason="malformed") from None
    if len(out) > max_bytes:
        raise VerifyError("deflate body inflates to over %d bytes" % max_bytes, reason="oversize")
    if not d.eof:
        raise VerifyError("deflate body is truncated (no end of stream)", reason="malformed")
    if d.unused_data:
        raise VerifyError("%d bytes follow the deflate stream" % len(d.unused_data), reason="malformed")
    return out


def coding_of(value):
    """The one content coding a header or property names (lower case, ``identity`` when empty); ``VerifyError``
    reason ``content_encoding`` for any other or for a list of codings."""
    coding = (value or "").strip().lower() or IDENTITY
    if coding not in CODINGS:
        raise VerifyError("Content-Encoding %r is not accepted; send deflate or none" % (value[:40],),
                          reason="content_encoding")
    return coding


class Receiver:
    """Verify and store. Thread-safe: HTTP handler threads and MQTT callbacks call ``process``."""

    def __init__(self, db_path, trust, max_bytes=MAX_BATCH_BYTES, clock=time.time, busy_timeout=5.0):
        """``db_path``: a SQLite file or a ``postgresql://`` URL (``backend.engines.open_storage``; raises
        ``StorageError`` when it cannot be opened)."""
        self.trust = trust
        self.max_bytes = max_bytes
        self.db_path = db_path
        self.clock = clock
        self._store = open_storage(db_path, busy_timeout)
        self._lock = threading.Lock()
        self.counters = {"received": 0, "stored": 0, "duplicates": 0, "conflicts": 0, "rejected": 0, "records": 0,
                         "store_failures": 0, "internal_errors": 0, "http_errors": 0, "deflated": 0,
                         "deflated_bytes_in": 0, "deflated_bytes_out": 0}
        self.rejections = {}
        self.maintenance_until = 0.0

    def count(self, name, n=1):
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def process(self, data, encoding=None):
        """Verify and store one batch, sent in ``encoding`` (``Content-Encoding``: None or ``identity`` for the
        signed bytes themselves, ``deflate`` for them in a zlib stream). Returns ``(status, body_dict)`` with an
        HTTP-style status.

        Input never raises: every batch gets a status. An exception that escapes is a bug in this module.
        """
        self.count("received")
        try:
            if coding_of(encoding) == DEFLATE:
                packed = len(data)
                data = inflate(data, self.max_bytes)
                with self._lock:
                    self.counters["deflated"] += 1
                    self.counters["deflated_bytes_in"] += packed
                    self.counters["deflated_bytes_out"] += len(data)
            batch = verify(data, self.trust, self.max_bytes)
            digest = content_digest(data)
        except VerifyError as exc:
            return self.reject(exc.reason, str(exc))
        except Exception as exc:  # deliberate catch-all: the verify library failed on these bytes (reason below)
            # verify() raised something other than its typed VerifyError: a bug in the verifier, triggered by
            # the peer's bytes. They will never verify here, so the answer is a permanent 4xx (a 5xx would make
            # the gateway retry them forever); the counter and the ERROR log make our bug visible.
            self.count("internal_errors")
            log.error("verify raised %s on a %d-byte batch (a verifier bug): %s", type(exc).__name__, len(data),
                      exc, exc_info=True)
            return self.reject("unverifiable", "the batch could not be verified (%s)" % type(exc).__name__)
        return self.store(batch, digest, data)

    def store(self, batch, digest, data):
        """Store a ``VerifiedBatch`` whose payload hashes to ``digest``; ``data`` is kept if it conflicts."""
        try:
            with self._lock:
                outcome, n = self._store.store(batch, digest, data, self.clock())
                status, counter = _OUTCOMES[outcome]
                self.counters[counter] += 1
                if outcome == STORED:
                    self.counters["records"] += n
        except UnstorableError as exc:
            return self.reject(exc.reason, "batch %s: %s" % (batch.key, exc))
        except StorageError as exc:
            self.count("store_failures")
            log.error("cannot store batch %s in %s: %s", batch.key, redact(self.db_path), exc)
            return 503, {"error": "store_failed", "detail": str(exc)}
        body = {"gw": batch.gw, "boot": batch.boot, "seq": batch.seq, "status": outcome}
        if outcome == STORED:
            body["records"] = n
        elif outcome == CONFLICT:
            log.warning("conflict: batch %s was stored before with different content; kept apart (kid %s)",
                        batch.key, batch.kid)
            body.update(error="conflict", detail="(gw, boot, seq) already stored with different content; kept apart")
        return status, body

    def reject(self, reason, detail):
        with self._lock:
            self.counters["rejected"] += 1
            self.rejections[reason] = self.rejections.get(reason, 0) + 1
        log.warning("rejected batch: %s", detail)
        return _STATUS.get(reason, 400), {"error": reason, "detail": detail}

    def stats(self):
        with self._lock:
            return dict(self.counters, rejections=dict(self.rejections))

    def storage_stats(self):
        """The storage's own small dict (engine, schema version, ...)."""
        with self._lock:
            return self._store.stats()

    def query(self, sql, args=()):
        """Read-only access for tests, scenarios and the demo summary (``?`` placeholders, either engine)."""
        with self._lock:
            return self._store.query(sql, args)

    def close(self):
        with self._lock:
            self._store.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: without this, 40 ms delayed-ACK stalls
    server_version = "edge-gateway-receiver"
    _answered = False

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def _answer(self, status, body, headers=None):
        data = (json.dumps(body, sort_keys=True) + "\n").encode()
        self._answered = True  # from here on, bytes may be on the wire: no second answer
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Encoding", DEFLATE)  # RFC 7694: the codings a request body may come in
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _guarded(self, handle):
        """Run one request so that nothing escapes into the server thread: every failure is counted."""
        self._answered = False
        try:
            handle(self.server.receiver)
        except OSError as exc:  # the peer went away (reset, timeout) while we read or answered: nobody to tell
            self.close_connection = True
            log.warning("%s: connection failed mid-request: %s", self.address_string(), exc)
        except Exception as exc:  # deliberate catch-all: the last line of the request path (reason below)
            # A bug in this module must cost one request (a 500, counted, logged at ERROR with the traceback),
            # not the handler thread with a half-written answer and nothing in the counters.
            self.close_connection = True
            self.server.receiver.count("http_errors")
            log.error("internal error answering %s %s: %s", self.command, self.path[:200], exc, exc_info=True)
            if not self._answered:
                try:
                    self._answer(500, {"error": "internal"})
                except OSError:
                    pass

    def do_GET(self):
        self._guarded(self._get)

    def do_POST(self):
        self._guarded(self._post)

    def do_OPTIONS(self):
        self._guarded(self._options)

    def _options(self, receiver):
        if not is_batch_path(self.path):
            return self._answer(404, {"error": "not_found"})
        self._answered = True
        self.send_response(204)
        self.send_header("Allow", "POST, OPTIONS")
        self.send_header("Accept-Post", MEDIA_TYPE)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return None

    def _get(self, receiver):
        if self.path.rstrip("/") == "/stats":
            self._answer(200, dict(receiver.stats(), storage=receiver.storage_stats()))
        else:
            self._answer(404, {"error": "not_found"})

    def _refuse(self, status, reason, detail):
        self.close_connection = True  # the body (if any) was not read: the connection cannot be reused
        self._answer(status, self.server.receiver.reject(reason, detail)[1])

    def _post(self, receiver):
        if not is_batch_path(self.path):
            return self._refuse(404, "not_found", "no batch endpoint at %s; POST batches to %s"
                                % (self.path[:200], BATCH_PATH))
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") is not None:
            return self._refuse(411, "no_length", "Transfer-Encoding is not accepted; send Content-Length")
        if not lengths:
            return self._refuse(411, "no_length", "Content-Length is required")
        length = lengths[0].strip()
        # Strict ASCII digits: str.isdigit() alone accepts '²' and other Unicode digits int() then rejects.
        if len(set(lengths)) != 1 or not (length.isascii() and length.isdigit()) or len(length) > _MAX_LENGTH_DIGITS:
            return self._refuse(400, "bad_length", "Content-Length must be one decimal number")
        length = int(length)
        if length > receiver.max_bytes:
            return self._refuse(413, "oversize", "body of %d bytes is over the limit" % length)
        data = self.rfile.read(length)
        if len(data) != length:  # the peer closed early: nothing to answer on a connection that is gone
            self.close_connection = True
            return None
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in ACCEPTED_TYPES:
            return self._answer(415, receiver.reject("content_type", "Content-Type must be " + MEDIA_TYPE)[1])
        wait = receiver.maintenance_until - time.monotonic()
        if wait > 0:
            return self._answer(503, {"error": "maintenance"}, {"Retry-After": str(max(1, int(wait + 0.999)))})
        encodings = self.headers.get_all("Content-Encoding") or []
        if len(encodings) > 1:
            return self._answer(415, receiver.reject("content_encoding", "one Content-Encoding header at most")[1])
        status, body = receiver.process(data, encodings[0] if encodings else None)
        headers = {"Retry-After": "1"} if status >= 500 else None
        return self._answer(status, body, headers)


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
        return "http://%s:%d%s" % (host, port, BATCH_PATH)

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
