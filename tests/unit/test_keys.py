"""Keys: mode 0600 on creation, refusal of looser modes, JWK Set export, no key material in messages."""

import json
import logging
import os
import stat

import pytest

from gateway.adapters import keys
from gateway.core.errors import KeyFileError


def test_created_key_is_0600_and_loads_back(tmp_path):
    path = tmp_path / "key.pem"
    key, created = keys.load_or_create(str(path))
    assert created is True
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, created = keys.load_or_create(str(path))
    assert created is False and again.kid == key.kid
    assert again.sign(b"x") == key.sign(b"x")  # Ed25519 is deterministic: same key, same signature


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_looser_modes_are_refused_with_a_fix(tmp_path, mode):
    path = tmp_path / "key.pem"
    keys.write_private(str(path), keys.SigningKey.generate())
    os.chmod(path, mode)
    with pytest.raises(KeyFileError) as err:
        keys.load_private(str(path))
    msg = str(err.value)
    assert "%04o" % mode in msg and "chmod 600" in msg
    assert "PRIVATE" not in msg


def test_missing_and_garbage_key_files(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        keys.load_private(str(tmp_path / "nope.pem"))
    bad = tmp_path / "bad.pem"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n")
    os.close(fd)
    with pytest.raises(KeyFileError, match="not an unencrypted PKCS#8"):
        keys.load_private(str(bad))


def test_refuses_to_overwrite_a_key(tmp_path):
    path = str(tmp_path / "key.pem")
    keys.write_private(path, keys.SigningKey.generate())
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        keys.write_private(path, keys.SigningKey.generate())


def test_jwks_kid_matches_cose_kid_and_loads(tmp_path):
    key = keys.SigningKey.generate()
    path = str(tmp_path / "jwks.json")
    keys.merge_jwks(path, key.jwk("gw-1"))
    doc = json.load(open(path))
    jwk = doc["keys"][0]
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and jwk["kid"] == key.kid and jwk["gw"] == "gw-1"
    assert "d" not in jwk
    trust = keys.TrustStore.load(path)
    assert list(trust.keys) == [key.kid_bytes] and trust.gateways[key.kid_bytes] == "gw-1"
    keys.merge_jwks(path, keys.SigningKey.generate().jwk("gw-2"))
    keys.merge_jwks(path, key.jwk("gw-1"))
    assert len(json.load(open(path))["keys"]) == 2


def test_private_key_never_appears_in_repr_or_logs(caplog):
    key = keys.SigningKey.generate()
    pem = key.private_pem().decode()
    body = "".join(pem.splitlines()[1:-1])
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("t").info("key %r %s", key, key)
    assert body not in caplog.text and body not in repr(key)
    assert key.kid in repr(key)


@pytest.mark.parametrize("doc,match", [("{", "not valid JSON"), ('{"a": 1}', "not a JWK Set"),
                                       ('{"keys": [{"kty": "OKP", "crv": "Ed448", "x": "AA"}]}', "Ed25519")])
def test_bad_trust_stores_are_clear_errors(tmp_path, doc, match):
    path = tmp_path / "jwks.json"
    path.write_text(doc)
    with pytest.raises(KeyFileError, match=match):
        keys.TrustStore.load(str(path))


# -- finding 5: a gateway's data is accepted only from keys bound to it ------------------------------------------
def _store(tmp_path, jwks):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": jwks}))
    return str(path)


def _bad_x(jwk):
    return dict(jwk, x=jwk["x"][:-4])


@pytest.mark.parametrize("change,match", [
    (lambda j: {k: v for k, v in j.items() if k != "gw"},
     r"key 1 \(kid [\w-]+\) is not bound to a gateway: add \"gw\""),
    (lambda j: dict(j, gw=""), "is not bound to a gateway"),
    (lambda j: dict(j, gw="gw/../x"), "is not bound to a gateway"),
    (lambda j: dict(j, kid="gw-a-key"), r"key 1 has kid 'gw-a-key', but this key's id .* set \"kid\": '[\w-]{11}'"),
    (lambda j: {k: v for k, v in j.items() if k != "kid"}, r"key 1 has kid None"),
    (_bad_x, "key 1 has an invalid x: it must be the base64url of the 32-byte"),
    (lambda j: dict(j, crv="Ed448"), "key 1 is not an OKP Ed25519 key"),
    (lambda j: dict(j, kty="EC"), "key 1 is not an OKP Ed25519 key"),
    (lambda j: dict(j, alg="ES256"), "key 1 has alg 'ES256'"),
    (lambda j: dict(j, d="AAAA"), r"key 1 holds a private key"),
])
def test_trust_store_refuses_loose_keys_naming_file_index_and_fix(tmp_path, change, match):
    good = keys.SigningKey.generate().jwk("gw-a")
    path = _store(tmp_path, [good, change(keys.SigningKey.generate().jwk("gw-b"))])
    with pytest.raises(KeyFileError, match=match) as err:
        keys.TrustStore.load(path)
    assert str(err.value).startswith("trust store %s: key 1" % path)


def test_trust_store_refuses_a_repeated_kid(tmp_path):
    key = keys.SigningKey.generate()
    path = _store(tmp_path, [key.jwk("gw-a"), keys.SigningKey.generate().jwk("gw-b"), key.jwk("gw-c")])
    with pytest.raises(KeyFileError, match=r"key 2: kid '%s' is already key 0; list each key once" % key.kid):
        keys.TrustStore.load(path)
    with pytest.raises(KeyFileError, match="already key 0"):  # the same entry twice is refused too
        keys.TrustStore({"keys": [key.jwk("gw-a"), key.jwk("gw-a")]})


def test_an_unbound_key_cannot_write_as_another_gateway():
    """The attack: a key with no gw signed batches for gw-a and took over its (boot, seq) space."""
    from gateway.core import wire
    from gateway.core.errors import VerifyError
    victim, rogue = keys.SigningKey.generate(), keys.SigningKey.generate()
    with pytest.raises(KeyFileError, match="not bound"):
        keys.TrustStore({"keys": [victim.jwk("gw-a"), rogue.jwk()]})
    trust = keys.TrustStore({"keys": [victim.jwk("gw-a"), rogue.jwk("gw-b")]})
    forged = wire.sign(wire.encode_payload("gw-a", 99, 0, True, [{-2: "gw-a/s/x", 2: 1}]), rogue)
    with pytest.raises(VerifyError) as err:
        wire.verify(forged, trust)
    assert err.value.reason == "gw_mismatch"


def test_several_keys_may_serve_one_gateway_for_rotation():
    from gateway.core import wire
    old, new = keys.SigningKey.generate(), keys.SigningKey.generate()
    trust = keys.TrustStore({"keys": [old.jwk("gw-a"), dict(new.jwk("gw-a"), status="retired-pending")]})
    for key in (old, new):
        batch = wire.verify(wire.sign(wire.encode_payload("gw-a", 1, 0, True, []), key), trust)
        assert (batch.gw, batch.kid) == ("gw-a", key.kid)


def test_merge_jwks_never_rebinds_a_kid_to_another_gateway(tmp_path):
    key = keys.SigningKey.generate()
    path = str(tmp_path / "jwks.json")
    keys.merge_jwks(path, key.jwk("gw-a"))
    before = open(path).read()
    with pytest.raises(KeyFileError, match="bound to gateway 'gw-a'; refusing to rebind it to 'gw-b'"):
        keys.merge_jwks(path, key.jwk("gw-b"))
    with pytest.raises(KeyFileError, match="not bound to a gateway"):
        keys.merge_jwks(path, keys.SigningKey.generate().jwk())
    assert open(path).read() == before  # nothing written on refusal
    keys.merge_jwks(path, key.jwk("gw-a"))  # the same binding again is fine
    assert keys.TrustStore.load(path).gateways == {key.kid_bytes: "gw-a"}
