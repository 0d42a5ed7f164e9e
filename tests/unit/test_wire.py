"""Wire format: COSE_Sign1 + SenML-CBOR, checked against our verifier, the committed vectors and pycose."""

import json

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from gateway.core import senml, wire
from gateway.core.errors import KeyFileError, VerifyError
from gateway.adapters.keys import SigningKey, TrustStore, b64url_decode
from gateway.core.model import Event, Reading
from tests.support.wire_vectors import build, is_current, load_all, pycose_verify

VECTORS = load_all()
CURRENT = [(name, vec) for name, vec in VECTORS if is_current(vec)]


def make_batch(key, readings, events=(), seq=0, clock=True, anchor=None, gw="gw-test", quantum=1.0):
    records = senml.encode_records(readings, events, gw + "/", time_quantum=quantum)
    return wire.sign(wire.encode_payload(gw, 3, seq, clock, records, anchor), key)


def test_both_format_versions_have_vectors():
    assert {vec.get("format", 1) for _, vec in VECTORS} == {1, 2} and wire.FORMAT_VERSION == 2
    assert all(cbor2.loads(bytes.fromhex(vec["payload_hex"]))["v"] == vec.get("format", 1) for _, vec in VECTORS)


@pytest.mark.parametrize("name,vec", CURRENT, ids=[v[0] for v in CURRENT])
def test_committed_vector_bytes_are_reproduced(name, vec):
    key, payload, cose = build(vec)
    assert key.kid == vec["kid"]
    assert payload.hex() == vec["payload_hex"]
    assert cose.hex() == vec["cose_hex"]


@pytest.mark.parametrize("name,vec", VECTORS, ids=[v[0] for v in VECTORS])
def test_committed_vectors_verify_with_ours_and_pycose(name, vec):
    data = bytes.fromhex(vec["cose_hex"])
    trust = TrustStore({"keys": [vec["jwk"]]})
    batch = wire.verify(data, trust)
    assert (batch.gw, batch.boot, batch.seq, batch.clock) == (vec["gw"], vec["boot"], vec["seq"], vec["clock"])
    assert pycose_verify(data, vec["jwk"]) is True
    want = sorted((r["sensor"], r["name"], r["t"]) for r in vec["readings"])
    got = sorted((rec["n"].split("/")[1], rec["n"].split("/")[2], rec["t"]) for rec in batch.records if "v" in rec)
    assert [(s, n) for s, n, _ in got] == [(s, n) for s, n, _ in want]
    for (_, _, t_got), (_, _, t_want) in zip(got, want):
        assert abs(t_got - t_want) <= vec["time_quantum"] / 2
    assert batch.version == vec.get("format", 1)
    values = {(rec["n"], rec["t"]): rec for rec in batch.records if "v" in rec}
    for r in vec["readings"]:
        got = [rec for (n, t), rec in values.items() if n == "%s/%s/%s" % (vec["gw"], r["sensor"], r["name"])
               and abs(t - r["t"]) <= vec["time_quantum"] / 2]
        assert len(got) == 1
        if batch.version == 1:  # a float rounded to the resolution: only the resolution gives the reading back
            res = r.get("resolution")
            assert round(got[0]["v"] / res) * res == pytest.approx(r["value"]) if res else got[0]["v"] == r["value"]
            assert "exact" not in got[0]
        else:  # the exact decimal, and the number nearest to it
            assert (got[0]["exact"], got[0]["v"]) == (r["exact"], r["value"])


def test_rfc8032_key_and_rfc8037_thumbprint():
    vec = VECTORS[0][1]
    key = SigningKey.from_seed(bytes.fromhex(vec["seed"]))
    # RFC 8032 section 7.1 TEST 1 public key, and its RFC 7638 thumbprint given in RFC 8037 appendix A.3.
    assert b64url_decode(key.jwk()["x"]).hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert key.kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"[:11]


def test_protected_header_and_layout(signing_key):
    data = make_batch(signing_key, [Reading("s1", "temp", 4.5, "Cel", 100.0)])
    msg = cbor2.loads(data)
    assert msg.tag == 18 and len(msg.value) == 4
    protected = cbor2.loads(msg.value[0])
    assert protected == {1: -8, 3: 60, 4: signing_key.kid_bytes}
    assert msg.value[1] == {}
    assert len(msg.value[3]) == 64
    payload = cbor2.loads(msg.value[2])
    assert set(payload) == {"v", "gw", "boot", "seq", "clock", "senml"}
    assert payload["v"] == wire.FORMAT_VERSION


def test_senml_uses_rfc8428_labels_and_base_fields(signing_key, trust):
    readings = [Reading("s1", "temp", 4.5, "Cel", 1000.0 + i) for i in range(5)]
    readings += [Reading("s1", "hum", 50 + i, "%RH", 1000.0 + i) for i in range(3)]
    payload = cbor2.loads(cbor2.loads(make_batch(signing_key, readings)).value[2])
    recs = payload["senml"]
    assert recs[0][senml.BT] == 1000
    names = [r.get(senml.BN) for r in recs if senml.BN in r]
    assert names == ["gw-test/s1/hum", "gw-test/s1/temp"]
    assert all(senml.N not in r for r in recs)
    assert sum(senml.BU in r for r in recs) == 2
    batch = wire.verify(cbor2.dumps(cbor2.loads(make_batch(signing_key, readings))), trust)
    temps = [r for r in batch.records if r["n"].endswith("/temp")]
    assert [r["t"] for r in temps] == [1000, 1001, 1002, 1003, 1004]
    assert all(r["u"] == "Cel" and r["v"] == 4.5 for r in temps)


@pytest.mark.parametrize("value,resolution,nbytes", [
    (21.0, None, 1), (4.25, None, 3), (4.31, 0.01, 3), (21.37, 0.01, 5), (21.37, None, 9), (0.1, None, 9),
    (123456.0, 1, 5), (-40.5, None, 3), (1013.25, 0.01, 5), (3.3000000000000003, 0.001, 5), (3.3000000000000003, 0.01, 3),
])
def test_shortest_float_keeps_the_resolution(value, resolution, nbytes):
    compact = senml.compact_number(value, resolution)
    encoded = cbor2.dumps(compact, canonical=True)
    assert len(encoded) == nbytes
    back = cbor2.loads(encoded)
    if resolution:
        assert round(back / resolution) == round(value / resolution)
    else:
        assert back == value


def test_time_quantum_rounds_relative_times():
    readings = [Reading("s", "x", 1, None, 1000.0 + 0.1 * i + 0.0004) for i in range(20)]
    recs = senml.encode_records(readings, (), "g/", time_quantum=0.1)
    resolved = senml.resolve(recs)
    for r, rec in zip(readings, resolved):
        assert abs(rec["t"] - r.t) < 0.06
    assert all(len(cbor2.dumps(rec.get(senml.T, 0), canonical=True)) <= 3 for rec in recs[1:])


def test_event_records_carry_state_and_reason(signing_key, trust):
    ev = Event("f1", "alarm.high", "raised", "temp 9.10 above high 8.00", 50.0, value=9.1, level="high", alarm=True)
    batch = wire.verify(make_batch(signing_key, [Reading("f1", "temp", 9.1, "Cel", 50.0)], [ev]), trust)
    assert batch.records[0] == {"n": "gw-test/f1/alarm.high", "t": 50, "vs": "raised: temp 9.10 above high 8.00"}


def test_every_single_byte_flip_is_rejected(signing_key, trust):
    data = make_batch(signing_key, [Reading("s1", "temp", 4.0 + i / 100, "Cel", 100.0 + i, 0.01) for i in range(10)])
    wire.verify(data, trust)
    reasons = set()
    for i in range(len(data)):
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= flip
            with pytest.raises(VerifyError) as err:
                wire.verify(bytes(bad), trust)
            reasons.add(err.value.reason)
    assert "bad_signature" in reasons and reasons <= {
        "malformed", "not_cose", "bad_header", "bad_alg", "unknown_kid", "bad_signature"}


def test_unknown_kid_wrong_gateway_and_wrong_alg(signing_key):
    data = make_batch(signing_key, [Reading("s1", "t", 1, None, 1.0)])
    with pytest.raises(VerifyError) as err:
        wire.verify(data, TrustStore({"keys": [SigningKey.generate().jwk("gw-test")]}))
    assert err.value.reason == "unknown_kid"
    with pytest.raises(VerifyError) as err:
        wire.verify(data, TrustStore({"keys": [signing_key.jwk("gw-other")]}))
    assert err.value.reason == "gw_mismatch"
    msg = cbor2.loads(data)
    protected = cbor2.dumps({1: -7, 4: signing_key.kid_bytes})
    forged = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, msg.value[2], msg.value[3]]))
    with pytest.raises(VerifyError) as err:
        wire.verify(forged, TrustStore({"keys": [signing_key.jwk("gw-test")]}))
    assert err.value.reason == "bad_alg"


def test_trust_store_refuses_non_ed25519_keys():
    with pytest.raises(KeyFileError, match="not an OKP Ed25519"):
        TrustStore({"keys": [{"kty": "OKP", "crv": "Ed448", "x": "AA", "kid": "k"}]})
    with pytest.raises(KeyFileError, match="not an OKP Ed25519"):
        TrustStore({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "k"}]})


def test_payload_must_follow_the_schema(signing_key, trust):
    good = {"v": 1, "gw": "gw-test", "boot": 1, "seq": 1, "clock": True, "senml": []}
    cases = [({"v": 3}, "bad_version"), ({"v": 0}, "bad_version"), ({"v": True}, "bad_version"),
             ({"v": 2.0}, "bad_version"), ({"boot": -1}, "bad_payload"), ({"seq": "1"}, "bad_payload"),
             ({"clock": 1}, "bad_payload"), ({"gw": "bad name!"}, "bad_payload"),
             ({"senml": [{0: "x"}]}, "bad_senml"), ({"senml": [{2: 1, 3: "a", -2: "x"}]}, "bad_senml"),
             ({"senml": [{"zz_": 1, 2: 1, -2: "x"}]}, "bad_senml"), ({"anchor": [1]}, "bad_payload")]
    for change, reason in cases:
        payload = cbor2.dumps(dict(good, **change))
        with pytest.raises(VerifyError) as err:
            wire.verify(wire.sign(payload, signing_key), trust)
        assert err.value.reason == reason, change


def test_oversize_and_garbage(trust):
    with pytest.raises(VerifyError) as err:
        wire.verify(b"\x00" * (wire.MAX_BATCH_BYTES + 1), trust)
    assert err.value.reason == "oversize"
    for junk in (b"", b"\xff", b"\xd2", b"\x9f\x9f\x9f", json.dumps({"a": 1}).encode(), b"\xd2\x84\x40\xa0\x40\x40"):
        with pytest.raises(VerifyError):
            wire.verify(junk, trust)


def test_resolve_accepts_tuples_as_cbor2_6_returns_them():
    recs = ({-2: "g/s/temp", -3: 100, 2: 1.5}, {6: 1, 2: 2.5})
    assert senml.resolve(recs, 1) == [{"n": "g/s/temp", "t": 100, "v": 1.5}, {"n": "g/s/temp", "t": 101, "v": 2.5}]
    assert senml.resolve(recs + ({6: 1, 2: 250, "be_": -2},)) == [
        {"n": "g/s/temp", "t": 100, "v": 1.5, "exact": "1.5"}, {"n": "g/s/temp", "t": 101, "v": 2.5, "exact": "2.5"},
        {"n": "g/s/temp", "t": 101, "v": 2.5, "exact": "2.50"}]


def test_unsynced_batch_times_can_be_corrected(signing_key, trust):
    early = make_batch(signing_key, [Reading("s", "x", 1, None, 5000.0)], clock=False, anchor=[10.0, 5005.0])
    batch = wire.verify(early, trust)
    assert batch.clock is False and batch.anchor == (10.0, 5005.0)
    fixed = wire.correct_times(batch.records, batch.anchor, (70.0, 1_767_225_660.0))
    assert fixed[0]["t"] == pytest.approx(5000.0 + (1_767_225_660.0 - 70.0) - (5005.0 - 10.0))


def test_hundred_periodic_readings_fit_ten_bytes_each(signing_key):
    readings = [Reading("a4:c1:38:00:00:01", "temp", round(4.0 + 0.01 * (i % 37), 2), "Cel", 1.767e9 + i, 0.01)
                for i in range(100)]
    data = make_batch(signing_key, readings, gw="gw-01")
    assert len(data) / 100 <= 10.0
    assert pycose_verify(data, signing_key.jwk()) is True


# -- format version 2: exact decimals ------------------------------------------------------------------------------

@pytest.mark.parametrize("value,resolution,exact,mantissa,exponent", [
    (3.95, 0.01, "3.95", 395, -2), (47.4, 0.1, "47.4", 474, -1), (16.02, 0.01, "16.02", 1602, -2),
    (-0.5, 0.1, "-0.5", -5, -1), (-0.5, 0.01, "-0.50", -50, -2), (0.0, 0.01, "0.00", 0, -2), (0, None, "0", 0, 0),
    (0.05, 0.01, "0.05", 5, -2), (-0.05, 0.01, "-0.05", -5, -2), (21, 0.1, "21.0", 210, -1),
    (9223372036854775807, None, "9223372036854775807", 9223372036854775807, 0),
    (-9223372036854775808, 1, "-9223372036854775808", -9223372036854775808, 0),
    (9.80665, 0.00980665, "9.80665000", 980665000, -8),  # a Ruuvi 1000 mG in m/s2
    (101325, 1, "101325", 101325, 0), (4.2 * 3, 0.1, "12.6", 126, -1),  # 12.600000000000001: float noise
])
def test_exact_round_trip(signing_key, trust, value, resolution, exact, mantissa, exponent):
    records = senml.encode_records([Reading("s", "x", value, "Cel", 100.0, resolution)], (), "gw-test/")
    assert (records[0][senml.V] + records[0].get(senml.BV, 0), records[0].get(senml.BE, 0)) == (mantissa, exponent)
    data = wire.sign(wire.encode_payload("gw-test", 3, 0, True, records), signing_key)
    rec = wire.verify(data, trust).records[0]
    assert rec["exact"] == exact
    assert rec["v"] == (int(exact) if exponent >= 0 else float(exact)) == pytest.approx(value)
    assert rec["v"].__class__ is (int if exponent >= 0 else float)
    assert pycose_verify(data, signing_key.jwk()) is True


def test_line_protocol_keeps_the_decimals_it_received(signing_key, trust):
    from drivers.serial.lines import LineDecoder
    _, ms = LineDecoder().decode(b"id=board-1 temp[Cel]=21.50 hum[%RH]=47.4 co2=415 p=1013.250 t2=-0.5")
    readings = [Reading("board-1", m.name, m.value, m.unit, 100.0, m.resolution) for m in ms]
    data = wire.sign(wire.encode_payload("gw-test", 3, 0, True, senml.encode_records(readings, (), "gw-test/")),
                     signing_key)
    got = {r["n"].rsplit("/", 1)[1]: r["exact"] for r in wire.verify(data, trust).records}
    assert got == {"temp": "21.50", "hum": "47.4", "co2": "415", "p": "1013.250", "t2": "-0.5"}


def test_a_float_with_no_decimal_resolution_travels_exactly(signing_key, trust):
    import struct
    f32 = struct.unpack("<f", struct.pack("<f", 21.37))[0]  # a Modbus float32 register
    lat = 54 + 12.3456 / 60  # an NMEA coordinate: degrees + minutes / 60 has no short decimal
    readings = [Reading("m", "flow", f32, None, 100.0), Reading("g", "lat", lat, "lat", 100.0, 0.0001 / 60),
                Reading("m", "x", 0.1, None, 100.0)]
    recs = senml.encode_records(readings, (), "gw-test/")
    assert all(senml.BE not in r or r[senml.BE] == 0 for r in recs)
    out = {r["n"]: r for r in wire.verify(wire.sign(wire.encode_payload("gw-test", 3, 0, True, recs), signing_key),
                                          trust).records}
    assert out["gw-test/m/flow"]["v"] == f32 and float(out["gw-test/m/flow"]["exact"]) == f32
    assert out["gw-test/g/lat"]["v"] == lat and out["gw-test/m/x"]["exact"] == "0.1"


def test_a_value_off_its_grid_is_never_rounded_onto_it(signing_key, trust):
    # a decoder that says 0.1 but gives 21.37 must not make it 21.4: it travels as the float it is
    recs = senml.encode_records([Reading("s", "x", 21.37, None, 100.0, 0.1)], (), "gw-test/")
    rec = wire.verify(wire.sign(wire.encode_payload("gw-test", 3, 0, True, recs), signing_key), trust).records[0]
    assert (rec["v"], rec["exact"]) == (21.37, "21.37")


def test_groups_share_a_base_value_and_chain_their_times(signing_key, trust):
    values = [4.0, 4.01, 4.01, 3.99, 4.02] * 20
    readings = [Reading("a4:c1:38:00:00:01", "temp", v, "Cel", 1_767_225_600.0 + i, 0.01)
                for i, v in enumerate(values)]
    recs = senml.encode_records(readings, (), "gw-01/")
    assert recs[0][senml.BV] == 400 and recs[0][senml.DT] is True
    assert all(r == {senml.V: r[senml.V], senml.T: 1} and -2 <= r[senml.V] <= 2 for r in recs[1:])
    data = wire.sign(wire.encode_payload("gw-01", 3, 0, True, recs), signing_key)
    assert len(data) / 100 <= 7.0  # v1: 9.5 (a half float of 3 bytes and a t of 1 or 2 bytes per reading)
    got = [(r["t"], r["exact"]) for r in wire.verify(
        wire.sign(wire.encode_payload("gw-test", 3, 0, True, recs), signing_key), trust).records]
    assert got == [(1_767_225_600 + i, "%.2f" % v) for i, v in enumerate(values)]


def test_format_1_has_no_decimal_exponent(signing_key, trust):
    # be_ ends in "_": a format-1 reader must refuse it rather than read 395 as 395 degrees
    payload = cbor2.dumps({"v": 1, "gw": "gw-test", "boot": 1, "seq": 0, "clock": True,
                           "senml": [{-2: "gw-test/s/x", "be_": -2, 2: 395}]}, canonical=True)
    with pytest.raises(VerifyError) as err:
        wire.verify(wire.sign(payload, signing_key), trust)
    assert err.value.reason == "bad_senml"


@pytest.mark.parametrize("record", [
    {-2: "gw-test/s/x", "be_": -19, 2: 1}, {-2: "gw-test/s/x", "be_": 19, 2: 1},
    {-2: "gw-test/s/x", "be_": 1.5, 2: 1}, {-2: "gw-test/s/x", "be_": True, 2: 1},
    {-2: "gw-test/s/x", "be_": "-2", 2: 1}, {-2: "gw-test/s/x", "be_": 18, 2: 10 ** 18},  # beyond int64
    {-2: "gw-test/s/x", "dt_": 1, 2: 1}, {-2: "gw-test/s/x", "xx_": 1, 2: 1},
    {-2: "gw-test/s/x", -5: 9223372036854775807, 2: 1},
])
def test_hostile_format_2_fields_are_typed_rejections(signing_key, trust, record):
    payload = cbor2.dumps({"v": 2, "gw": "gw-test", "boot": 1, "seq": 0, "clock": True, "senml": [record]},
                          canonical=True)
    with pytest.raises(VerifyError) as err:
        wire.verify(wire.sign(payload, signing_key), trust)
    assert err.value.reason == "bad_senml"


def test_chained_times_stay_bounded(signing_key, trust):
    recs = [{-2: "gw-test/s/x", -3: 2 ** 62, "dt_": True, 2: 1}, {2: 1, 6: 2 ** 62}]
    payload = cbor2.dumps({"v": 2, "gw": "gw-test", "boot": 1, "seq": 0, "clock": True, "senml": recs},
                          canonical=True)
    with pytest.raises(VerifyError) as err:
        wire.verify(wire.sign(payload, signing_key), trust)
    assert err.value.reason == "bad_senml"


# -- SenML resolution: the inlined common record gives what the general path gives ----------------------------------
_numbers = st.one_of(st.integers(-(1 << 64), 1 << 64), st.integers(-1000, 1000), st.floats(allow_nan=True),
                     st.floats(-1e6, 1e6), st.booleans(), st.none())


@settings(max_examples=400, deadline=None)
@given(base=st.fixed_dictionaries({senml.BN: st.just("gw/s1/temp")}, optional={
           senml.BT: _numbers, senml.BV: _numbers, senml.BU: st.just("Cel"), senml.BE: st.integers(-4, 2),
           senml.DT: st.booleans()}),
       rest=st.lists(st.fixed_dictionaries({senml.V: _numbers}, optional={senml.T: _numbers}), max_size=8),
       version=st.sampled_from((1, 2)))
def test_the_common_record_resolves_as_the_general_path_does(base, rest, version):
    """``resolve`` takes a short path for a record of only ``v`` (and ``t``); an ignored extra label (an unknown
    integer label: not must-understand) forces every record down the general path, which must agree exactly."""
    pack = [{**base, senml.V: 1}] + rest
    general = [{**r, 99: 0} for r in pack]

    def outcome(p):
        try:
            return senml.resolve(p, version)
        except VerifyError as exc:
            return ("error", str(exc), exc.reason)
    assert outcome(pack) == outcome(general)
