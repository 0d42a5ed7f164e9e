"""Build the committed wire-format test vectors from their JSON inputs (tests/vectors/wire/*.json).

Each vector names an Ed25519 seed (RFC 8032 section 7.1, TEST 1), the payload's fields and its readings and events,
and holds the exact payload and COSE_Sign1 bytes. Ed25519 signatures are deterministic, so the bytes are too.
Run ``python -m tests.support.wire_vectors`` to write the vectors of the current format afresh (only when the wire
format changes on purpose; bump FORMAT_VERSION). Vectors of an older format (``"format"`` below the current one)
are frozen: the encoder no longer writes them, and the tests only check that they still verify. ``pycose_verify`` is the independent check the wire and demo tests share.
"""

import json
import os

from gateway.core import senml, wire
from gateway.adapters.keys import SigningKey, b64url_decode
from gateway.core.model import Event, Reading
from tests.support import load_vectors


def pycose_verify(data, jwk):
    """The independent check: pycose decodes the tagged COSE_Sign1 and verifies it with the JWK's key."""
    from pycose.keys import OKPKey  # pycose only where the independent check runs
    from pycose.messages import Sign1Message
    msg = Sign1Message.decode(data)
    msg.key = OKPKey.from_dict({"KTY": "OKP", "CURVE": "ED25519", "X": b64url_decode(jwk["x"])})
    return msg.verify_signature()


VECTOR_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vectors", "wire")


def build(vec):
    key = SigningKey.from_seed(bytes.fromhex(vec["seed"]))
    readings = [Reading(r["sensor"], r["name"], r["value"], r.get("unit"), r["t"], r.get("resolution"))
                for r in vec["readings"]]
    events = [Event(e["sensor"], e["name"], e["state"], e["reason"], e["t"], alarm=e.get("alarm", False))
              for e in vec.get("events", [])]
    records = senml.encode_records(readings, events, vec["gw"] + "/", time_quantum=vec["time_quantum"])
    payload = wire.encode_payload(vec["gw"], vec["boot"], vec["seq"], vec["clock"], records, vec.get("anchor"))
    return key, payload, wire.sign(payload, key)


def is_current(vec):
    """True for a vector of the format the encoder writes (its bytes are reproduced); False for a frozen one."""
    return vec.get("format", 1) == wire.FORMAT_VERSION


def load_all():
    return load_vectors(VECTOR_DIR)


if __name__ == "__main__":
    for name, vec in load_all():
        if not is_current(vec):
            continue
        key, payload, cose = build(vec)
        vec["kid"] = key.kid
        vec["jwk"] = key.jwk(vec["gw"])
        vec["payload_hex"] = payload.hex()
        vec["cose_hex"] = cose.hex()
        with open(os.path.join(VECTOR_DIR, name), "w") as f:
            json.dump(vec, f, indent=2)
            f.write("\n")
        print(name, len(cose), "bytes")
