"""Signed downlink commands: the committed vectors, every rejection reason of ``verify_command``, the operator trust
root and the durable ``op_seq`` state (docs/wire-format.md, "Commands (downlink)")."""

import json
import os

import cbor2
import pytest

from gateway.adapters.keys import SigningKey, TrustStore
from gateway.adapters.operators import SeqState, load_operators, operators_from_jwks
from gateway.core import commands, wire
from gateway.core.commands import CommandError, sign_command, verify_command
from gateway.core.errors import KeyFileError, VerifyError
from tests.support import command_vectors, wire_vectors

pytestmark = pytest.mark.unit

OPERATOR = SigningKey.from_seed(bytes.fromhex(command_vectors.SEED))  # RFC 8032 TEST 2
OTHER = SigningKey.from_seed(bytes(range(32)))
OPS = operators_from_jwks({"keys": [OPERATOR.jwk()]})
NOW = 1_790_000_000
EXP = NOW + 600
VECTORS = command_vectors.load_all()


def cmd(action="store_requeue", args=None, gw="gw-01", seq=5, exp=EXP, key=OPERATOR):
    return sign_command(key, gw, seq, exp, action, args)


def reason(data, gw="gw-01", last=None, now=NOW, operators=OPS):
    with pytest.raises(CommandError) as err:
        verify_command(data, operators, gw, last or {}, now)
    return err.value.reason


def resign(payload_map, key=OPERATOR, ct=commands.CT_COMMAND, extra_header=None):
    """A command signed over any payload map (the signer's own checks bypassed)."""
    header = {1: -8, 3: ct, 4: key.kid_bytes}
    header.update(extra_header or {})
    return wire.sign(cbor2.dumps(payload_map, canonical=True), key, cbor2.dumps(header, canonical=True))


def good_payload(**changes):
    body = {"v": 1, "gw": "gw-01", "op_seq": 5, "exp": EXP, "action": "restart", "args": {}}
    body.update(changes)
    return body


@pytest.mark.parametrize("name,vec", VECTORS, ids=[n for n, _ in VECTORS])
def test_vectors_reproduce_byte_for_byte_and_verify(name, vec):
    key, payload, cose = command_vectors.build(vec)
    assert key.kid == vec["kid"] and key.jwk() == vec["jwk"]
    assert payload.hex() == vec["payload_hex"] and cose.hex() == vec["cose_hex"]
    got = verify_command(cose, operators_from_jwks({"keys": [vec["jwk"]]}), vec["gw"], {}, vec["exp"] - 1)
    assert (got.gw, got.op_seq, got.exp, got.action, dict(got.args)) == (
        vec["gw"], vec["op_seq"], vec["exp"], vec["action"], vec["args"])
    assert got.kid == vec["kid"]


@pytest.mark.parametrize("name,vec", VECTORS, ids=[n for n, _ in VECTORS])
def test_pycose_verifies_the_vectors(name, vec):
    assert wire_vectors.pycose_verify(bytes.fromhex(vec["cose_hex"]), vec["jwk"])


def test_a_valid_command_verifies():
    got = verify_command(cmd("config_set", {"key": "batch.max_age_s", "value": "5"}), OPS, "gw-01", {}, NOW)
    assert got.action == "config_set" and got.arg("key") == "batch.max_age_s" and got.op_seq == 5


def test_a_command_is_never_a_batch_and_a_batch_never_a_command():
    trust = TrustStore({"keys": [OPERATOR.jwk("gw-01")]})
    with pytest.raises(VerifyError) as err:
        wire.verify(cmd(), trust)
    assert err.value.reason == "bad_header"
    _, batch = wire_vectors.load_all()[0]
    assert reason(bytes.fromhex(batch["cose_hex"])) == "malformed"
    # a batch-shaped payload under the command content type is no command either
    assert reason(resign({"v": 1, "gw": "gw-01", "boot": 1, "seq": 1, "clock": True, "senml": []})) == "malformed"


def test_oversize():
    assert reason(b"\xd2" + bytes(commands.MAX_COMMAND_BYTES)) == "oversize"
    with pytest.raises(CommandError) as err:
        cmd("config_set", {"key": "gateway.log_level", "value": "x" * 4000})
    assert err.value.reason == "oversize"


@pytest.mark.parametrize("data", [
    b"", b"not cbor", b"\xd2\x84\x40\xa0\x40\x40", cbor2.dumps([1, 2, 3]),
    b"\xd2\x9f\xff",  # indefinite length
], ids=["empty", "junk", "short-members", "no-tag", "indefinite"])
def test_malformed_envelopes(data):
    assert reason(data) == "malformed"


def test_malformed_trailing_bytes_and_headers():
    assert reason(cmd() + b"\x00") == "malformed"
    assert reason(resign(good_payload(), extra_header={5: b"x"})) == "malformed"
    assert reason(resign(good_payload(), ct=60)) == "malformed"


@pytest.mark.parametrize("changes", [
    {"v": 2}, {"gw": 7}, {"gw": "a/../b "}, {"op_seq": 0}, {"op_seq": -1}, {"op_seq": 1 << 63}, {"exp": "soon"},
    {"exp": 1.5}, {"action": ""}, {"args": ["a"]}, {"args": {"k": [1]}}, {"args": {"k": float("nan")}},
    {"args": {1: "x"}}, {"extra": 1}, {"op_seq": True},
], ids=lambda c: repr(c)[:30])
def test_malformed_payloads_are_refused_after_the_signature(changes):
    assert reason(resign(good_payload(**changes))) == "malformed"


def test_unknown_key_and_a_gateway_key_is_no_operator_key():
    assert reason(cmd(key=OTHER)) == "unknown_key"
    # the gateway's own key (its trust store entry) is not in the operator root
    assert reason(cmd(key=SigningKey.from_seed(bytes.fromhex(wire_vectors.load_all()[0][1]["seed"])))) == \
        "unknown_key"


def test_bad_signature():
    data = bytearray(cmd())
    data[-1] ^= 1
    assert reason(bytes(data)) == "bad_signature"
    # the same payload and header under another key's signature
    forged = resign(good_payload(), key=OTHER, extra_header=None)
    forged = forged.replace(OTHER.kid_bytes, OPERATOR.kid_bytes)
    assert reason(forged) == "bad_signature"


def test_wrong_gateway_carries_the_verified_sequence():
    with pytest.raises(CommandError) as err:
        verify_command(cmd(gw="gw-02"), OPS, "gw-01", {}, NOW)
    assert (err.value.reason, err.value.op_seq, err.value.kid) == ("wrong_gateway", 5, OPERATOR.kid)


@pytest.mark.parametrize("last", [5, 6, 1 << 40])
def test_replayed(last):
    assert reason(cmd(seq=5), last={OPERATOR.kid: last}) == "replayed"


def test_a_higher_sequence_passes_and_other_keys_count_apart():
    assert verify_command(cmd(seq=5), OPS, "gw-01", {OPERATOR.kid: 4}, NOW).op_seq == 5
    assert verify_command(cmd(seq=5), OPS, "gw-01", {OTHER.kid: 9}, NOW).op_seq == 5


def test_expired_and_unsynchronised_clock():
    assert reason(cmd(exp=NOW)) == "expired"
    assert reason(cmd(exp=NOW - 1)) == "expired"
    assert verify_command(cmd(exp=NOW + 1), OPS, "gw-01", {}, NOW)
    assert reason(cmd(), now=None) == "clock_unsynced"


def test_unknown_action_and_wrong_arguments():
    assert reason(resign(good_payload(action="reboot"))) == "unknown_action"
    assert reason(resign(good_payload(action="config_set", args={"key": "a"}))) == "unknown_action"
    assert reason(resign(good_payload(action="restart", args={"now": True}))) == "unknown_action"
    with pytest.raises(CommandError) as err:
        cmd("reboot")
    assert err.value.reason == "unknown_action"


def test_the_signature_is_checked_before_the_payload():
    """Junk payload under an unknown key is unknown_key, not malformed: nothing unsigned is parsed."""
    assert reason(resign({"junk": True}, key=OTHER)) == "unknown_key"


def test_every_reason_is_listed():
    assert set(commands.REASONS) == {"oversize", "malformed", "unknown_key", "bad_signature", "wrong_gateway",
                                     "replayed", "clock_unsynced", "expired", "unknown_action"}


# -- the operator trust root -------------------------------------------------------------------------------------
def test_operator_jwks_refuses_gateway_keys_private_keys_and_borrowed_kids(tmp_path):
    with pytest.raises(KeyFileError, match="gateway's key"):
        operators_from_jwks({"keys": [OPERATOR.jwk("gw-01")]})
    with pytest.raises(KeyFileError, match="private"):
        operators_from_jwks({"keys": [dict(OPERATOR.jwk(), d="AAAA")]})
    with pytest.raises(KeyFileError, match="kid"):
        operators_from_jwks({"keys": [dict(OPERATOR.jwk(), kid=OTHER.kid)]})
    with pytest.raises(KeyFileError, match="twice"):
        operators_from_jwks({"keys": [OPERATOR.jwk(), OPERATOR.jwk()]})
    path = tmp_path / "ops.json"
    path.write_text(json.dumps({"keys": [OPERATOR.jwk(), OTHER.jwk()]}))
    assert set(load_operators(str(path))) == {OPERATOR.kid_bytes, OTHER.kid_bytes}
    path.write_text("{")
    with pytest.raises(KeyFileError):
        load_operators(str(path))


def test_seq_state_is_durable_and_refuses_a_damaged_file(tmp_path):
    path = str(tmp_path / "downlink-seq.json")
    state = SeqState(path)
    assert state.last == {}
    state.advance("k1", 3)
    state.advance("k2", 1)
    assert SeqState(path).last == {"k1": 3, "k2": 1}
    assert os.stat(path).st_mode & 0o777 == 0o600
    for bad in ("{", '{"k1": -1}', '{"k1": "3"}', "[]"):
        with open(path, "w") as f:
            f.write(bad)
        with pytest.raises(KeyFileError):
            SeqState(path)
