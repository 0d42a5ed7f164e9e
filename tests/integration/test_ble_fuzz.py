"""Fuzzing the BLE decoders: >= 100,000 random and mutated inputs each, only DecodeError or a valid list.

Hypothesis draws a seed and a set of mutation operators; each example expands into a chunk of inputs with
``random.Random(seed)``, so 1000 examples x CHUNK inputs stay fast and reproducible (derandomize=True). Mutations
start from the valid vectors in tests/vectors (bit flips, truncation, extension, insertion, deletion, splicing)
plus pure random bytes. Encrypted BTHome is fuzzed twice: mutated ciphertext (must fail the MIC) and mutated
plaintext sealed with the right key (exercises the object parser behind the decryption).
"""

import json
import pathlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = pathlib.Path(__file__).resolve().parents[2]

from cryptography.hazmat.primitives.ciphers.aead import AESCCM  # noqa: E402

from drivers.ble import atc, bthome, ess, ruuvi  # noqa: E402
from gateway.core.errors import DecodeError  # noqa: E402
from gateway.core.model import Measurement  # noqa: E402

EXAMPLES = 1000
CHUNK = 110  # > 100 so that the 100,000 floor holds even if hypothesis skips a few duplicate examples
TARGET = 100_000
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
MAC = "54:48:E6:8F:80:A5"
MAC_BYTES = bytes.fromhex("5448e68f80a5")

REASONS = {"too_short", "too_long", "out_of_range", "bad_length", "bad_version", "unknown_object", "bad_value",
           "bad_mic", "no_key", "no_mac", "downgrade", "replay", "encrypted_unsupported", "unknown_characteristic", "bad_type"}


def _seeds(fmt):
    out = []
    for path in sorted((ROOT / "tests" / "vectors" / fmt).glob("*.json")):
        case = json.loads(path.read_text())
        text = case["input"]
        if fmt == "ess":
            text = text.partition(":")[2]
        out.append(bytes.fromhex(text.replace(" ", "")))
    return [s for s in out if s]


def _flip(rng, data):
    if not data:
        return data
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _byte(rng, data):
    if not data:
        return data
    b = bytearray(data)
    b[rng.randrange(len(b))] = rng.choice((0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    return bytes(b)


def _truncate(rng, data):
    return data[:rng.randrange(len(data) + 1)]


def _extend(rng, data):
    return data + rng.randbytes(rng.randint(1, 8))


def _insert(rng, data):
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.randbytes(rng.randint(1, 4)) + data[i:]


def _delete(rng, data):
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 3):]


def _splice(rng, data):
    i = rng.randrange(len(data) + 1)
    return data[:i] + data[rng.randrange(len(data) + 1):]


def _random(rng, data):
    return rng.randbytes(rng.randint(0, 40))


OPS = (_flip, _byte, _truncate, _extend, _insert, _delete, _splice, _random)


def _inputs(seed, ops, seeds):
    rng = random.Random(seed)
    for _ in range(CHUNK):
        data = rng.choice(seeds)
        for _ in range(rng.randint(1, 3)):
            data = rng.choice(ops)(rng, data)
        yield data


def _check(call, data):
    try:
        result = call(data)
    except DecodeError as exc:
        assert exc.reason in REASONS, (exc.reason, data.hex())
        return
    assert isinstance(result, list), data.hex()
    for m in result:
        assert isinstance(m, Measurement) and isinstance(m.name, str) and m.name, data.hex()
        assert m.value is not None


def _fuzz(call, seeds):
    count = [0]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(seed=st.integers(0, 2**64 - 1), ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=4, unique=True))
    def run(seed, ops):
        for data in _inputs(seed, ops, seeds):
            _check(call, data)
            count[0] += 1

    run()
    assert count[0] >= TARGET, count[0]


def _seal(plain, counter):
    nonce = MAC_BYTES + b"\xd2\xfc\x41" + counter.to_bytes(4, "little")
    sealed = AESCCM(KEY, tag_length=4).encrypt(nonce, plain, None)
    return b"\x41" + sealed[:-4] + counter.to_bytes(4, "little") + sealed[-4:]


def test_fuzz_bthome_plain():
    _fuzz(bthome.decode, _seeds("bthome"))


def test_fuzz_bthome_encrypted_ciphertext():
    aead_seeds = [s for s in _seeds("bthome") if s[0] & 1] + [_seal(bytes.fromhex("02ca0903bf13"), 5)]
    _fuzz(lambda data: bthome.decode(data, mac=MAC, key=KEY), aead_seeds)


def test_fuzz_bthome_encrypted_plaintext():
    """Mutated object lists sealed with the right key: the MIC passes, the parser must still hold."""
    plain_seeds = [s[1:] for s in _seeds("bthome") if s[0] == 0x40]
    counter = [0]

    def call(plain):
        counter[0] += 1
        return bthome.decode(_seal(plain, counter[0]), mac=MAC, key=KEY)

    _fuzz(call, plain_seeds)


def test_fuzz_bthome_stateful_decoder():
    dec = bthome.BTHomeDecoder({MAC: KEY})
    _fuzz(lambda data: dec.decode(data, MAC), _seeds("bthome"))


def test_fuzz_ruuvi():
    _fuzz(ruuvi.decode, _seeds("ruuvi"))


def test_fuzz_atc():
    _fuzz(atc.decode, _seeds("atc"))


@pytest.mark.parametrize("uuid16", sorted(ess.CHARACTERISTICS))
def test_fuzz_ess(uuid16):
    _fuzz(lambda data: ess.decode(uuid16, data), _seeds("ess"))
