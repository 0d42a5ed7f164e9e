"""The update manifest: what an update bundle holds, signed by an operator key (docs/wire-format.md, "Update
manifest"; docs/operations.md, "Updating gateways").

Pure: bytes, keys and versions in; a ``Manifest`` or an ``UpdateError`` out. No clock is read here.

Layout::

    18([ << {1: -8, 3: "application/edge-gateway-update+cbor", 4: kid} >>, {}, << payload >>, signature ])
    payload = {"v": 1, "project": "edge-gateway", "version": tstr, "min_version": tstr, "created": uint63,
               "files": [+ {"name": tstr, "sha256": bstr .size 32, "size": uint}]}

Like a command, the manifest is told apart from a batch and from a command by its protected content type, so none
of the three can be taken for another. It is signed by an operator key (the same trust root as commands): a
gateway's own key never vouches for code.

Admission (``admit``): a bundle replaces only a running version at or above its ``min_version``, never one at or
above its own ``version`` (no downgrade, no reinstall), and, when the gateway is pinned (``update.pin``), only
to exactly the pinned version.
"""

import re
from dataclasses import dataclass

import cbor2
from cryptography.exceptions import InvalidSignature

from gateway.core import wire
from gateway.core.algorithms import SIGNING
from gateway.core.errors import GatewayError, VerifyError

MANIFEST_VERSION = 1
PROJECT = "edge-gateway"
CT_UPDATE = "application/edge-gateway-update+cbor"
MANIFEST_NAME = "manifest.cose"
MAX_MANIFEST_BYTES = 64 << 10
MAX_FILES = 200
MAX_FILE_BYTES = 256 << 20
INT63 = (1 << 63) - 1
VERSION_RE = re.compile(r"^[0-9]{1,6}(\.[0-9]{1,6}){0,3}$")
#: a wheel's file name: no directory, nothing hidden (the bundle's files land in one flat folder)
FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}\.whl$")

#: every reason ``UpdateError`` carries (a stable token: the outcome record, the counters, the docs)
REASONS = ("unsigned", "malformed", "unknown_key", "bad_signature", "digest", "missing_file", "extra_file",
           "downgrade", "below_minimum", "pinned", "no_operators", "fetch", "install", "check", "busy")


class UpdateError(GatewayError):
    """An update was refused or failed. ``reason`` is one of ``REASONS``; the message says what and the fix."""

    def __init__(self, message, reason):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FileEntry:
    name: str
    sha256: bytes
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    kid: str
    version: str
    min_version: str
    created: int
    files: tuple  # FileEntry, in the manifest's order

    def entry(self, name):
        return next((f for f in self.files if f.name == name), None)


def parse_version(text):
    """``"0.1.10"`` -> ``(0, 1, 10, 0)``: release numbers only, compared as numbers. ``ValueError`` otherwise."""
    if not isinstance(text, str) or not VERSION_RE.match(text):
        raise ValueError("%r is not a version (1 to 4 numbers joined by dots, e.g. 0.2.1)" % (text,))
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (4 - len(parts)))


def protected_header(kid_bytes):
    return cbor2.dumps({wire.HDR_ALG: wire.ALG_EDDSA, wire.HDR_CT: CT_UPDATE, wire.HDR_KID: kid_bytes},
                       canonical=True)


def encode_payload(version, min_version, created, files):
    """``files``: ``[(name, sha256 bytes, size), ...]``."""
    return cbor2.dumps({"v": MANIFEST_VERSION, "project": PROJECT, "version": version, "min_version": min_version,
                        "created": created, "files": [{"name": n, "sha256": d, "size": s} for n, d, s in files]},
                       canonical=True)


def sign_manifest(key, version, min_version, created, files):
    """The signed manifest (bytes) from an operator's ``SigningKey``; checks what the verifier would refuse."""
    payload = encode_payload(version, min_version, created, files)
    _payload(payload, key.kid)  # the same shape checks as the gateway's
    data = wire.sign(payload, key, protected_header(key.kid_bytes))
    if len(data) > MAX_MANIFEST_BYTES:
        raise UpdateError("manifest is %d bytes, over the %d limit" % (len(data), MAX_MANIFEST_BYTES), "malformed")
    return data


def verify_manifest(data, operators):
    """Verify a signed manifest against ``operators`` (kid bytes -> Ed25519 public key) and return a ``Manifest``.

    Checks, cheap and unauthenticated first: size and strict CBOR (``malformed``), a COSE_Sign1 at all
    (``unsigned``: a bare CBOR map is an unsigned manifest), the header and content type (``malformed``), the key
    (``unknown_key``), the signature (``bad_signature``), then the payload's shape (``malformed``)."""
    if not operators:
        raise UpdateError("no operator keys configured: set update.operators (or downlink.operators) to the "
                          "operator JWK Set", "no_operators")
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_MANIFEST_BYTES:
        raise UpdateError("manifest must be at most %d bytes" % MAX_MANIFEST_BYTES, "malformed")
    data = bytes(data)
    try:
        protected, unprotected, payload, signature = wire._envelope(data, MAX_MANIFEST_BYTES)
        header = wire._strict_loads(protected, "protected header")
    except VerifyError as exc:
        try:
            bare = wire._strict_loads(data, "manifest")
        except VerifyError:
            bare = None
        if isinstance(bare, dict):
            raise UpdateError("manifest is not signed (a bare map, no COSE_Sign1): sign it with "
                              "'edge-gateway update build --key operator.pem'", "unsigned") from None
        raise UpdateError("manifest is not a COSE_Sign1: %s" % exc, "unsigned" if exc.reason == "not_cose"
                          else "malformed") from None
    if not isinstance(header, dict) or unprotected or set(header) != {wire.HDR_ALG, wire.HDR_CT, wire.HDR_KID}:
        raise UpdateError("manifest header must be exactly alg, content type and kid", "malformed")
    if header[wire.HDR_CT] != CT_UPDATE:
        raise UpdateError("content type %r is not an update manifest (%s)" % (header[wire.HDR_CT], CT_UPDATE),
                          "malformed")
    alg, kid = header[wire.HDR_ALG], header[wire.HDR_KID]
    if alg != wire.ALG_EDDSA or isinstance(alg, bool) or not isinstance(kid, bytes):
        raise UpdateError("alg must be EdDSA (-8) and kid a byte string", "malformed")
    public = operators.get(kid)
    if public is None or not isinstance(public, SIGNING.public_class):
        raise UpdateError("manifest signed by key %r, which is not an operator key of this gateway"
                          % kid[:32].decode("ascii", "replace"), "unknown_key")
    if len(signature) != SIGNING.signature_bytes:
        raise UpdateError("signature must be %d bytes" % SIGNING.signature_bytes, "bad_signature")
    try:
        public.verify(signature, wire.sig_structure(protected, payload))
    except InvalidSignature:
        raise UpdateError("manifest signature does not verify (altered, or signed by another key)",
                          "bad_signature") from None
    return _payload(payload, kid.decode("ascii", "replace"))


def _payload(payload, kid):
    try:
        body = wire._strict_loads(payload, "payload")
    except VerifyError as exc:
        raise UpdateError(str(exc), "malformed") from None
    keys = {"v", "project", "version", "min_version", "created", "files"}
    if not isinstance(body, dict) or set(body) != keys:
        raise UpdateError("manifest must be a map of exactly %s" % ", ".join(sorted(keys)), "malformed")
    if body["v"].__class__ is not int or body["v"] != MANIFEST_VERSION:
        raise UpdateError("unsupported manifest version %r" % (body["v"],), "malformed")
    if body["project"] != PROJECT:
        raise UpdateError("bundle is for %r, not %s" % (body["project"], PROJECT), "malformed")
    for name in ("version", "min_version"):
        try:
            parse_version(body[name])
        except ValueError as exc:
            raise UpdateError("%s: %s" % (name, exc), "malformed") from None
    if body["created"].__class__ is not int or not 0 <= body["created"] <= INT63:
        raise UpdateError("created must be Unix seconds", "malformed")
    files = body["files"]
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise UpdateError("files must list 1 to %d wheels" % MAX_FILES, "malformed")
    out, seen = [], set()
    for i, f in enumerate(files):
        if not isinstance(f, dict) or set(f) != {"name", "sha256", "size"}:
            raise UpdateError("files[%d] must be a map of exactly name, sha256, size" % i, "malformed")
        name, digest, size = f["name"], f["sha256"], f["size"]
        if not isinstance(name, str) or not FILE_RE.match(name) or name in seen:
            raise UpdateError("files[%d]: %r is not a wheel's file name (or is listed twice)" % (i, name),
                              "malformed")
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise UpdateError("files[%d].sha256 must be 32 bytes" % i, "malformed")
        if size.__class__ is not int or not 0 < size <= MAX_FILE_BYTES:
            raise UpdateError("files[%d].size must be 1..%d" % (i, MAX_FILE_BYTES), "malformed")
        seen.add(name)
        out.append(FileEntry(name, digest, size))
    if not any(_is_project_wheel(f.name, body["version"]) for f in out):
        raise UpdateError("files hold no %s wheel of version %s" % (PROJECT, body["version"]), "malformed")
    if not any(f.name.startswith("pip-") for f in out):
        raise UpdateError("files hold no pip wheel (the installer runs pip from it, offline)", "malformed")
    return Manifest(kid, body["version"], body["min_version"], body["created"], tuple(out))


def _is_project_wheel(name, version):
    return name.startswith("%s-%s-" % (PROJECT.replace("-", "_"), version))


def admit(manifest, running, pin=""):
    """Whether ``manifest`` may replace ``running`` (a version string) under ``pin`` (``""``: not pinned).
    Raises ``UpdateError`` (``pinned``, ``below_minimum``, ``downgrade``); returns None when admitted."""
    new = parse_version(manifest.version)
    if pin and new != parse_version(pin):
        raise UpdateError("this gateway is pinned to %s (update.pin); bundle is %s: change the pin first"
                          % (pin, manifest.version), "pinned")
    try:
        cur = parse_version(running)
    except ValueError:
        raise UpdateError("the running version %r cannot be compared: reinstall by hand" % (running,),
                          "below_minimum") from None
    if cur < parse_version(manifest.min_version):
        raise UpdateError("bundle %s replaces %s or later only; this gateway runs %s: update to %s first"
                          % (manifest.version, manifest.min_version, running, manifest.min_version),
                          "below_minimum")
    if new <= cur:
        raise UpdateError("bundle %s is not newer than the running %s: refused (downgrades and reinstalls are "
                          "not taken; 'edge-gateway update --rollback' goes back to the previous version)"
                          % (manifest.version, running), "downgrade")
