"""The downlink's files: the operator trust root (a JWK Set) and the last applied ``op_seq`` per operator key.

* ``load_operators(path)``: kid bytes -> Ed25519 public key, for ``gateway.core.commands.verify_command``. The
  file is a JWK Set like the gateway trust store, with one difference that keeps the two roots apart: an operator
  key must **not** carry ``gw`` (a key with ``gw`` is a gateway's key, and a gateway's key never commands).
  Every key is OKP/Ed25519 with its thumbprint id as ``kid``, listed once, public only; anything else is a
  ``KeyFileError`` naming the file and the key's index.
* ``SeqState(path)``: ``{kid: last applied op_seq}`` as JSON, replaced atomically (``files.write_atomic``:
  temporary file, fsync, rename, directory fsync) by ``advance`` **before** the command's action runs, so a
  command is applied at most once, also across restarts and power cuts. A state file that cannot be read is a
  ``KeyFileError``: the agent then refuses every command rather than forget what it applied.
"""

import json
import os

from gateway.adapters.files import write_atomic
from gateway.adapters.keys import b64url_decode, key_id
from gateway.core.algorithms import SIGNING
from gateway.core.errors import KeyFileError

INT63 = (1 << 63) - 1


def load_operators(path):
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except OSError as exc:
        raise KeyFileError("cannot read operator keys %s: %s" % (path, exc.strerror)) from exc
    except ValueError as exc:
        raise KeyFileError("operator keys %s are not valid JSON: %s" % (path, exc)) from exc
    return operators_from_jwks(doc, "operator keys %s" % path)


def operators_from_jwks(doc, source="operator keys"):
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeyFileError("%s is not a JWK Set (no \"keys\" array)" % source)
    out = {}
    for index, jwk in enumerate(doc["keys"]):
        where = "%s: key %d" % (source, index)
        if not isinstance(jwk, dict):
            raise KeyFileError("%s is not a JSON object" % where)
        if jwk.get("kty") != SIGNING.jwk_kty or jwk.get("crv") != SIGNING.jwk_crv:
            raise KeyFileError("%s is not an %s key" % (where, SIGNING.name))
        if "d" in jwk:
            raise KeyFileError("%s holds a private key (\"d\"): list public keys only, and treat that key as "
                               "leaked" % where)
        if "gw" in jwk:
            raise KeyFileError("%s is bound to gateway %r: that is a gateway's key, and operator keys are a trust "
                               "root of their own (create one with 'edge-gateway operator keygen')"
                               % (where, jwk.get("gw")))
        if jwk.get("alg", SIGNING.jwk_alg) != SIGNING.jwk_alg:
            raise KeyFileError("%s has alg %r, not %s" % (where, jwk.get("alg"), SIGNING.jwk_alg))
        try:
            raw = b64url_decode(jwk.get("x"))
            if len(raw) != SIGNING.public_bytes:
                raise ValueError(len(raw))
            public = SIGNING.public_class.from_public_bytes(raw)
        except ValueError:
            raise KeyFileError("%s has an invalid x" % where) from None
        kid = key_id(public)
        if jwk.get("kid") != kid:
            raise KeyFileError("%s has kid %r; this key's id is %r" % (where, jwk.get("kid"), kid))
        if kid.encode("ascii") in out:
            raise KeyFileError("%s: kid %r is listed twice" % (where, kid))
        out[kid.encode("ascii")] = public
    return out


class SeqState:
    """The last applied ``op_seq`` per operator kid, durable before each action."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.last = self._read()

    def _read(self):
        try:
            with open(self.path, "rb") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise KeyFileError("downlink state %s cannot be read (%s): commands are refused until it is fixed"
                               % (self.path, exc)) from exc
        if not isinstance(doc, dict) or not all(isinstance(k, str) and v.__class__ is int and 0 <= v <= INT63
                                                for k, v in doc.items()):
            raise KeyFileError("downlink state %s is not a map of kid to sequence number" % self.path)
        return doc

    def advance(self, kid, op_seq):
        """Record ``op_seq`` as applied from ``kid``, durably; only then may the action run."""
        new = dict(self.last)
        new[kid] = op_seq
        write_atomic(self.path, json.dumps(new, sort_keys=True) + "\n", 0o600)
        self.last = new
