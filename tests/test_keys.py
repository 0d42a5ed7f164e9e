"""Keys: mode 0600 on creation, refusal of looser modes, JWK Set export, no key material in messages."""

import json
import logging
import os
import stat

import pytest

from gateway import keys
from gateway.errors import KeyFileError


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
