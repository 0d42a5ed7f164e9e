"""Signed downlink commands: an operator's COSE_Sign1 that changes one gateway (docs/wire-format.md, "Commands").

Pure: bytes, keys and the time in; a ``Command`` or a ``CommandError`` out. No clock is read here.

Layout::

    18([ << {1: -8, 3: "application/edge-gateway-command+cbor", 4: kid} >>, {}, << payload >>, signature ])
    payload = {"v": 1, "gw": tstr, "op_seq": uint63, "exp": uint63, "action": tstr, "args": {* tstr => value}}

The protected content type is what tells a command from a batch: a batch carries 60 (application/cbor) and
``wire.verify`` refuses anything else (``bad_header``), and ``verify_command`` refuses anything but
``CT_COMMAND`` (``malformed``), both before the signature. It is protected, so it is signed too.

Operator keys are a trust root of their own (``operators``: kid bytes -> Ed25519 public key, the gateway's
``[downlink] operators`` JWK Set); a gateway's own trust store never signs commands.
"""

import base64
import hashlib
import json
import math
import re
from dataclasses import dataclass

import cbor2
from cryptography.exceptions import InvalidSignature

from gateway.core import wire
from gateway.core.algorithms import SIGNING
from gateway.core.errors import GatewayError, VerifyError

COMMAND_VERSION = 1
CT_COMMAND = "application/edge-gateway-command+cbor"
MAX_COMMAND_BYTES = 4096
MAX_ARGS = 16
MAX_TEXT = 1024
INT64_MAX = (1 << 63) - 1
GW_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,63}$")  # a gateway id, as the config and trust store take it

#: action -> its argument names, in the order the CLI takes them as positional words (``command sign``)
ACTIONS = {
    "config_set": ("key", "value"),
    "store_requeue": (),
    "diagnose": (),
    "restart": (),
    "update": ("url", "sha256"),  # fetch the bundle (sha256: its hex digest), verify, stage (app/update_agent.py)
}

#: the states of an outcome record (``<gw>/downlink/<op_seq>``, ``vs`` = ``"<state>: <text>"``); ``checking`` is
#: the one that is not final (an uplink change waiting for its check, docs/wire-format.md "Apply, check, keep or
#: revert")
OUTCOME_STATES = ("applied", "failed", "rejected", "reverted", "checking")
#: HTTP delivery (docs/wire-format.md, "Delivery (HTTP)"): the JSON key of the receiver's 2xx answer that holds
#: commands for the gateway, at most this many per answer, the answer read at most this far
ANSWER_KEY = "commands"
MAX_ANSWER_COMMANDS = 8
MAX_ANSWER_BYTES = 65536
DIGEST_HEX = 16  # the command id in outcome texts: the first 16 hex digits of SHA-256 over the signed bytes
_OUTCOME_NAME = re.compile(r"/downlink/(\d{1,19}|unverified)$")
_OUTCOME_DIGEST = re.compile(r"\[cmd ([0-9a-f]{%d})\]" % DIGEST_HEX)
_OUTCOME_KID = re.compile(r"\(key ([A-Za-z0-9_-]{1,64}), seq \d+\)")

#: every reason ``CommandError`` carries (a stable token: counters, the outcome record, the docs)
REASONS = ("oversize", "malformed", "unknown_key", "bad_signature", "wrong_gateway", "replayed", "clock_unsynced",
           "expired", "unknown_action")


class CommandError(GatewayError):
    """A command was refused. ``reason`` is one of ``REASONS``; ``kid`` and ``op_seq`` are set once the
    signature verified (before that they are untrusted and left None)."""

    def __init__(self, message, reason, kid=None, op_seq=None):
        super().__init__(message)
        self.reason = reason
        self.kid = kid
        self.op_seq = op_seq


@dataclass(frozen=True, slots=True)
class Command:
    kid: str
    gw: str
    op_seq: int
    exp: int
    action: str
    args: tuple  # ((name, value), ...) sorted by name: hashable, immutable

    def arg(self, name):
        return dict(self.args)[name]


def protected_header(kid_bytes):
    return cbor2.dumps({wire.HDR_ALG: wire.ALG_EDDSA, wire.HDR_CT: CT_COMMAND, wire.HDR_KID: kid_bytes},
                       canonical=True)


def encode_payload(gw, op_seq, exp, action, args=None):
    return cbor2.dumps({"v": COMMAND_VERSION, "gw": gw, "op_seq": op_seq, "exp": exp, "action": action,
                        "args": dict(args or {})}, canonical=True)


def sign_command(key, gw, op_seq, exp, action, args=None):
    """A signed command (bytes) from an operator's ``SigningKey``. Checks what the verifier would refuse."""
    check_args(action, args or {})
    payload = encode_payload(gw, op_seq, exp, action, args)
    data = wire.sign(payload, key, protected_header(key.kid_bytes))
    if len(data) > MAX_COMMAND_BYTES:
        raise CommandError("command is %d bytes, over the %d limit" % (len(data), MAX_COMMAND_BYTES), "oversize")
    return data


def check_args(action, args):
    """``unknown_action`` unless ``action`` is known and ``args`` names exactly its arguments."""
    if action not in ACTIONS:
        raise CommandError("unknown action %r (known: %s)" % (str(action)[:40], ", ".join(ACTIONS)),
                           "unknown_action")
    if set(args) != set(ACTIONS[action]):
        raise CommandError("action %s takes %s, got %s" % (action, ", ".join(ACTIONS[action]) or "no arguments",
                                                           ", ".join(sorted(map(str, args))) or "none"),
                           "unknown_action")


def verify_command(data, operators, gw, last_seq, now):
    """Verify one command for gateway ``gw`` and return a ``Command``, or raise ``CommandError``.

    ``operators``: kid bytes -> Ed25519 public key (the operator trust root). ``last_seq``: kid (text) -> the last
    ``op_seq`` applied from that key (absent: none yet). ``now``: Unix seconds from a **synchronised** clock, or
    None when the clock is not synchronised: then every command is refused (``clock_unsynced``), because its
    expiry cannot be checked and an old captured command could otherwise be applied.

    Checks, in this order (cheap and unauthenticated first; nothing of the payload is trusted before the
    signature): size (``oversize``), strict CBOR and the envelope (``malformed``), the key (``unknown_key``), the
    signature (``bad_signature``), the payload's shape (``malformed``), the target (``wrong_gateway``), the
    sequence (``replayed``: ``op_seq`` must exceed the last applied from that key), the time (``clock_unsynced``,
    ``expired``: ``now`` must be before ``exp``), the action and its arguments (``unknown_action``).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CommandError("command must be bytes", "malformed")
    data = bytes(data)
    if len(data) > MAX_COMMAND_BYTES:
        raise CommandError("command is %d bytes, over the %d limit" % (len(data), MAX_COMMAND_BYTES), "oversize")
    try:
        protected, unprotected, payload, signature = wire._envelope(data, MAX_COMMAND_BYTES)
        header = wire._strict_loads(protected, "protected header")
    except VerifyError as exc:
        raise CommandError("not a command: %s" % exc, "malformed") from None
    if not isinstance(header, dict) or unprotected or set(header) != {wire.HDR_ALG, wire.HDR_CT, wire.HDR_KID}:
        raise CommandError("protected header must be exactly alg, content type and kid; unprotected empty",
                           "malformed")
    if header[wire.HDR_CT] != CT_COMMAND:
        raise CommandError("content type %r is not a command (%s)" % (header[wire.HDR_CT], CT_COMMAND), "malformed")
    alg, kid = header[wire.HDR_ALG], header[wire.HDR_KID]
    if alg != wire.ALG_EDDSA or isinstance(alg, bool) or not isinstance(kid, bytes):
        raise CommandError("alg must be EdDSA (-8) and kid a byte string", "malformed")
    public = operators.get(kid)
    if public is None or not isinstance(public, SIGNING.public_class):
        raise CommandError("kid %r is not an operator key of this gateway" % (kid[:32].decode("ascii", "replace"),),
                           "unknown_key")
    if len(signature) != SIGNING.signature_bytes:
        raise CommandError("signature must be %d bytes" % SIGNING.signature_bytes, "bad_signature")
    try:
        public.verify(signature, wire.sig_structure(protected, payload))
    except InvalidSignature:
        raise CommandError("signature does not verify", "bad_signature") from None
    kid_text = kid.decode("ascii", "replace")
    body = _payload(payload, kid_text)
    op_seq = body["op_seq"]
    if body["gw"] != gw:
        raise CommandError("command is for gateway %r, this is %r" % (body["gw"], gw), "wrong_gateway", kid_text,
                           op_seq)
    last = last_seq.get(kid_text)
    if last is not None and op_seq <= last:
        raise CommandError("op_seq %d is not above %d, the last applied from key %s" % (op_seq, last, kid_text),
                           "replayed", kid_text, op_seq)
    if now is None:
        raise CommandError("the clock is not synchronised: the expiry cannot be checked", "clock_unsynced",
                           kid_text, op_seq)
    if not now < body["exp"]:
        raise CommandError("command expired at %d (now %d)" % (body["exp"], int(now)), "expired", kid_text, op_seq)
    args = body["args"]
    try:
        check_args(body["action"], args)
    except CommandError as exc:
        raise CommandError(str(exc), exc.reason, kid_text, op_seq) from None
    return Command(kid_text, gw, op_seq, body["exp"], body["action"], tuple(sorted(args.items())))


def _payload(payload, kid):
    try:
        body = wire._strict_loads(payload, "payload")
    except VerifyError as exc:
        raise CommandError(str(exc), "malformed", kid) from None
    if not isinstance(body, dict) or set(body) != {"v", "gw", "op_seq", "exp", "action", "args"}:
        raise CommandError("payload must be a map of exactly v, gw, op_seq, exp, action, args", "malformed", kid)
    if body["v"] != COMMAND_VERSION or body["v"].__class__ is not int:
        raise CommandError("unsupported command version %r" % (body["v"],), "malformed", kid)
    if not isinstance(body["gw"], str) or not GW_RE.match(body["gw"]):
        raise CommandError("gw must be a gateway id", "malformed", kid)
    for name in ("op_seq", "exp"):
        value = body[name]
        if value.__class__ is not int or not (1 if name == "op_seq" else 0) <= value <= INT64_MAX:
            raise CommandError("%s must be an integer in %d..2^63-1" % (name, name == "op_seq"), "malformed", kid)
    if not isinstance(body["action"], str) or not 0 < len(body["action"]) <= 64:
        raise CommandError("action must be a short text", "malformed", kid)
    args = body["args"]
    if not isinstance(args, dict) or len(args) > MAX_ARGS:
        raise CommandError("args must be a map of at most %d entries" % MAX_ARGS, "malformed", kid)
    for name, value in args.items():
        if not isinstance(name, str) or not _arg_value(value):
            raise CommandError("args must map text to text, a bool, an int64 or a finite float", "malformed", kid)
    return body


def _arg_value(value):
    cls = value.__class__
    if cls is str:
        return len(value) <= MAX_TEXT
    if cls is bool:
        return True
    if cls is int:
        return -INT64_MAX - 1 <= value <= INT64_MAX
    return cls is float and math.isfinite(value)


# -- HTTP delivery and outcomes: shared by the gateway and the reference receiver ----------------------------------
def command_digest(data):
    """The id an outcome text carries for the command it answers (``[cmd <16 hex>]``): the first 16 hex digits of
    SHA-256 over the command's bytes as they arrived, signed or not, so the receiver can match even an outcome of a
    command whose signature did not verify."""
    return hashlib.sha256(bytes(data)).hexdigest()[:DIGEST_HEX]


def peek_gw(data, max_bytes=MAX_COMMAND_BYTES):
    """The ``gw`` a command names, read **without** verifying it (routing only: the queue or topic it goes to);
    then ``verify_command`` against that id checks everything. ``CommandError`` (``malformed``/``oversize``).
    ``max_bytes``: the operator's tools route even an oversized one (the gateway refuses it, a test shows)."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > max_bytes:
        raise CommandError("a command is at most %d bytes" % max_bytes, "oversize")
    try:
        _, _, payload, _ = wire._envelope(bytes(data), max_bytes)
        body = wire._strict_loads(payload, "payload")
    except VerifyError as exc:
        raise CommandError("not a command: %s" % exc, "malformed") from None
    gw = body.get("gw") if isinstance(body, dict) else None
    if not isinstance(gw, str) or not GW_RE.match(gw):
        raise CommandError("the payload names no gateway id", "malformed")
    return gw


def encode_answer(commands):
    """The ``commands`` value of a receiver's answer: each command's bytes in base64url without padding."""
    return [base64.urlsafe_b64encode(bytes(c)).rstrip(b"=").decode("ascii") for c in commands]


def commands_from_answer(body):
    """The commands a receiver's 2xx answer (``body``: bytes, JSON) hands over; ``[]`` when it has none.

    An answer that is not JSON, or has no ``commands`` key, holds none (older receivers, other backends). A
    ``commands`` value that is not a list of at most ``MAX_ANSWER_COMMANDS`` base64url texts raises
    ``CommandError`` (``malformed``): the batch was still delivered. Sizes are bounded by the answer (the uplink
    reads at most ``MAX_ANSWER_BYTES``); an oversized command is handed on, so the gateway refuses it as
    ``oversize`` and says so upstream."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return []
    if not isinstance(doc, dict) or ANSWER_KEY not in doc:
        return []
    items = doc[ANSWER_KEY]
    if not isinstance(items, list) or len(items) > MAX_ANSWER_COMMANDS:
        raise CommandError("answer's commands must be a list of at most %d" % MAX_ANSWER_COMMANDS, "malformed")
    out = []
    for item in items:
        if not isinstance(item, str) or not item.isascii():
            raise CommandError("answer's commands must be base64url texts of commands", "malformed")
        try:
            out.append(base64.urlsafe_b64decode(item + "=" * (-len(item) % 4)))
        except ValueError:
            raise CommandError("answer's commands must be base64url texts of commands", "malformed") from None
    return out


@dataclass(frozen=True, slots=True)
class Outcome:
    """One outcome record as a backend reads it: ``op_seq`` (None for ``unverified``), its state, the text after
    the state, and what the text names: the command's digest (``[cmd ...]``) and operator kid (``(key ..., seq
    n)``), each None when absent."""
    op_seq: object
    state: str
    text: str
    digest: object
    kid: object


def parse_outcome(name, vs):
    """An ``Outcome`` for a record named ``<gw>/downlink/<op_seq|unverified>`` whose ``vs`` starts with one of
    ``OUTCOME_STATES``; None for any other record."""
    m = _OUTCOME_NAME.search(name or "")
    if m is None or not isinstance(vs, str):
        return None
    state, sep, text = vs.partition(": ")
    if not sep or state not in OUTCOME_STATES:
        return None
    op_seq = None if m.group(1) == "unverified" else int(m.group(1))
    if op_seq is not None and op_seq > INT64_MAX:
        return None
    digest = _OUTCOME_DIGEST.search(text)
    kid = _OUTCOME_KID.search(text)
    return Outcome(op_seq, state, text, digest and digest.group(1), kid and kid.group(1))
