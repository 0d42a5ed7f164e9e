"""The fuzz targets: every entry point that parses bytes or text from outside (``tools.fuzz``).

One function per area builds its targets; ``targets()`` collects them. A target's ``allowed`` errors are the
project's typed errors for that entry point: anything else escaping is a bug.
"""

import os

from tools.fuzz import Target


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
    rx = Receiver(":memory:", TrustStore({"keys": [key.jwk("gw-fuzz")]}))
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

    return [Target("receiver.process", process, corpus, ()),
            Target("receiver.signed_payload", signed_payload, payloads, ()),
            Target("receiver.deflate", deflated, tuple(zlib.compress(c, 6) for c in corpus[:4])
                   + (zlib.compress(bytes(8192)),), ()),
            Target("receiver.http", _http_target(rx, checked), _http_requests(corpus), (), max_len=8192)]


def _vectors(fmt):
    """The test vectors of ``fmt`` (``tests/vectors/<fmt>/*.json``), or ``[]`` when the tests are not installed."""
    import json
    import pathlib
    folder = pathlib.Path(__file__).resolve().parent.parent / "tests" / "vectors" / fmt
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _hex_inputs(fmt, seeds=()):
    """Corpus of a radio format: published example payloads (``seeds``) plus every vector input."""
    out = [bytes.fromhex(s) for s in seeds]
    for case in _vectors(fmt):
        text = case.get("input") or ""
        if fmt == "ess":
            text = text.partition(":")[2]
        try:
            data = bytes.fromhex(text.replace(" ", ""))
        except ValueError:
            continue
        if data and data not in out:
            out.append(data)
    return tuple(out)


#: the bthome.io encryption example: bindkey and MAC
BTHOME_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
BTHOME_MAC = "54:48:E6:8F:80:A5"


def _bthome_plain():
    plain = _hex_inputs("bthome", ("4002ca0903bf13", "40000901 5d025d0903b71804138a01".replace(" ", "")))
    return tuple(d for d in plain if not d[0] & 0x01)


def _ruuvi_inputs():
    return _hex_inputs("ruuvi", ("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F",))  # Ruuvi docs, valid


def _bthome_targets(allowed):
    """BTHome: plain, encrypted (mutated ciphertext, stateful replay check) and sealed (mutated plaintext)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    from drivers.ble import bthome
    key, mac = BTHOME_KEY, BTHOME_MAC
    mac_bytes = bytes.fromhex(mac.replace(":", ""))
    aead = AESCCM(key, tag_length=4)
    bthome_plain = _bthome_plain()
    bthome_sealed = ("41e445f3c9962b332211006c7c4519", "413e932cc7175f34221100553876af")  # bthome-ble tests
    crypto = bthome.BTHomeDecoder({mac: key}, reset_adverts=2, reset_gap_s=0.0)
    clock = [0.0]

    def bthome_encrypted(data):
        clock[0] += 1.0
        return crypto.decode(data, mac, clock[0])

    counter = [0]

    def bthome_sealed_plain(data):
        """``data`` is a plaintext object list: seal it with the next counter, so the parser behind the MIC
        sees mutated objects (a mutated ciphertext only ever fails the MIC)."""
        counter[0] = (counter[0] + 1) & 0xFFFFFFFF
        ctr = counter[0].to_bytes(4, "little")
        sealed = aead.encrypt(mac_bytes + b"\xd2\xfc\x41" + ctr, data, None)
        return crypto.decode(b"\x41" + sealed[:-4] + ctr + sealed[-4:], mac, clock[0])

    return [
        Target("ble.bthome", bthome.decode, bthome_plain, allowed, 300),
        Target("ble.bthome.encrypted", bthome_encrypted, tuple(bytes.fromhex(s) for s in bthome_sealed), allowed,
               300),
        Target("ble.bthome.sealed", bthome_sealed_plain, tuple(d[1:] for d in bthome_plain), allowed, 260),
    ]


def _ess_targets(allowed):
    from drivers.ble import ess
    from gateway.core.errors import DecodeError
    ess_uuids = sorted(ess.CHARACTERISTICS)

    def ess_decode(data):
        if not data:
            raise DecodeError("empty", reason="too_short")
        return ess.decode(ess_uuids[data[0] % len(ess_uuids)], data[1:])

    ess_corpus = []
    for case in _vectors("ess"):
        uuid_text, _, hex_text = case["input"].partition(":")
        try:
            uuid16, data = ess.parse_uuid(uuid_text), bytes.fromhex(hex_text)
        except (DecodeError, ValueError):
            continue
        if "expected" in case and uuid16 in ess_uuids:
            ess_corpus.append(bytes((ess_uuids.index(uuid16),)) + data)
    ess_corpus = tuple(ess_corpus) or (bytes((ess_uuids.index(0x2A6E),)) + b"\xca\x09",)
    return [Target("ble.ess", ess_decode, ess_corpus, allowed, 16)]


def _ruuvi_atc_targets(allowed):
    from drivers.ble import atc, ruuvi
    return [Target("ble.ruuvi", ruuvi.decode, _ruuvi_inputs(), allowed, 64),
            Target("ble.atc", atc.decode, _hex_inputs("atc"), allowed, 64)]


def _advert_targets(allowed):
    """The whole advert path: record table, selection, dedup, decoders, counters."""
    from drivers.ble.adverts import AdvertDecoder
    from drivers.ble.selection import Selection, SensorSpec
    adverts = AdvertDecoder(Selection([SensorSpec(BTHOME_MAC, None, BTHOME_KEY.hex(), "fuzz")]), rssi_interval_s=0,
                            dedup_window_s=0)
    open_adverts = AdvertDecoder(Selection(), rssi_interval_s=0, dedup_window_s=0)

    def advert_path(data):
        records = {0xFCD2: data, 0x181A: data}
        adverts.readings(BTHOME_MAC, records, {0x0499: data}, -60, 0.0)
        open_adverts.readings("A4:C1:38:00:00:01", records, {0x0499: data}, -60, 0.0)

    corpus = _bthome_plain() + _ruuvi_inputs() + _hex_inputs("atc")
    return [Target("ble.adverts", advert_path, corpus, allowed, 300)]


def _nmea_targets(allowed):
    from drivers.serial import nmea
    nmea_inputs = [c["input"].encode() + b"\r\n" for c in _vectors("nmea")] or [
        b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"]
    nmea_bodies = tuple(b[1:b.rindex(b"*")] for b in nmea_inputs if b"*" in b)

    def nmea_stream(data):
        reader = nmea.NmeaReader(max_len=400)
        reader.feed(data)
        return reader.counters

    return [
        Target("serial.nmea.sentence", nmea.decode_sentence, nmea_bodies, allowed, 400),
        Target("serial.nmea.stream", nmea_stream, (b"".join(nmea_inputs),) + tuple(nmea_inputs), allowed, 2048),
    ]


def _modbus_targets(allowed):
    from drivers.serial import modbus
    from gateway.core.errors import DecodeError
    mb_cases = [c for c in _vectors("modbus") if "response" in c] or [
        {"slave": 17, "function": 3, "address": 107, "count": 3, "request": "1103006B00037687",
         "response": "110306AE415652434049AD"}]
    mb_requests = tuple(bytes.fromhex(c["request"]) for c in mb_cases)
    mb_frames = tuple(bytes.fromhex(c["response"]) for c in mb_cases)
    entries = [modbus.RegisterEntry.from_dict(d) for d in (
        {"name": "f", "address": 0, "type": "float32"}, {"name": "u", "address": 2, "type": "uint16", "scale": 0.1},
        {"name": "i", "address": 0, "type": "int32", "word_order": "little", "scale": 1000})]

    def modbus_framer(data):
        req = modbus.read_holding(17, 0, 3) if len(data) < 2 or data[1] & 0x7F != 4 else modbus.read_input(17, 0, 3)
        framer = modbus.ResponseFramer()
        framer.expect(req)
        response = framer.feed(data)
        if response is None:
            raise framer.timeout()
        return modbus.decode_registers(entries, 0, response.registers)

    def modbus_frames(data):
        try:
            modbus.parse_request(data)
        except DecodeError:
            pass
        return modbus.cli_decode(data)

    return [
        Target("serial.modbus.framer", modbus_framer, mb_frames, allowed, 300),
        Target("serial.modbus.frames", modbus_frames, mb_frames + mb_requests, allowed, 300),
    ]


def _lines_targets(allowed):
    from drivers.serial import lines
    from gateway.core.errors import DecodeError
    line_streams = tuple(c["stream"].encode("latin-1") for c in _vectors("lines")) or (
        b"id=fridge-3 temp[Cel]=4.21\r\n",)
    kv = lines.LineDecoder()
    csv = lines.LineDecoder("csv", ["id", "temp", "hum"])

    def line_stream(data):
        out = []
        framer = lines.LineFramer(64)
        for line in framer.feed(data) + framer.feed(b"\n"):
            for dec in (kv, csv):
                try:
                    out.append(dec.decode(line))
                except DecodeError:
                    pass
        return out

    return [
        Target("serial.lines.stream", line_stream, line_streams, allowed, 1024),
        Target("serial.lines.parser", kv.decode, tuple(s.strip() for s in line_streams if b"=" in s), allowed,
               300),
    ]


def _cli_targets(allowed):
    """The decode CLI's dispatch: the first byte picks the format, the rest is what the technician typed."""
    from drivers.formats import FORMATS, cli_decoder
    from gateway.core.errors import DecodeError
    formats = sorted(FORMATS)
    cli_corpus = []
    for fmt in formats:
        for case in _vectors(fmt):
            text = case.get("input") or case.get("stream")
            if text is not None and "error" not in case and not case.get("key"):
                cli_corpus.append(bytes((formats.index(fmt),)) + text.strip().encode("latin-1"))
                break

    def cli_dispatch(data):
        if not data:
            raise DecodeError("empty", reason="empty")
        text = data[1:].decode("utf-8", "surrogateescape")
        return cli_decoder(formats[data[0] % len(formats)])(text, mac=BTHOME_MAC if data[0] & 0x80 else None,
                                                             key=BTHOME_KEY if data[0] & 0x40 else None)

    return [Target("cli.decode", cli_dispatch, tuple(cli_corpus), allowed, 600)]


def _driver_targets():
    """Every decoder and framer that meets bytes from a radio or a serial line, plus the ``decode`` CLI dispatch;
    one function per format.

    Corpus: the published vectors of ``tests/vectors`` (and, so the command works without the tests, the
    bthome.io, Ruuvi, pvvx, NMEA and Simply Modbus examples they start with). Only ``DecodeError`` may escape.
    """
    from gateway.core.errors import DecodeError
    allowed = (DecodeError,)
    return [t for build in (_bthome_targets, _ruuvi_atc_targets, _ess_targets, _advert_targets, _nmea_targets,
                            _modbus_targets, _lines_targets, _cli_targets) for t in build(allowed)]


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
    return _wire_targets() + _receiver_targets() + _driver_targets() + _config_targets()
