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
  internal error (a bug: counted in ``http_errors``), ``503`` storage failed, in maintenance or busy (with
  ``Retry-After``).
* ``OPTIONS /v1/batches``: ``204`` with ``Allow: POST, OPTIONS`` and ``Accept-Post: application/cose``: "this is
  a batch endpoint". ``doctor`` and the console's ``uplink test`` probe with it; a ``404`` means a wrong path.
* ``Content-Encoding: deflate`` (a zlib stream, RFC 9110 section 8.4.1.2) is accepted: the body is inflated
  incrementally to at most ``max_bytes`` (more is ``413 oversize``, a zip bomb costs no memory), a damaged or
  truncated stream or bytes after it is ``400 malformed``; any other coding is ``415 content_encoding``. The
  inflated bytes are the signed COSE_Sign1, verified and stored as if they had come plain (the compression is
  hop-by-hop). Every answer carries ``Accept-Encoding: deflate`` (RFC 7694).
* ``GET /stats``: counters as JSON (``storage``: the engine, its schema version and what it tells cheaply), on the
  separate ops listener only (``GET /healthz`` too); on the ingest port it is ``404``.

The HTTP front (uvicorn, its limits, the ops listener) is ``backend.httpd``. The verify-and-store core
(``Receiver.process``) is shared with the MQTT consumer.
"""

import hashlib
import io
import logging
import threading
import time
import zlib

import cbor2

from gateway.core.errors import VerifyError
from backend.engines import open_storage
from backend.storage import CONFLICT, DUPLICATE, STORED, StorageError, UnstorableError, redact
from gateway.core.wire import MAX_BATCH_BYTES, verify
from backend.api import (ACCEPTED_TYPES, BATCH_PATH, CODINGS, DEFLATE, IDENTITY, MEDIA_TYPE,  # noqa: F401 (API)
                         is_batch_path)

log = logging.getLogger(__name__)

_STATUS = {"oversize": 413, "unknown_kid": 403, "bad_signature": 403, "gw_mismatch": 403, "bad_alg": 403,
           "unstorable": 422, "content_encoding": 415}
_OUTCOMES = {STORED: (201, "stored"), DUPLICATE: (200, "duplicates"), CONFLICT: (409, "conflicts")}


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
                         "store_failures": 0, "internal_errors": 0, "http_errors": 0, "busy": 0, "deflated": 0,
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


def __getattr__(name):
    """``ReceiverServer`` lives in ``backend.httpd`` (it needs uvicorn, the ``backend`` extra); imported from here
    on first use, so the MQTT consumer and the tools import this module without it."""
    if name == "ReceiverServer":
        from backend.httpd import ReceiverServer
        return ReceiverServer
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
