"""The fuzz targets of the drivers: every decoder and framer that meets bytes from a radio or a serial line, and
the ``decode`` CLI dispatch (``tools.fuzz``; collected by ``tools.fuzz_targets.targets``).

Mostly corpus: the published vectors of ``tests/vectors`` and the examples they start with.
"""

from tools.fuzz import Target


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
