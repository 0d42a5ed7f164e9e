"""Issue 13 at the wire: untrusted CBOR, memory, trailing bytes, numeric bounds. Every input is real bytes.

Each test names the finding it closes; on the code before the fix each one failed (an escaping exception, growing
memory, an accepted batch).
"""

import json
import math
import subprocess
import sys

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import cbor_strict, senml, wire
from gateway import cli
from gateway.core.errors import VerifyError
from gateway.core.model import Reading
from backend.receiver import Receiver

GOOD = {"v": 1, "gw": "gw-test", "boot": 1, "seq": 1, "clock": True, "senml": [{-2: "gw-test/s/x", 2: 1}]}
INT64_MAX = (1 << 63) - 1


def signed(key, payload_bytes):
    return wire.sign(payload_bytes, key)


def payload(**change):
    return cbor2.dumps(dict(GOOD, **change))


def reason_of(data, trust):
    with pytest.raises(VerifyError) as err:
        wire.verify(data, trust)
    return err.value.reason


# -- finding 9: only the CBOR the CDDL allows reaches the decoder ------------------------------------------------
# Whole messages (checked before the signature): each used to escape verify() as a traceback or be decoded anyway.
ENVELOPES = {
    "decimal fraction": "c482006161",  # decimal.InvalidOperation before
    "shared value as map key": "d81ca1d81d0000",
    "self-referencing shared array": "d81c81d81d00",
    "tag 18 inside a bignum": "c2d284",
    "indefinite text": "7f61ffff",
    "indefinite array": "d29f40a04040ff",
    "stray break": "ff",
    "reserved additional information": "d2841c",
    "undefined": "f7",
    "simple value 16": "f0",
    "two-byte simple value": "f820",
    "truncated head": "d2841b00",
    "string past the end": "d2845a7fffffff",
    "array longer than the input": "d29b7fffffffffffffff",
    "invalid UTF-8": "d28462c328a0404040",
}


@pytest.mark.parametrize("hexdata", ENVELOPES.values(), ids=ENVELOPES.keys())
def test_disallowed_cbor_in_the_envelope_is_malformed(hexdata, trust):
    assert reason_of(bytes.fromhex(hexdata), trust) == "malformed"


def test_tags_in_the_protected_header_are_malformed(signing_key, trust):
    good = cbor2.loads(wire.sign(payload(), signing_key)).value
    for header in ("a3012703183c04c44b6b50724b5f716d78565761",  # a tag on the kid
                   "a201270327" + "a1c482006161",  # a decimal fraction deep inside
                   "bf0127ff"):  # indefinite map
        data = cbor2.dumps(cbor2.CBORTag(18, [bytes.fromhex(header), {}, good[2], good[3]]))
        assert reason_of(data, trust) == "malformed", header


# Payloads (checked after the signature): signed with the trusted key, so only the CBOR check can refuse them.
PAYLOADS = {
    "decimal fraction": "c482006161",
    "bignum seq": "a163736571c249010000000000000000",
    "epoch-time tag": "a162677767c16161",
    "indefinite map": "bf6176" + "01ff",
    "indefinite byte string": "a162766400" + "5f4101ff",
    "duplicate key gw": "a362677767677700" + "62677767677701" + "617601",
    "duplicate senml label": "a16573656e6d6c81a2020102" + "02",
    "duplicate int key, long form": "a16573656e6d6c81a2020118" + "0202",
    "float map key": "a1f93c0001",
    "array as map key": "a1800001",
    "deep nesting": "81" * 40 + "00",
    "undefined": "a16176f7",
    "trailing byte in the payload": "a1617601" + "00",
}


@pytest.mark.parametrize("hexdata", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_disallowed_cbor_in_the_payload_is_malformed(hexdata, signing_key, trust):
    assert reason_of(signed(signing_key, bytes.fromhex(hexdata)), trust) == "malformed"


def test_every_truncation_of_a_batch_is_malformed(signing_key, trust):
    """Fed whole and then cut at every byte (h11's habit): every prefix is a typed rejection."""
    data = wire.sign(payload(), signing_key)
    wire.verify(data, trust)
    for n in range(len(data)):
        assert reason_of(data[:n], trust) == "malformed", n


# Values the checker must pass: whatever cbor2 encodes from the types the wire uses, nested, with unique keys.
_leaf = (st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1) | st.floats(width=16) | st.floats(width=32)
         | st.floats() | st.booleans() | st.none() | st.text(max_size=30) | st.binary(max_size=30))
_values = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1) | st.text(max_size=8), inner, max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_checker_accepts_what_cbor2_encodes_and_measures_it(value):
    data = cbor2.dumps(value)
    assert cbor_strict.item_end(data + b"\x00\x01", 0) == len(data)
    cbor_strict.check(data)
    with pytest.raises(cbor_strict.CBORStrictError):
        cbor_strict.check(data + b"\x00")


def test_checker_bounds_nesting():
    cbor_strict.check(b"\x81" * 16 + b"\x00")
    with pytest.raises(cbor_strict.CBORStrictError, match="deeper than 16"):
        cbor_strict.check(b"\x81" * 17 + b"\x00")
    with pytest.raises(cbor_strict.CBORStrictError, match="deeper"):
        cbor_strict.check(b"\xa1\x00" * 17 + b"\x00")


def test_checker_module_is_pure():
    code = ("import sys, gateway.core.cbor_strict; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'asyncio', 'socket', 'sqlite3', 'cbor2'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "[]", out.stderr


# -- finding 10: malformed input must not grow the process ------------------------------------------------------
def _rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_rss_stays_flat_over_50000_malformed_batches(signing_key, trust):
    bodies = [bytes.fromhex(h) for h in ("7f61ffff", "7f61ff", "5f41ff", "9f9f9fff", "bf61ff", "c482006161",
                                         "d81ca1d81d0000", "d28440a04040ff", "d2845a7fffffff")]
    bodies.append(wire.sign(bytes.fromhex("7f61ffff"), signing_key))  # malformed payload past the signature
    for data in bodies * 200:  # warm up: caches, free lists, interned strings
        with pytest.raises(VerifyError):
            wire.verify(data, trust)
    before = _rss_kb()
    rounds = 50_000 // len(bodies)
    for _ in range(rounds):
        for data in bodies:
            try:
                wire.verify(data, trust)
            except VerifyError:
                pass
            else:
                raise AssertionError("malformed input accepted: %s" % data.hex())
    grown = _rss_kb() - before
    # Before the fix cbor2 leaked about 2.7 kB per '7f61ffff': 50 000 inputs grew a receiver by ~100 MB.
    assert grown < 4096, "RSS grew by %d kB over %d malformed inputs" % (grown, rounds * len(bodies))


# -- finding 4: one batch is one item; files are CBOR sequences -------------------------------------------------
def test_trailing_bytes_after_a_batch_are_malformed(signing_key, trust):
    data = wire.sign(payload(), signing_key)
    wire.verify(data, trust)
    for tail in (b"\x00", b"\xff", data):  # a byte, a break, a whole second batch
        assert reason_of(data + tail, trust) == "malformed"


def _batches(key, n, gw="gw-test"):
    return [wire.sign(cbor2.dumps(dict(GOOD, gw=gw, seq=i, senml=[{-2: gw + "/s/x", 2: i}])), key) for i in range(n)]


def test_cli_verifies_every_batch_of_a_cbor_sequence(tmp_path, signing_key, capsys):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [signing_key.jwk("gw-test")]}))
    seq_file, single = tmp_path / "flush.cbor", tmp_path / "one.cose"
    seq_file.write_bytes(b"".join(_batches(signing_key, 11)))
    single.write_bytes(_batches(signing_key, 1)[0])
    assert cli.main(["verify", "--trust", str(jwks), str(seq_file), str(single)]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["seq"] for line in lines] == list(range(11)) + [0]
    assert "verified 12 batches in 2 files" in err


def test_cli_names_the_file_and_the_failing_batch(tmp_path, signing_key, capsys):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [signing_key.jwk("gw-test")]}))
    batches = _batches(signing_key, 4)
    bad = bytearray(batches[2])
    bad[-1] ^= 1  # signature
    path = tmp_path / "flush.cbor"
    path.write_bytes(b"".join(batches[:2]) + bytes(bad) + batches[3])
    assert cli.main(["verify", "--trust", str(jwks), str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "%s: batch 2 rejected (bad_signature)" % path in err
    assert "batch 0" not in err and "batch 3" not in err
    path.write_bytes(b"".join(batches[:3]) + b"\x7f\x61")  # a broken item: framing stops there
    assert cli.main(["verify", "--trust", str(jwks), str(path)]) == 1
    assert "batch 3 is not allowed CBOR" in capsys.readouterr().err


def test_cli_refuses_an_empty_file(tmp_path, signing_key, capsys):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [signing_key.jwk("gw-test")]}))
    empty = tmp_path / "empty.cbor"
    empty.write_bytes(b"")
    assert cli.main(["verify", "--trust", str(jwks), str(empty)]) == 1
    assert "%s: rejected (malformed): no batch" % empty in capsys.readouterr().err


# -- finding 2 (wire part): bounded integers, finite numbers --------------------------------------------------
BOUNDS = [
    (dict(seq=INT64_MAX + 1), "bad_payload"), (dict(seq=(1 << 64) - 1), "bad_payload"),
    (dict(boot=INT64_MAX + 1), "bad_payload"), (dict(seq=1 << 64), "malformed"),  # needs a bignum tag
    (dict(anchor=[float("nan"), 1.0]), "bad_payload"), (dict(anchor=[1, float("inf")]), "bad_payload"),
    (dict(anchor=[INT64_MAX + 1, 1]), "bad_payload"),
    (dict(senml=[{-2: "g/s/x", 2: INT64_MAX + 1}]), "bad_senml"),
    (dict(senml=[{-2: "g/s/x", 2: -(1 << 63) - 1}]), "bad_senml"),
    (dict(senml=[{-2: "g/s/x", 2: float("nan")}]), "bad_senml"),
    (dict(senml=[{-2: "g/s/x", 2: float("-inf")}]), "bad_senml"),
    (dict(senml=[{-2: "g/s/x", -3: float("inf"), 2: 1}]), "bad_senml"),
    (dict(senml=[{-2: "g/s/x", 6: float("nan"), 2: 1}]), "bad_senml"),
    (dict(senml=[{-2: "g/s/x", -5: float("nan"), 2: 1}]), "bad_senml"),
    (dict(senml=[{-2: "g/s/x", 5: float("inf")}]), "bad_senml"),
    (dict(senml=[{-2: "g/s/x", -3: 1.7e308, 6: 1.7e308, 2: 1}]), "bad_senml"),  # bt + t overflows to inf
    (dict(senml=[{-2: "g/s/x", -3: INT64_MAX, 6: 1, 2: 1}]), "bad_senml"),  # bt + t leaves int64
    (dict(senml=[{-2: "g/s/x", -5: INT64_MAX, 2: 1}]), "bad_senml"),  # bv + v leaves int64
]


@pytest.mark.parametrize("change,reason", BOUNDS, ids=[repr(c)[:60] for c, _ in BOUNDS])
def test_out_of_bounds_numbers_are_permanent_rejections(change, reason, signing_key, trust, tmp_path):
    data = wire.sign(cbor2.dumps(dict(GOOD, **change)), signing_key)
    assert reason_of(data, trust) == reason
    # And a backend never meets them: the reference receiver answers 400 instead of failing at INSERT.
    rx = Receiver(str(tmp_path / "rx.sqlite"), trust)
    try:
        status, body = rx.process(data)
    finally:
        rx.close()
    assert (status, body["error"]) == (400, reason)


def test_limits_themselves_are_accepted(signing_key, trust):
    edge = dict(GOOD, boot=INT64_MAX, seq=INT64_MAX, anchor=[-(1 << 63), 1.7e308],
                senml=[{-2: "gw-test/s/x", -3: INT64_MAX - 1, 6: 1, 2: -(1 << 63)}, {2: 1.7e308, 5: -1e300}])
    batch = wire.verify(wire.sign(cbor2.dumps(edge), signing_key), trust)
    assert (batch.boot, batch.seq) == (INT64_MAX, INT64_MAX)
    assert batch.records[0]["t"] == INT64_MAX and batch.records[0]["v"] == -(1 << 63)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -math.inf, 1 << 63, -(1 << 63) - 1])
def test_encoder_refuses_to_seal_what_the_wire_cannot_carry(value):
    with pytest.raises(senml.EncodeError):
        senml.encode_records([Reading("s", "x", value, None, 100.0)], (), "g/")
    with pytest.raises(senml.EncodeError):
        senml.compact_number(value)
    with pytest.raises(senml.EncodeError):
        senml.encode_records([Reading("s", "x", 1.0, None, value if isinstance(value, float) else 1e300)], (), "g/")


def test_integral_floats_beyond_int64_stay_floats(signing_key, trust):
    big = float(1 << 63) * 1.5  # integral, within uint64: the encoder used to emit it as a CBOR integer
    assert senml.compact_number(big).__class__ is float
    records = senml.encode_records([Reading("s", "x", big, None, 100.0)], (), "gw-test/")
    batch = wire.verify(wire.sign(wire.encode_payload("gw-test", 1, 0, True, records), signing_key), trust)
    assert batch.records[0]["v"] == big
