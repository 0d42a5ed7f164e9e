"""Ed25519 signing keys and the JWK Set trust store (RFC 7517, RFC 8037).

* The private key is a PKCS#8 PEM file, created with mode 0600 and refused on load when group or others can read
  or write it. Its bytes are never logged, printed or put in an exception message.
* The key id is the RFC 7638 JWK thumbprint (SHA-256, base64url) cut to its first 11 characters (66 bits). The JWK
  ``kid`` is that text and the COSE ``kid`` is its ASCII bytes, so a stock JOSE library and a COSE library agree.
* A trust store is a JWK Set. Each key may carry a ``gw`` member naming the one gateway allowed to sign with it (an
  extra member, which JOSE libraries ignore); a verifier then rejects a batch whose ``gw`` differs.
"""

import base64
import hashlib
import json
import os
import stat

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.errors import KeyFileError

KID_CHARS = 11


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    if not isinstance(text, str):
        raise ValueError("base64url value must be text")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def raw_public(public_key):
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def thumbprint(public_key):
    """RFC 7638 thumbprint: SHA-256 over the canonical JSON of the required OKP members."""
    canonical = '{"crv":"Ed25519","kty":"OKP","x":"%s"}' % b64url(raw_public(public_key))
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def key_id(public_key):
    return thumbprint(public_key)[:KID_CHARS]


def fingerprint(public_key):
    return "SHA256:" + thumbprint(public_key)


def public_jwk(public_key, gw=None):
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw_public(public_key)), "kid": key_id(public_key),
           "alg": "EdDSA", "use": "sig"}
    if gw is not None:
        jwk["gw"] = gw
    return jwk


class SigningKey:
    """A loaded private key with its derived public identity."""

    __slots__ = ("_private", "public", "kid", "kid_bytes")

    def __init__(self, private_key):
        self._private = private_key
        self.public = private_key.public_key()
        self.kid = key_id(self.public)
        self.kid_bytes = self.kid.encode("ascii")

    @classmethod
    def generate(cls):
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed):
        """For committed test vectors only: a key from a published 32-byte seed."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, data):
        return self._private.sign(data)

    def jwk(self, gw=None):
        return public_jwk(self.public, gw)

    def __repr__(self):
        return "SigningKey(kid=%r)" % (self.kid,)

    def private_pem(self):
        return self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())


def write_private(path, key, overwrite=False):
    """Write ``key`` to ``path`` atomically with mode 0600. Refuses to replace an existing file unless told."""
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise KeyFileError("refusing to overwrite existing key %s" % path)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.private_pem())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def load_private(path):
    """Load a private key, refusing a file that group or others may access."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError("private key %s does not exist (create it with 'edge-gateway provision')" % path) from None
    except OSError as exc:
        raise KeyFileError("cannot stat private key %s: %s" % (path, exc.strerror)) from exc
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError("private key %s has mode %04o; it must be 0600 (run: chmod 600 %s)" % (path, mode, path))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise KeyFileError("cannot read private key %s: %s" % (path, exc.strerror)) from exc
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError("private key %s is not an unencrypted PKCS#8 PEM key" % path) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError("private key %s is not an Ed25519 key" % path)
    return SigningKey(private)


def load_or_create(path):
    """The agent's key: load it, or create it on first start. Returns ``(key, created)``."""
    if os.path.exists(path):
        return load_private(path), False
    key = SigningKey.generate()
    write_private(path, key)
    return key, True


class TrustStore:
    """Public keys by kid, loaded from a JWK Set. Only OKP/Ed25519 keys are accepted."""

    def __init__(self, jwks=None):
        self.keys = {}
        self.gateways = {}
        for jwk in (jwks or {}).get("keys", []):
            self.add(jwk)

    def add(self, jwk):
        if not isinstance(jwk, dict):
            raise ValueError("JWK must be an object")
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            raise ValueError("JWK %r is not an OKP Ed25519 key" % (jwk.get("kid"),))
        try:
            raw = b64url_decode(jwk["x"])
            public = Ed25519PublicKey.from_public_bytes(raw)
        except (KeyError, ValueError) as exc:
            raise ValueError("JWK %r has an invalid x" % (jwk.get("kid"),)) from exc
        kid = jwk.get("kid") or key_id(public)
        if not isinstance(kid, str):
            raise ValueError("JWK kid must be text")
        self.keys[kid.encode("utf-8")] = public
        if isinstance(jwk.get("gw"), str):
            self.gateways[kid.encode("utf-8")] = jwk["gw"]

    @classmethod
    def load(cls, path):
        try:
            with open(path, "rb") as f:
                doc = json.load(f)
        except OSError as exc:
            raise KeyFileError("cannot read trust store %s: %s" % (path, exc.strerror)) from exc
        except ValueError as exc:
            raise KeyFileError("trust store %s is not valid JSON: %s" % (path, exc)) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise KeyFileError("trust store %s is not a JWK Set (no \"keys\" array)" % path)
        try:
            return cls(doc)
        except ValueError as exc:
            raise KeyFileError("trust store %s: %s" % (path, exc)) from exc


def write_jwks(path, jwks):
    """Write a JWK Set atomically (public material: mode 0644)."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(jwks, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def merge_jwks(path, jwk):
    """Add or replace ``jwk`` (by kid) in the JWK Set at ``path``, creating the file if needed."""
    doc = {"keys": []}
    if os.path.exists(path):
        with open(path) as f:
            doc = json.load(f)
    keys = [k for k in doc.get("keys", []) if k.get("kid") != jwk["kid"]]
    keys.append(jwk)
    doc["keys"] = keys
    write_jwks(path, doc)
    return doc


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
