"""The fuzz targets: every entry point that parses bytes or text from outside (``gateway.fuzz``).

One function per area builds its targets; ``targets()`` collects them. A target's ``allowed`` errors are the
project's typed errors for that entry point: anything else escaping is a bug.
"""

from gateway.fuzz import Target


def _wire_targets():
    from gateway.errors import VerifyError
    from gateway.keys import SigningKey, TrustStore
    from gateway.wire import encode_payload, sign, verify
    key = SigningKey.from_seed(bytes(range(32)))
    trust = TrustStore({"keys": [key.jwk("gw-fuzz")]})
    records = [{-2: "gw-fuzz/s1/temp", -4: "Cel", -3: 1_700_000_000, 2: 21.5}, {6: 10, 2: 21.25}]
    corpus = (sign(encode_payload("gw-fuzz", 1, 0, True, records), key),
              sign(encode_payload("gw-fuzz", 7, 42, False, records, anchor=(12.5, 1000.0)), key))
    return [Target("wire.verify", lambda data: verify(data, trust), corpus, (VerifyError,))]


class ReceiverFinding(AssertionError):
    """The receiver answered peer input with a 5xx or counted an internal error: a finding, never allowed."""


def _receiver_targets():
    """``Receiver.process`` and the HTTP request path, on one in-memory database kept for the whole run (so
    repeats, conflicts and stored batches are all reached). Only returned statuses are allowed: an exception, a
    5xx for input or an ``internal_errors``/``http_errors`` count is a finding."""
    import io
    import logging
    import re

    from gateway.keys import SigningKey, TrustStore
    from gateway.receiver import Receiver, _Handler
    from gateway.wire import HTTP_CONTENT_TYPE, encode_payload, sign
    key = SigningKey.from_seed(bytes(range(32)))
    rx = Receiver(":memory:", TrustStore({"keys": [key.jwk("gw-fuzz")]}))
    records = [{-2: "gw-fuzz/s1/temp", -4: "Cel", -3: 1_700_000_000, 2: 21.5}, {6: 10, 2: 21.25},
               {-2: "gw-fuzz/s1/door", 4: True}, {-2: "gw-fuzz/s1/alarm", 3: "raised: door open"}]
    corpus = (sign(encode_payload("gw-fuzz", 1, 0, True, records), key),
              sign(encode_payload("gw-fuzz", 1, 0, True, records[:1]), key),  # a conflict with the first
              sign(encode_payload("gw-fuzz", 7, 42, False, records, anchor=(12.5, 1000.0)), key))
    quiet = logging.getLogger("gateway.receiver")

    def checked(call):
        before = rx.counters["internal_errors"], rx.counters["http_errors"]
        quiet.disabled = True  # a rejection logs a WARNING: millions of them are not the point of a fuzz run
        try:
            result = call()
        finally:
            quiet.disabled = False
        if (rx.counters["internal_errors"], rx.counters["http_errors"]) != before:
            raise ReceiverFinding("the receiver counted an internal error")
        return result

    def process(data):
        status, body = checked(lambda: rx.process(data))
        if status >= 500 or not isinstance(body, dict):
            raise ReceiverFinding("process answered %d %r to input" % (status, body))

    def signed_payload(payload):
        """What a gateway holding a valid key can send: any payload bytes, correctly signed."""
        process(sign(payload, key))

    class Server:
        receiver = rx

    def http(raw):
        handler = _Handler.__new__(_Handler)  # no socket: the request bytes in, the answer bytes out
        handler.rfile, handler.wfile = io.BytesIO(raw), io.BytesIO()
        handler.server, handler.client_address, handler.request = Server, ("fuzz", 0), None
        handler.close_connection = True

        def serve():
            for _ in range(4):  # keep-alive: a few requests per input at most
                handler.handle_one_request()
                if handler.close_connection:
                    break
        checked(serve)
        for status in re.findall(rb"^HTTP/1\.[01] (\d{3}) ", handler.wfile.getvalue(), re.M):
            # 501 (unknown method) and 505 (HTTP version) are the protocol's own answers, not our failures.
            if status[:1] == b"5" and status not in (b"501", b"505"):
                raise ReceiverFinding("the HTTP path answered %s to input" % status.decode())

    head = "POST /v1/batches HTTP/1.1\r\nHost: rx\r\nContent-Type: %s\r\nContent-Length: %%d\r\n\r\n" % (
        HTTP_CONTENT_TYPE)
    requests = tuple((head % len(c)).encode() + c for c in corpus) + (
        b"GET /stats HTTP/1.1\r\nHost: rx\r\n\r\n" + (head % len(corpus[2])).encode() + corpus[2],)
    # Values one bit flip away from what SQLite cannot hold (beyond 64 bits, infinite, NaN).
    edge = [{-2: "gw-fuzz/s1/count", -3: (1 << 63) - 1, 2: (1 << 63) - 1}, {6: -1, 2: 1.5e300}]
    payloads = (encode_payload("gw-fuzz", 2, 1, True, records), encode_payload("gw-fuzz", 2, 2, False, records[2:]),
                encode_payload("gw-fuzz", 2, 3, True, records[:2], anchor=(1.5, 2.5)),
                encode_payload("gw-fuzz", (1 << 63) - 1, (1 << 63) - 1, True, edge))
    return [Target("receiver.process", process, corpus, ()),
            Target("receiver.signed_payload", signed_payload, payloads, ()),
            Target("receiver.http", http, requests, (), max_len=8192)]


def _driver_targets():
    return []


def _config_targets():
    return []


def targets():
    return _wire_targets() + _receiver_targets() + _driver_targets() + _config_targets()
