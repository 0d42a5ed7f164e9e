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
* Commands (docs/wire-format.md, "Delivery (HTTP)"): with ``--operators JWKS`` the receiver keeps a queue of
  signed commands per gateway. ``POST /v1/commands``, body = one signed command (at most 4096 bytes): verified
  against the operator keys (the same checks a gateway makes, but for the target and the sequence): ``201``
  queued, ``200`` already queued (same bytes), ``400 malformed``, ``403 unknown_key``/``bad_signature``/
  ``no_operators`` (started without ``--operators``), ``409 conflict`` (another command of that key holds the
  op_seq), ``410 expired``, ``413 oversize``, ``422 unknown_action``, ``429 full`` (the gateway's queue is at its
  bound, ``backend.command_queue``). A 2xx answer to a batch carries ``"commands": [base64url, ...]``: the queued
  commands of the batch's (verified) gateway, until their outcome comes back in its records.
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
from backend.command_queue import QueueRefused
from backend.engines import open_storage
from backend.storage import CONFLICT, DUPLICATE, STORED, StorageError, UnstorableError, redact
from gateway.core.commands import (CommandError, MAX_COMMAND_BYTES, command_digest, encode_answer, peek_gw,
                                   verify_command)
from gateway.core.wire import MAX_BATCH_BYTES, verify
from backend.api import (ACCEPTED_TYPES, BATCH_PATH, CODINGS, DEFLATE, IDENTITY, MEDIA_TYPE,  # noqa: F401 (API)
                         is_batch_path)

log = logging.getLogger(__name__)

_STATUS = {"oversize": 413, "unknown_kid": 403, "bad_signature": 403, "gw_mismatch": 403, "bad_alg": 403,
           "unstorable": 422, "content_encoding": 415}
_OUTCOMES = {STORED: (201, "stored"), DUPLICATE: (200, "duplicates"), CONFLICT: (409, "conflicts")}
#: ``POST /v1/commands``: the status of each refusal reason
_COMMAND_STATUS = {"oversize": 413, "malformed": 400, "unknown_key": 403, "bad_signature": 403, "no_operators": 403,
                   "expired": 410, "clock_unsynced": 503, "unknown_action": 422, "conflict": 409, "full": 429}


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

    def __init__(self, db_path, trust, max_bytes=MAX_BATCH_BYTES, clock=time.time, busy_timeout=5.0,
                 operators=None):
        """``db_path``: a SQLite file or a ``postgresql://`` URL (``backend.engines.open_storage``; raises
        ``StorageError`` when it cannot be opened). ``operators``: kid bytes -> Ed25519 public key (the operator
        JWK Set, ``gateway.adapters.operators``) whose commands may be queued; None: no command queue."""
        self.trust = trust
        self.operators = operators
        self.max_bytes = max_bytes
        self.db_path = db_path
        self.clock = clock
        self._store = open_storage(db_path, busy_timeout)
        self._lock = threading.Lock()  # the storage (one connection)
        # the counters: a lock of their own, so verifying and counting never wait for a COMMIT in progress
        self._counting = threading.Lock()
        self.counters = {"received": 0, "stored": 0, "duplicates": 0, "conflicts": 0, "rejected": 0, "records": 0,
                         "store_failures": 0, "internal_errors": 0, "http_errors": 0, "busy": 0, "deflated": 0,
                         "deflated_bytes_in": 0, "deflated_bytes_out": 0,
                         "commands_queued": 0, "commands_refused": 0, "commands_handed": 0}
        self.rejections = {}
        self.maintenance_until = 0.0

    def count(self, name, n=1):
        with self._counting:
            self.counters[name] = self.counters.get(name, 0) + n

    def process(self, data, encoding=None, hand_over=False):
        """Verify and store one batch, sent in ``encoding`` (``Content-Encoding``: None or ``identity`` for the
        signed bytes themselves, ``deflate`` for them in a zlib stream). Returns ``(status, body_dict)`` with an
        HTTP-style status. ``hand_over`` (HTTP): a 2xx body carries the gateway's queued commands.

        Input never raises: every batch gets a status. An exception that escapes is a bug in this module.
        """
        checked = self.check(data, encoding)
        if checked[0] is not None:
            return checked
        _, batch, digest, data = checked
        status, body = self.store(batch, digest, data)
        if hand_over and status in (200, 201):
            self._hand_over(batch.gw, body)
        return status, body

    def check(self, data, encoding=None):
        """The verify half of ``process``: ``(None, batch, digest, signed_bytes)`` for a batch to store, else the
        ``(status, body_dict)`` of its rejection (counted). Holds no lock while it verifies, so the MQTT consumer
        verifies the next batch while the last group commits (``store_many``)."""
        self.count("received")
        try:
            if coding_of(encoding) == DEFLATE:
                packed = len(data)
                data = inflate(data, self.max_bytes)
                with self._counting:
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
        return None, batch, digest, data

    def _hand_over(self, gw, body):
        """Put ``gw``'s queued commands in the answer. A storage failure here costs the commands this answer, not
        the batch (it is stored): they go in a later one."""
        try:
            with self._lock:
                found = self._store.commands_for(gw, self.clock())
        except StorageError as exc:
            self.count("store_failures")
            log.error("cannot read the command queue of %s: %s", gw, exc)
            return
        if found:
            body["commands"] = encode_answer(found)
            self.count("commands_handed", len(found))

    def queue_command(self, data):
        """``POST /v1/commands``: verify one signed command against the operator keys and queue it for its
        gateway. Returns ``(status, body_dict)``; never raises for input."""
        try:
            if self.operators is None:
                raise CommandError("this receiver queues no commands: start it with --operators JWKS",
                                   "no_operators")
            if len(data) > MAX_COMMAND_BYTES:
                raise CommandError("command is %d bytes, over the %d limit" % (len(data), MAX_COMMAND_BYTES),
                                   "oversize")
            gw = peek_gw(data)
            cmd = verify_command(data, self.operators, gw, {}, self.clock())
        except CommandError as exc:
            return self._refuse_command(exc.reason, str(exc))
        digest = command_digest(data)
        try:
            with self._lock:
                state = self._store.queue_command(cmd, digest, data, self.clock())
        except QueueRefused as exc:
            return self._refuse_command(exc.reason, str(exc))
        except StorageError as exc:
            self.count("store_failures")
            log.error("cannot queue a command for %s: %s", cmd.gw, exc)
            return 503, {"error": "store_failed", "detail": str(exc)}
        if state == "queued":
            self.count("commands_queued")
            log.info("command queued for %s: %s op_seq %d (key %s, cmd %s)", cmd.gw, cmd.action, cmd.op_seq,
                     cmd.kid, digest)
        return (201 if state == "queued" else 200), {"gw": cmd.gw, "kid": cmd.kid, "op_seq": cmd.op_seq,
                                                       "action": cmd.action, "digest": digest, "status": state}

    def _refuse_command(self, reason, detail):
        with self._counting:
            self.counters["commands_refused"] += 1
            key = "command." + reason
            self.rejections[key] = self.rejections.get(key, 0) + 1
        log.warning("refused command: %s", detail)
        return _COMMAND_STATUS.get(reason, 400), {"error": reason, "detail": detail}

    def command_status(self, gw):
        """``gw``'s commands and outcomes (``backend.command_queue.status``)."""
        with self._lock:
            return self._store.command_status(gw, self.clock())

    def store(self, batch, digest, data):
        """Store a ``VerifiedBatch`` whose payload hashes to ``digest``; ``data`` is kept if it conflicts."""
        return self.store_many([(batch, digest, data)])[0]

    def store_many(self, items):
        """Store ``(batch, digest, data)`` items, a group committed together where the engine can (group commit,
        ``Storage.store_many``). Returns one ``(status, body_dict)`` per item, in order, each true after the
        COMMIT; a storage failure answers 503 for every item."""
        try:
            with self._lock:
                results = self._store.store_many(items, self.clock())
            with self._counting:
                for result in results:
                    if not isinstance(result, UnstorableError):
                        outcome, n = result
                        self.counters[_OUTCOMES[outcome][1]] += 1
                        if outcome == STORED:
                            self.counters["records"] += n
        except StorageError as exc:
            self.count("store_failures", len(items))
            log.error("cannot store %s in %s: %s", "batch %s" % (items[0][0].key,) if len(items) == 1 else
                      "%d batches" % len(items), redact(self.db_path), exc)
            return [(503, {"error": "store_failed", "detail": str(exc)})] * len(items)
        return [self._answer(batch, result) for (batch, _, _), result in zip(items, results)]

    def _answer(self, batch, result):
        if isinstance(result, UnstorableError):
            return self.reject(result.reason, "batch %s: %s" % (batch.key, result))
        outcome, n = result
        status = _OUTCOMES[outcome][0]
        body = {"gw": batch.gw, "boot": batch.boot, "seq": batch.seq, "status": outcome}
        if outcome == STORED:
            body["records"] = n
        elif outcome == CONFLICT:
            log.warning("conflict: batch %s was stored before with different content; kept apart (kid %s)",
                        batch.key, batch.kid)
            body.update(error="conflict", detail="(gw, boot, seq) already stored with different content; kept apart")
        return status, body

    def reject(self, reason, detail):
        with self._counting:
            self.counters["rejected"] += 1
            self.rejections[reason] = self.rejections.get(reason, 0) + 1
        log.warning("rejected batch: %s", detail)
        return _STATUS.get(reason, 400), {"error": reason, "detail": detail}

    def stats(self):
        with self._counting:
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
