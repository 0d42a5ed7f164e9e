"""Ed25519 signing keys and the JWK Set trust store (RFC 7517, RFC 8037).

* The private key is a PKCS#8 PEM file, created with mode 0600 and refused on load when group or others can read
  or write it. Its bytes are never logged, printed or put in an exception message.
* The key id is the RFC 7638 JWK thumbprint (SHA-256, base64url) cut to its first 11 characters (66 bits). The JWK
  ``kid`` is that text and the COSE ``kid`` is its ASCII bytes, so a stock JOSE library and a COSE library agree.
* A trust store is a JWK Set. Each key must carry a ``gw`` member naming the one gateway allowed to sign with it (an
  extra member, which JOSE libraries ignore); a verifier rejects a batch whose ``gw`` differs. ``TrustStore``
  refuses a store with an unbound key, a kid that is not the key's own id, or a kid listed twice.
"""

import base64
import hashlib
import json
import os
import re
import stat

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from gateway.adapters.files import write_atomic
from gateway.core.algorithms import SIGNING
from gateway.core.errors import KeyFileError

KID_CHARS = 11
#: The gateway id a trust-store key is bound to (the payload's "gw", docs/wire-format.md).
GW_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,63}$")


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
    canonical = SIGNING.thumbprint_json(b64url(raw_public(public_key)))
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def key_id(public_key):
    return thumbprint(public_key)[:KID_CHARS]


def fingerprint(public_key):
    return "SHA256:" + thumbprint(public_key)


def public_jwk(public_key, gw=None):
    jwk = {"kty": SIGNING.jwk_kty, "crv": SIGNING.jwk_crv, "x": b64url(raw_public(public_key)),
           "kid": key_id(public_key), "alg": SIGNING.jwk_alg, "use": "sig"}
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
        return cls(SIGNING.private_class.generate())

    @classmethod
    def from_seed(cls, seed):
        """For committed test vectors only: a key from a published 32-byte seed."""
        return cls(SIGNING.private_class.from_private_bytes(seed))

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
    write_atomic(path, key.private_pem(), 0o600, secret=True)


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
    if not isinstance(private, SIGNING.private_class):
        raise KeyFileError("private key %s is not an %s key" % (path, SIGNING.name))
    return SigningKey(private)


def load_or_create(path):
    """The agent's key: load it, or create it on first start. Returns ``(key, created)``."""
    if os.path.exists(path):
        return load_private(path), False
    key = SigningKey.generate()
    write_private(path, key)
    return key, True


class TrustStore:
    """Public keys by kid, loaded from a JWK Set, each bound to the one gateway allowed to sign with it.

    Every key must be OKP/Ed25519, carry its own key id as ``kid`` (``key_id``: the thumbprint, so a kid cannot
    be borrowed by another key), appear once, and name its gateway in ``gw``. Several keys may name one gateway
    (rotation). Anything else raises ``KeyFileError`` naming the source, the key's index and the fix.
    """

    def __init__(self, jwks=None, source="trust store"):
        self.keys = {}
        self.gateways = {}
        self._index = {}
        if jwks is None:
            return
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise KeyFileError("%s is not a JWK Set (no \"keys\" array)" % source)
        for index, jwk in enumerate(jwks["keys"]):
            self.add(jwk, source, index)

    def add(self, jwk, source="trust store", index=None):
        """Validate ``jwk`` and trust it for its gateway. Refuses a kid already present."""
        if index is None:
            index = len(self.keys)
        where = "%s: key %d" % (source, index)
        kid, public = _check_jwk(jwk, where)
        kid_bytes = kid.encode("ascii")
        if kid_bytes in self.keys:
            raise KeyFileError("%s: kid %r is already key %d; list each key once (for rotation, add the new key "
                               "with its own kid)" % (where, kid, self._index[kid_bytes]))
        self.keys[kid_bytes] = public
        self.gateways[kid_bytes] = jwk["gw"]
        self._index[kid_bytes] = index

    @classmethod
    def load(cls, path):
        try:
            with open(path, "rb") as f:
                doc = json.load(f)
        except OSError as exc:
            raise KeyFileError("cannot read trust store %s: %s" % (path, exc.strerror)) from exc
        except ValueError as exc:
            raise KeyFileError("trust store %s is not valid JSON: %s" % (path, exc)) from exc
        return cls(doc, source="trust store %s" % path)


def _check_jwk(jwk, where):
    """Return ``(kid, public key)`` of a trust-store JWK, or raise ``KeyFileError`` saying what to fix."""
    if not isinstance(jwk, dict):
        raise KeyFileError("%s is not a JSON object" % where)
    alg = SIGNING
    if jwk.get("kty") != alg.jwk_kty or jwk.get("crv") != alg.jwk_crv:
        raise KeyFileError("%s is not an %s %s key (kty %r, crv %r): only %s keys are trusted"
                           % (where, alg.jwk_kty, alg.jwk_crv, jwk.get("kty"), jwk.get("crv"), alg.name))
    if "d" in jwk:
        raise KeyFileError("%s holds a private key (\"d\"): a trust store takes public keys only; remove \"d\" "
                           "and treat that key as leaked" % where)
    if jwk.get("alg", alg.jwk_alg) != alg.jwk_alg:
        raise KeyFileError("%s has alg %r; %s keys sign with \"%s\"" % (where, jwk.get("alg"), alg.name,
                                                                        alg.jwk_alg))
    try:
        raw = b64url_decode(jwk.get("x"))
        if len(raw) != alg.public_bytes:
            raise ValueError("%d bytes" % len(raw))
        public = alg.public_class.from_public_bytes(raw)
    except ValueError:
        raise KeyFileError("%s has an invalid x: it must be the base64url of the %d-byte %s public key"
                           % (where, alg.public_bytes, alg.name)) from None
    kid = key_id(public)
    if jwk.get("kid") != kid:
        raise KeyFileError("%s has kid %r, but this key's id (RFC 7638 thumbprint, %d chars) is %r: set \"kid\": "
                           "%r" % (where, jwk.get("kid"), KID_CHARS, kid, kid))
    gw = jwk.get("gw")
    if not isinstance(gw, str) or not GW_RE.match(gw):
        raise KeyFileError("%s (kid %s) is not bound to a gateway: add \"gw\": \"<gateway id>\" naming the one "
                           "gateway that signs with it (1-64 letters, digits, '-', '_', '.' or ':')" % (where, kid))
    return kid, public


def write_jwks(path, jwks):
    """Write a JWK Set atomically (public material: mode 0644)."""
    write_atomic(path, json.dumps(jwks, indent=2, sort_keys=True) + "\n", 0o644)


def read_jwks(path):
    """The JWK Set document at ``path`` as it is (an empty set if there is no file yet); not validated as keys."""
    if not os.path.exists(path):
        return {"keys": []}
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise KeyFileError("cannot read trust store %s: %s" % (path, exc)) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeyFileError("trust store %s is not a JWK Set (no \"keys\" array)" % path)
    return doc


def merge_jwks(path, jwk):
    """Add or replace ``jwk`` (by kid) in the JWK Set at ``path``, creating the file if needed.

    The result is validated as a ``TrustStore`` before it is written. A kid bound to another gateway is never
    replaced: that would move a key, and with it the right to write as a gateway.
    """
    doc = read_jwks(path)
    kid = jwk.get("kid") if isinstance(jwk, dict) else None
    for old in doc["keys"]:
        if isinstance(old, dict) and old.get("kid") == kid and old.get("gw") != jwk.get("gw"):
            raise KeyFileError("trust store %s: kid %r is bound to gateway %r; refusing to rebind it to %r (a key "
                               "serves one gateway: provision a new key instead)" % (path, kid, old.get("gw"),
                                                                                    jwk.get("gw")))
    doc["keys"] = [k for k in doc["keys"] if not (isinstance(k, dict) and k.get("kid") == kid)] + [jwk]
    TrustStore(doc, source="trust store %s" % path)
    write_jwks(path, doc)
    return doc
