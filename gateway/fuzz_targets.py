"""The fuzz targets: every entry point that parses bytes or text from outside (``gateway.fuzz``).

One function per area builds its targets; ``targets()`` collects them. A target's ``allowed`` errors are the
project's typed errors for that entry point: anything else escaping is a bug.
"""

from gateway.fuzz import Target


def _wire_targets():
    from gateway.errors import VerifyError
    from gateway.keys import SigningKey, TrustStore
    from gateway.wire import encode_payload, sign, verify
    key = SigningKey.from_seed(bytes(range(32)))
    trust = TrustStore({"keys": [key.jwk("gw-fuzz")]})
    records = [{-2: "gw-fuzz/s1/temp", -4: "Cel", -3: 1_700_000_000, 2: 21.5}, {6: 10, 2: 21.25}]
    corpus = (sign(encode_payload("gw-fuzz", 1, 0, True, records), key),
              sign(encode_payload("gw-fuzz", 7, 42, False, records, anchor=(12.5, 1000.0)), key))
    return [Target("wire.verify", lambda data: verify(data, trust), corpus, (VerifyError,))]


def _receiver_targets():
    return []


def _driver_targets():
    return []


def _config_targets():
    return []


def targets():
    return _wire_targets() + _receiver_targets() + _driver_targets() + _config_targets()
