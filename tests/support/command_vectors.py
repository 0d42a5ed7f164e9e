"""Build the committed command test vectors (tests/vectors/commands/*.json) from their inputs.

Each vector names an Ed25519 seed (RFC 8032 section 7.1, TEST 2: the operator key, kept apart from the gateway
vectors' TEST 1 key), the payload's fields, and holds the exact payload and COSE_Sign1 bytes (Ed25519 is
deterministic). Run ``python -m tests.support.command_vectors`` to write them afresh, only when the command format
changes on purpose.
"""

import json
import os

from gateway.adapters.keys import SigningKey
from gateway.core import commands
from tests.support import load_vectors

VECTOR_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vectors", "commands")
INPUTS = {
    "01-config-set.json": {
        "description": "config_set batch.max_age_s 5 for gw-01: the operator's third command, valid until 2027-01-01.",
        "gw": "gw-01", "op_seq": 3, "exp": 1798761600, "action": "config_set",
        "args": {"key": "batch.max_age_s", "value": "5"}},
    "02-restart.json": {
        "description": "restart gw-01: no arguments (an empty args map).",
        "gw": "gw-01", "op_seq": 4, "exp": 1798761600, "action": "restart", "args": {}},
}
SEED = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"
SOURCE = "Key: RFC 8032 section 7.1 TEST 2 secret key. Layout: RFC 9052 COSE_Sign1, docs/wire-format.md (Commands)."


def build(vec):
    key = SigningKey.from_seed(bytes.fromhex(vec["seed"]))
    payload = commands.encode_payload(vec["gw"], vec["op_seq"], vec["exp"], vec["action"], vec["args"])
    return key, payload, commands.sign_command(key, vec["gw"], vec["op_seq"], vec["exp"], vec["action"], vec["args"])


def load_all():
    return load_vectors(VECTOR_DIR)


if __name__ == "__main__":
    for name, inputs in INPUTS.items():
        vec = dict(inputs, source=SOURCE, seed=SEED)
        key, payload, cose = build(vec)
        vec.update(kid=key.kid, jwk=key.jwk(), payload_hex=payload.hex(), cose_hex=cose.hex())
        with open(os.path.join(VECTOR_DIR, name), "w") as f:
            json.dump(vec, f, indent=2)
            f.write("\n")
        print(name, len(cose), "bytes")
