"""Fuzzing the serial framers and decoders: at least 100,000 random and mutated inputs each produce only valid
results or typed errors (``DecodeError`` subclasses), never another exception.

Hypothesis draws a seed and a mutation rate; each example expands, with a seeded PRNG, into a chunk of 100 inputs
(mutated real frames and pure noise) fed in random pieces. 1000 examples x 100 inputs = 100,000 per framer.
"""

import pathlib
import random

from hypothesis import given, settings, strategies as st

ROOT = pathlib.Path(__file__).resolve().parents[2]

from drivers.serial import lines, modbus, nmea
from gateway.core.errors import DecodeError

PER_EXAMPLE = 100
EXAMPLES = 1000
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None)

NMEA_SEEDS = [nmea.with_checksum(b) for b in (
    b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
    b"GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W",
    b"GPVTG,054.7,T,034.4,M,005.5,N,010.2,K",
    b"GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1",
    b"GNRMC,083559.00,V,,,,,,,010624,,,N",
    b"GPGGA,184353.07,1929.045,S,02410.506,E,1,04,2.6,100.00,M,-33.9,M,,0000",
)]
LINE_SEEDS = [b"id=fridge-3 temp[Cel]=4.21 hum=55.0\n", b"tank-1,21.50,40.2\n", b"id=a temp=4.2*68\r\n", b"v=1e3\n"]
SPECIALS = b"$*,\r\n.-0123456789ANSEW!\x11\x03\x04\x83"


def mutate(rng, data, rate):
    data = bytearray(data)
    for _ in range(rng.randrange(1 + rate)):
        op = rng.randrange(6)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif op == 2:
            del data[pos:pos + rng.randrange(1, 10)]
        elif op == 3:
            data[pos:pos] = bytes([SPECIALS[rng.randrange(len(SPECIALS))]])
        elif op == 4:
            data[pos:pos] = data[rng.randrange(len(data) + 1):][:rng.randrange(1, 20)]
        else:
            del data[pos:]
    return bytes(data)


def pieces(rng, data):
    i = 0
    while i < len(data):
        n = rng.choice((1, 2, 7, 64, len(data)))
        yield data[i:i + n]
        i += n


def inputs(rng, seeds, rate):
    for _ in range(PER_EXAMPLE):
        if rng.random() < 0.1:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120)))
        else:
            base = b"".join(rng.choice(seeds) for _ in range(rng.randrange(1, 4)))
            yield mutate(rng, base, rate)


def run_fuzz(body):
    seen = [0]

    @SETTINGS
    @given(seed=st.integers(0, 2 ** 32 - 1), rate=st.integers(0, 8))
    def check(seed, rate):
        seen[0] += body(random.Random(seed), rate)

    check()
    assert seen[0] >= EXAMPLES * PER_EXAMPLE


def test_fuzz_nmea():
    def body(rng, rate):
        reader = nmea.NmeaReader()
        n = 0
        for data in inputs(rng, NMEA_SEEDS, rate):
            n += 1
            for piece in pieces(rng, data):
                for s in reader.feed(piece):
                    assert s.kind in ("GGA", "RMC", "VTG", "GSA") and isinstance(s.measurements, tuple)
                    for m in s.measurements:
                        assert m.value == m.value and m.value - m.value == 0
            try:
                nmea.decode_sentence(data.strip(b"$\r\n").rpartition(b"*")[0] or data)
            except DecodeError:
                pass
        assert all(isinstance(k, str) and v > 0 for k, v in reader.counters.items())
        assert len(reader.framer._buf) <= reader.framer.max_len
        return n

    run_fuzz(body)


def test_fuzz_modbus():
    req = modbus.read_input(1, 0, 6)
    good = modbus.with_crc(bytes([1, 4, 12]) + bytes(range(12)))
    seeds = [good, modbus.with_crc(b"\x01\x84\x02"), bytes.fromhex("110402000AF8F4")]

    def body(rng, rate):
        framer = modbus.ResponseFramer()
        n = 0
        for data in inputs(rng, seeds, rate):
            n += 1
            framer.expect(req)
            try:
                for piece in pieces(rng, data):
                    r = framer.feed(piece)
                    if r is not None:
                        assert r.slave == 1 and r.function == 4 and len(r.registers) == 6
            except modbus.ModbusException as exc:
                assert exc.reason.startswith("exception_") and 0 <= exc.code <= 255
            if framer.pending:
                assert framer.timeout().reason in ("bad_crc", "truncated", "timeout")
            try:
                modbus.parse_request(data[:8])
            except DecodeError:
                pass
            try:
                modbus.cli_decode(data.hex())
            except DecodeError:
                pass
        return n

    run_fuzz(body)


def test_fuzz_lines():
    kv = lines.LineDecoder(units={"hum": "%RH"})
    csv = lines.LineDecoder("csv", columns=["id", "temp", "hum"])

    def body(rng, rate):
        framer = lines.LineFramer(64)
        n = 0
        for data in inputs(rng, LINE_SEEDS, rate):
            n += 1
            for piece in pieces(rng, data):
                for line in framer.feed(piece):
                    assert 0 < len(line) <= 64 and b"\n" not in line and b"\r" not in line
                    for decoder in (kv, csv):
                        try:
                            sensor, ms = decoder.decode(line)
                        except DecodeError:
                            continue
                        assert ms and all(m.name for m in ms)
        assert len(framer._buf) <= 64
        return n

    run_fuzz(body)
