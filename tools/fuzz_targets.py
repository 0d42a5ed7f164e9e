"""The fuzz targets: every entry point that parses bytes or text from outside (``tools.fuzz``).

One function per area builds its targets; ``targets()`` collects them. A target's ``allowed`` errors are the
project's typed errors for that entry point: anything else escaping is a bug.
"""

import json
import os

from tools.fuzz import Target
from tools.fuzz_targets_drivers import _driver_targets


def _wire_targets():
    import cbor2

    from gateway.core import cbor_strict, senml
    from gateway.core.errors import VerifyError
    from gateway.adapters.keys import SigningKey, TrustStore
    from gateway.core.wire import encode_payload, sign, verify
    key = SigningKey.from_seed(bytes(range(32)))
    trust = TrustStore({"keys": [key.jwk("gw-fuzz")]})
    records = [{-2: "gw-fuzz/s1/temp", -4: "Cel", -3: 1_700_000_000, 2: 21.5}, {6: 10, 2: 21.25},
               {-2: "gw-fuzz/s1/", 0: "alarm.high", 3: "raised: temp 9.1 above 8"}, {-2: "gw-fuzz/s2/door", 4: True},
               {-2: "gw-fuzz/s3/raw", -5: 10, 2: -3, 5: 1.5}, {-2: "gw-fuzz/s3/blob", 8: b"\x01\x02", 6: -2.5}]
    payloads = (encode_payload("gw-fuzz", 1, 0, True, records[:2]),
                encode_payload("gw-fuzz", 7, 42, False, records, anchor=(12.5, 1000.0)))
    corpus = tuple(sign(p, key) for p in payloads)

    def payload_path(data):
        """Past the signature: every mutated payload is signed with the trusted key, so only its parsing can fail."""
        return verify(sign(data, key), trust)

    def resolve(data):
        try:
            pack = cbor2.loads(data) if cbor_strict.item_end(data) == len(data) else None
        except cbor_strict.CBORStrictError as exc:
            raise VerifyError(str(exc)) from None
        if pack is None:
            raise VerifyError("bytes after the pack")
        return senml.resolve(pack)

    def checker(data):
        """The checker, and a differential: whatever it passes, cbor2 decodes and re-encodes without an error."""
        stop = cbor_strict.item_end(data, 0, top_tag=18)
        value = cbor2.loads(data[:stop])
        cbor_strict.check(cbor2.dumps(value), top_tag=18)
        return stop

    return [Target("wire.verify", lambda data: verify(data, trust), corpus, (VerifyError,)),
            Target("wire.payload", payload_path, payloads, (VerifyError,)),
            Target("senml.resolve", resolve, tuple(cbor2.dumps(r) for r in (records, records[:1])), (VerifyError,)),
            Target("cbor_strict", checker, corpus + payloads, (cbor_strict.CBORStrictError,))]


def _command_targets():
    """The downlink's verifier: mutated commands, and mutated payloads signed by the trusted operator key."""
    from gateway.adapters.keys import SigningKey
    from gateway.core import commands, wire
    key = SigningKey.from_seed(bytes(range(1, 33)))
    operators = {key.kid_bytes: key.public}
    last = {key.kid: 2}
    payloads = (commands.encode_payload("gw-fuzz", 3, 2_000_000_000, "config_set",
                                        {"key": "batch.max_age_s", "value": "5"}),
                commands.encode_payload("gw-fuzz", 9, 2_000_000_000, "restart"))
    protected = commands.protected_header(key.kid_bytes)
    corpus = tuple(wire.sign(p, key, protected) for p in payloads)

    def verify(data):
        return commands.verify_command(data, operators, "gw-fuzz", last, 1_900_000_000)
    answers = tuple(json.dumps({"status": "stored", "commands": commands.encode_answer(corpus[:n])}).encode()
                    for n in (1, 2))
    return [Target("commands.verify", verify, corpus, (commands.CommandError,)),
            Target("commands.payload", lambda data: verify(wire.sign(data, key, protected)), payloads,
                   (commands.CommandError,)),
            Target("commands.answer", commands.commands_from_answer, answers, (commands.CommandError,))]


class ReceiverFinding(AssertionError):
    """The receiver answered peer input with a 5xx or counted an internal error: a finding, never allowed."""


def _receiver_corpus(key):
    """Seeds for the receiver: signed batches (one a conflict with another) and payloads to sign, some of them one
    bit flip away from what SQLite cannot hold (beyond 64 bits, infinite, NaN)."""
    from gateway.core.wire import encode_payload, sign
    records = [{-2: "gw-fuzz/s1/temp", -4: "Cel", -3: 1_700_000_000, 2: 21.5}, {6: 10, 2: 21.25},
               {-2: "gw-fuzz/s1/door", 4: True}, {-2: "gw-fuzz/s1/alarm", 3: "raised: door open"}]
    corpus = (sign(encode_payload("gw-fuzz", 1, 0, True, records), key),
              sign(encode_payload("gw-fuzz", 1, 0, True, records[:1]), key),  # a conflict with the first
              sign(encode_payload("gw-fuzz", 7, 42, False, records, anchor=(12.5, 1000.0)), key))
    edge = [{-2: "gw-fuzz/s1/count", -3: (1 << 63) - 1, 2: (1 << 63) - 1}, {6: -1, 2: 1.5e300}]
    payloads = (encode_payload("gw-fuzz", 2, 1, True, records), encode_payload("gw-fuzz", 2, 2, False, records[2:]),
                encode_payload("gw-fuzz", 2, 3, True, records[:2], anchor=(1.5, 2.5)),
                encode_payload("gw-fuzz", (1 << 63) - 1, (1 << 63) - 1, True, edge))
    return corpus, payloads


def _http_requests(corpus):
    """Whole POST requests carrying the corpus (and a keep-alive pair), as the HTTP uplink sends them."""
    from gateway.core.wire import HTTP_CONTENT_TYPE
    head = "POST /v1/batches HTTP/1.1\r\nHost: rx\r\nContent-Type: %s\r\nContent-Length: %%d\r\n\r\n" % (
        HTTP_CONTENT_TYPE)
    return tuple((head % len(c)).encode() + c for c in corpus) + (
        b"GET /stats HTTP/1.1\r\nHost: rx\r\n\r\n" + (head % len(corpus[2])).encode() + corpus[2],)


def _http_target(rx, checked):
    """The receiver's HTTP front without a socket (``backend.httpd.MemoryFront``): request bytes in, answer out."""
    import re

    from backend.httpd import MemoryFront
    front = MemoryFront(rx)

    def http(raw):
        answer = checked(lambda: front.answer(raw))
        for status in re.findall(rb"^HTTP/1\.[01] (\d{3}) ", answer, re.M):
            # 505 (HTTP version) is the protocol's own answer, not our failure.
            if status[:1] == b"5" and status != b"505":
                raise ReceiverFinding("the HTTP path answered %s to input" % status.decode())
    return http


def _receiver_targets():
    """``Receiver.process`` and the HTTP request path, on one in-memory database kept for the whole run (so
    repeats, conflicts and stored batches are all reached). Only returned statuses are allowed: an exception, a
    5xx for input or an ``internal_errors``/``http_errors`` count is a finding."""
    import logging

    from gateway.adapters.keys import SigningKey, TrustStore
    import zlib

    from backend.receiver import Receiver, inflate
    from gateway.core.errors import VerifyError
    from gateway.core.wire import sign
    key = SigningKey.from_seed(bytes(range(32)))
    operator = SigningKey.from_seed(bytes(range(1, 33)))
    rx = Receiver(":memory:", TrustStore({"keys": [key.jwk("gw-fuzz")]}),
                  operators={operator.kid_bytes: operator.public})
    corpus, payloads = _receiver_corpus(key)
    quiet = [logging.getLogger(name) for name in ("backend.receiver", "backend.httpd", "uvicorn.error")]

    def checked(call):
        before = rx.counters["internal_errors"], rx.counters["http_errors"]
        for logger in quiet:  # a rejection logs a WARNING: millions of them are not the point of a fuzz run
            logger.disabled = True
        try:
            result = call()
        finally:
            for logger in quiet:
                logger.disabled = False
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

    def deflated(data):
        """A ``Content-Encoding: deflate`` body: the bounded inflate alone (a small bound, so mutated streams reach
        ``oversize`` too), then the whole path. Only ``oversize`` and ``malformed`` may come out of the inflate."""
        try:
            out = inflate(data, 4096)
        except VerifyError as exc:
            if exc.reason not in ("oversize", "malformed"):
                raise ReceiverFinding("inflate rejected with reason %r" % exc.reason) from None
        else:
            if len(out) > 4096:
                raise ReceiverFinding("inflate gave %d bytes over its bound" % len(out))
        status, body = checked(lambda: rx.process(data, "deflate"))
        if status >= 500 or not isinstance(body, dict):
            raise ReceiverFinding("process answered %d %r to a deflated body" % (status, body))

    def queue(data):
        """``POST /v1/commands``: any bytes; only a 4xx or a 2xx may come back."""
        status, body = checked(lambda: rx.queue_command(data))
        if status >= 500 or not isinstance(body, dict):
            raise ReceiverFinding("queue_command answered %d %r to input" % (status, body))

    from gateway.core.commands import sign_command
    commands_corpus = tuple(sign_command(operator, "gw-fuzz", n, 2_000_000_000, action)
                            for n, action in ((1, "restart"), (2, "store_requeue")))
    return [Target("receiver.commands", queue, commands_corpus, ()),
            Target("receiver.process", process, corpus, ()),
            Target("receiver.signed_payload", signed_payload, payloads, ()),
            Target("receiver.deflate", deflated, tuple(zlib.compress(c, 6) for c in corpus[:4])
                   + (zlib.compress(bytes(8192)),), ()),
            Target("receiver.http", _http_target(rx, checked), _http_requests(corpus), (), max_len=8192)]


def _config_targets():
    from gateway.app import config
    from gateway.app.console.protocol import LineDiscipline
    from gateway.core.errors import ConfigError
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    example = os.path.join(here, "deploy", "config.example.toml")
    corpus = [open(example, "rb").read()] if os.path.exists(example) else []
    corpus += [
        b'[gateway]\nid = "gw-f"\n[uplink]\nkind = "mqtt"\n[uplink.mqtt]\nhost = "b.example"\ntls = true\n'
        b'[[sources]]\ntype = "serial"\nport = "/dev/x"\nprotocol = "modbus"\npoll_s = 5\n'
        b'slaves = [{id = 1, registers = [{name = "v", address = 0, type = "float32"}]}]\n'
        b'[[sources]]\ntype = "ble"\nsensors = [{mac = "A4:C1:38:00:00:01", key = "00112233445566778899aabbccddeeff"}]\n'
        b'[[rules]]\nmatch = {sensor = "*", name = "temp"}\nhigh = 8.0\nhysteresis = 0.5\n',
        b'[batch]\ntime_quantum_s = 0.5\nmax_age_s = 1e1\n[console]\nidle_lock_s = 60\n',
    ]

    def load_text(data):
        return config.loads(data.decode("utf-8", "replace"), "fuzz.toml")

    def line_discipline(data):
        """Bytes in, whole and split in two; the invariants the console relies on are checked too."""
        for chunks in ((data,), (data[:len(data) // 2], data[len(data) // 2:])):
            disc = LineDiscipline(max_line=40)
            for i, chunk in enumerate(chunks):
                disc.mask = bool(i % 2)
                echo, lines = disc.feed(chunk)
                if not isinstance(echo, bytes):
                    raise TypeError("echo is not bytes")
                for line in lines:
                    if len(line.text) > 40 or any(not " " <= ch <= "~" for ch in line.text):
                        raise AssertionError("line escapes the discipline: %r" % (line.text,))
        return lines

    protocol_corpus = (b"status\r\n", b"unlock\r123456\r\n", b"ab\x7fc\x1b[A\x1bOPd\x15e\x03\r\n",
                       b"x" * 60 + b"\r", b"config set batch.max_age_s 5\n")
    return [Target("config.loads", load_text, tuple(corpus), (ConfigError,)),
            Target("console.line_discipline", line_discipline, protocol_corpus, ())]


def targets():
    return _wire_targets() + _command_targets() + _receiver_targets() + _driver_targets() + _config_targets()
