"""The wire format: a signed batch is a tagged COSE_Sign1 (RFC 9052) over a CBOR payload map.

This module is the verify library for backends: it needs no running agent, only ``cbor2`` and ``cryptography``::

    from gateway.adapters.keys import TrustStore
    from gateway.core.wire import verify
    batch = verify(data, TrustStore.load("jwks.json"))
    batch.gw, batch.boot, batch.seq, batch.records

Layout (``docs/wire-format.md`` has the CDDL, examples and test vectors)::

    18([ << {1: -8, 3: 60, 4: kid} >>, {}, << payload >>, signature ])
    payload = {"v": 2, "gw": tstr, "boot": uint63, "seq": uint63, "clock": bool, "senml": [* record],
               ? "anchor": [mono, wall]}

Version 2 (what ``encode_payload`` writes) carries decimal readings exactly, as integers under a decimal exponent
(``be_``, ``gateway.core.senml``); ``verify`` accepts versions 1 and 2 (``VERSIONS``).

Verifying trusts nothing before it is checked: ``gateway.core.cbor_strict`` passes the bytes (one item, the CBOR subset
the CDDL uses) before ``cbor2`` decodes them, integers are bounded to int64 and floats must be finite, and a key
speaks only for the gateway it is bound to. Every failure is a ``VerifyError`` with a stable ``reason``.

Signing builds the CBOR by hand: the layout is fixed, and it saves two encoder passes per batch.
"""

import math
from dataclasses import dataclass

import cbor2
from cryptography.exceptions import InvalidSignature

from gateway.core import cbor_strict, senml
from gateway.core.algorithms import SIGNING
from gateway.core.errors import VerifyError

FORMAT_VERSION = 2
#: the format versions ``verify`` accepts: 1 (values as resolution-rounded floats) and 2 (exact decimals)
VERSIONS = (1, 2)
COSE_SIGN1_TAG = 18
ALG_EDDSA = SIGNING.cose_alg  # -8, from gateway/core/algorithms.py
CT_CBOR = 60  # CoAP Content-Format for application/cbor
HDR_ALG, HDR_CT, HDR_KID = 1, 3, 4
MAX_BATCH_BYTES = 1 << 20
HTTP_CONTENT_TYPE = 'application/cose; cose-type="cose-sign1"'


def _bstr_head(n):
    if n < 24:
        return bytes((0x40 | n,))
    if n < 0x100:
        return bytes((0x58, n))
    if n < 0x10000:
        return b"\x59" + n.to_bytes(2, "big")
    return b"\x5a" + n.to_bytes(4, "big")


def protected_header(kid_bytes):
    return cbor2.dumps({HDR_ALG: ALG_EDDSA, HDR_CT: CT_CBOR, HDR_KID: kid_bytes}, canonical=True)


def sig_structure(protected, payload, external_aad=b""):
    """RFC 9052 section 4.4: ["Signature1", protected, external_aad, payload]."""
    return b"".join((b"\x84\x6aSignature1", _bstr_head(len(protected)), protected,
                     _bstr_head(len(external_aad)), external_aad, _bstr_head(len(payload)), payload))


def encode_payload(gw, boot, seq, clock, records, anchor=None, extra=None):
    payload = {"v": FORMAT_VERSION, "gw": gw, "boot": boot, "seq": seq, "clock": bool(clock), "senml": records}
    if anchor is not None:
        payload["anchor"] = list(anchor)
    if extra:
        payload.update(extra)
    return cbor2.dumps(payload, canonical=True)


def sign(payload, key, protected=None):
    """Wrap ``payload`` bytes in a tagged COSE_Sign1 signed by ``key`` (a ``gateway.adapters.keys.SigningKey``)."""
    if protected is None:
        protected = protected_header(key.kid_bytes)
    signature = key.sign(sig_structure(protected, payload))
    return b"".join((b"\xd2\x84", _bstr_head(len(protected)), protected, b"\xa0",
                     _bstr_head(len(payload)), payload, _bstr_head(SIGNING.signature_bytes), signature))


class Signer:
    """Signs payloads for one key, caching the protected header."""

    def __init__(self, key):
        self.key = key
        self.kid = key.kid
        self.protected = protected_header(key.kid_bytes)

    def __call__(self, payload):
        return sign(payload, self.key, self.protected)


@dataclass(frozen=True, slots=True)
class VerifiedBatch:
    kid: str
    gw: str
    boot: int
    seq: int
    clock: bool
    records: list
    anchor: tuple = None
    payload: dict = None
    version: int = FORMAT_VERSION

    @property
    def key(self):
        return (self.gw, self.boot, self.seq)


INT64_MAX = (1 << 63) - 1


def _strict_loads(data, what):
    """Decode ``data`` only once ``cbor_strict`` has passed it whole, so the decoder never meets input it rejects."""
    try:
        cbor_strict.check(data)
    except cbor_strict.CBORStrictError as exc:
        raise VerifyError("%s is not allowed CBOR: %s" % (what, exc), reason="malformed") from None
    return cbor2.loads(data)


def _uint64(body, name):
    value = body.get(name)
    if value.__class__ is not int or not 0 <= value <= INT64_MAX:
        raise VerifyError("payload %s must be an unsigned integer up to 2^63-1" % name, reason="bad_payload")
    return value


def _finite(value):
    cls = value.__class__
    if cls is int:
        return -INT64_MAX - 1 <= value <= INT64_MAX
    return cls is float and math.isfinite(value)


def verify(data, trust, max_bytes=MAX_BATCH_BYTES):
    """Verify one batch against ``trust`` (a ``gateway.adapters.keys.TrustStore``) and return a ``VerifiedBatch``.

    Raises ``VerifyError`` whose ``reason`` is one of: ``oversize``, ``malformed``, ``not_cose``, ``bad_header``,
    ``bad_alg``, ``unknown_kid``, ``bad_signature``, ``bad_payload``, ``bad_version``, ``gw_mismatch``,
    ``bad_senml``. ``data`` must be exactly one batch (bytes after it are ``malformed``). The envelope and the
    protected header are checked by ``cbor_strict`` before the signature, the payload after it; the decoder only
    sees what the checker passed. Checks the signature before it looks at the payload.
    """
    protected, unprotected, payload, signature = _envelope(data, max_bytes)
    kid = _header_kid(protected, unprotected)
    public = trust.keys.get(kid)
    if public is None:
        raise VerifyError("unknown kid %r" % (kid[:32].decode("ascii", "replace"),), reason="unknown_kid")
    if not isinstance(public, SIGNING.public_class):
        # pycose accepts Ed448 under alg -8; we only ever trust Ed25519 (crv 6).
        raise VerifyError("key %r is not %s" % (kid, SIGNING.name), reason="bad_alg")
    if len(signature) != SIGNING.signature_bytes:
        raise VerifyError("%s signature must be %d bytes" % (SIGNING.name, SIGNING.signature_bytes),
                          reason="bad_signature")
    try:
        public.verify(signature, sig_structure(protected, payload))
    except InvalidSignature:
        raise VerifyError("signature does not verify for kid %r" % (kid.decode("ascii", "replace"),),
                          reason="bad_signature") from None
    return _payload(_strict_loads(payload, "payload"), kid, trust)


def _envelope(data, max_bytes):
    """The four members of the one tagged COSE_Sign1 in ``data``, checked by ``cbor_strict`` before decoding."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise VerifyError("batch must be bytes", reason="malformed")
    data = bytes(data)
    if len(data) > max_bytes:
        raise VerifyError("batch is %d bytes, over the %d limit" % (len(data), max_bytes), reason="oversize")
    try:
        stop = cbor_strict.item_end(data, 0, top_tag=COSE_SIGN1_TAG)
    except cbor_strict.CBORStrictError as exc:
        raise VerifyError("batch is not allowed CBOR: %s" % (exc,), reason="malformed") from None
    msg = cbor2.loads(data)  # the first item only, and the checker passed it
    if not isinstance(msg, cbor2.CBORTag) or msg.tag != COSE_SIGN1_TAG:
        raise VerifyError("not a tagged COSE_Sign1 (tag 18)", reason="not_cose")
    if stop != len(data):
        raise VerifyError("%d bytes after the batch (one message is one batch)" % (len(data) - stop),
                          reason="malformed")
    parts = msg.value
    if not isinstance(parts, (list, tuple)) or len(parts) != 4:
        raise VerifyError("COSE_Sign1 must be an array of 4", reason="not_cose")
    protected, unprotected, payload, signature = parts
    if not isinstance(protected, bytes) or not isinstance(unprotected, dict) or not isinstance(payload, bytes) \
            or not isinstance(signature, bytes):
        raise VerifyError("COSE_Sign1 members have the wrong types", reason="not_cose")
    return protected, unprotected, payload, signature


def _header_kid(protected, unprotected):
    """Check the headers (EdDSA, CBOR content, nothing unprotected, no other labels); return the kid."""
    header = _strict_loads(protected, "protected header") if protected else {}
    if not isinstance(header, dict):
        raise VerifyError("protected header is not a map", reason="bad_header")
    if header.get(HDR_ALG) != ALG_EDDSA or isinstance(header.get(HDR_ALG), bool):
        raise VerifyError("alg must be %s (%d), got %r" % (SIGNING.cose_name, SIGNING.cose_alg, header.get(HDR_ALG)),
                          reason="bad_alg")
    if unprotected:
        raise VerifyError("the unprotected header must be empty (alg and kid belong in the protected header)",
                          reason="bad_header")
    if set(header) - {HDR_ALG, HDR_CT, HDR_KID}:
        raise VerifyError("protected header has labels other than alg, content type and kid", reason="bad_header")
    if header.get(HDR_CT) != CT_CBOR or isinstance(header.get(HDR_CT), bool):
        raise VerifyError("content type must be 60 (application/cbor), got %r" % (header.get(HDR_CT),),
                          reason="bad_header")
    kid = header.get(HDR_KID)
    if not isinstance(kid, bytes):
        raise VerifyError("protected header has no kid", reason="bad_header")
    return kid


def _payload(body, kid, trust):
    if not isinstance(body, dict):
        raise VerifyError("payload is not a map", reason="bad_payload")
    version = body.get("v")
    if version not in VERSIONS or version.__class__ is not int:
        raise VerifyError("unsupported format version %r (this verifier knows %s)"
                          % (version, " and ".join(map(str, VERSIONS))), reason="bad_version")
    gw, clock = body.get("gw"), body.get("clock")
    if not isinstance(gw, str) or not senml.NAME_RE.match(gw):
        raise VerifyError("payload gw must be a SenML-safe text", reason="bad_payload")
    boot, seq = _uint64(body, "boot"), _uint64(body, "seq")
    if not isinstance(clock, bool):
        raise VerifyError("payload clock must be a boolean", reason="bad_payload")
    expected_gw = trust.gateways.get(kid)
    if expected_gw != gw:
        raise VerifyError("kid %r belongs to gateway %r, not %r" % (kid.decode("ascii", "replace"), expected_gw, gw),
                          reason="gw_mismatch")
    anchor = body.get("anchor")
    if anchor is not None:
        if not isinstance(anchor, (list, tuple)) or len(anchor) != 2 or not all(_finite(a) for a in anchor):
            raise VerifyError("anchor must be [mono, wall], two finite numbers", reason="bad_payload")
        anchor = tuple(anchor)
    records = senml.resolve(body.get("senml"), version)
    return VerifiedBatch(kid.decode("ascii", "replace"), gw, boot, seq, clock, records, anchor, body, version)


def split_batches(data):
    """Split a CBOR sequence of batches (RFC 8742, as ``store flush-to-file`` writes) into one bytes per batch.

    Only the framing is checked here (each item passes ``cbor_strict`` with tag 18 allowed on top); ``verify``
    checks each batch. Raises ``VerifyError(reason="malformed")`` naming the index of the first bad item; an empty
    sequence is an error too.
    """
    if not data:
        raise VerifyError("no batch: the input is empty", reason="malformed")
    try:
        return cbor_strict.split_sequence(bytes(data), top_tag=COSE_SIGN1_TAG)
    except cbor_strict.CBORStrictError as exc:
        raise VerifyError("batch %d is not allowed CBOR: %s" % (exc.index, exc), reason="malformed") from None


def correct_times(records, unsynced_anchor, synced_anchor):
    """Move the times of an unsynchronised batch onto the wall clock.

    ``unsynced_anchor`` is the ``anchor`` of the batch (``[mono, wall-as-guessed]`` at its cut) and
    ``synced_anchor`` is the ``anchor`` of a later batch of the same ``(gw, boot)`` cut with ``clock`` true
    (``[mono, true wall]``). Monotonic time runs the same in both, so the correction is one offset.
    """
    offset = (synced_anchor[1] - synced_anchor[0]) - (unsynced_anchor[1] - unsynced_anchor[0])
    return [dict(r, t=r["t"] + offset) for r in records]
