"""gateway/core/algorithms.py: the one table of signature algorithm facts, checked against the published values."""

import cbor2

from gateway.adapters import keys
from gateway.core import algorithms, wire
from gateway.core.algorithms import ED25519, SIGNING


def test_ed25519_row_matches_the_rfcs():
    # RFC 9053 section 2.2 (COSE alg -8 "EdDSA"), RFC 8037 (OKP / Ed25519 / EdDSA), RFC 8032 (sizes)
    assert (ED25519.cose_alg, ED25519.cose_name) == (-8, "EdDSA")
    assert (ED25519.jwk_kty, ED25519.jwk_crv, ED25519.jwk_alg) == ("OKP", "Ed25519", "EdDSA")
    assert (ED25519.public_bytes, ED25519.seed_bytes, ED25519.signature_bytes) == (32, 32, 64)
    assert algorithms.BY_COSE_ALG[-8] is ED25519 and SIGNING is ED25519


def test_wire_and_keys_take_their_facts_from_the_table():
    key = keys.SigningKey.from_seed(bytes(range(SIGNING.seed_bytes)))
    jwk = key.jwk("gw-1")
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == (SIGNING.jwk_kty, SIGNING.jwk_crv, SIGNING.jwk_alg)
    assert len(keys.b64url_decode(jwk["x"])) == SIGNING.public_bytes
    msg = cbor2.loads(wire.sign(b"\xa0", key))
    assert cbor2.loads(msg.value[0])[wire.HDR_ALG] == SIGNING.cose_alg
    assert len(msg.value[3]) == SIGNING.signature_bytes


def test_thumbprint_json_is_rfc7638_canonical():
    assert ED25519.thumbprint_json("abc") == '{"crv":"Ed25519","kty":"OKP","x":"abc"}'
