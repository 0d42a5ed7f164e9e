"""The fuzz targets: every entry point that parses bytes or text from outside (``gateway.fuzz``).

One function per area builds its targets; ``targets()`` collects them. A target's ``allowed`` errors are the
project's typed errors for that entry point: anything else escaping is a bug.
"""

from gateway.fuzz import Target


def _wire_targets():
    import cbor2

    from gateway import cbor_strict, senml
    from gateway.errors import VerifyError
    from gateway.keys import SigningKey, TrustStore
    from gateway.wire import encode_payload, sign, verify
    key = SigningKey.from_seed(bytes(range(32)))
    trust = TrustStore({"keys": [key.jwk("gw-fuzz")]})
    records = [{-2: "gw-fuzz/s1/temp", -4: "Cel", -3: 1_700_000_000, 2: 21.5}, {6: 10, 2: 21.25},
               {-2: "gw-fuzz/s1/", 0: "alarm.high", 3: "raised: temp 9.1 above 8"}, {-2: "gw-fuzz/s2/door", 4: True},
               {-2: "gw-fuzz/s3/raw", -5: 10, 2: -3, 5: 1.5}, {-2: "gw-fuzz/s3/blob", 8: b"\x01\x02", 6: -2.5}]
    payloads = (encode_payload("gw-fuzz", 1, 0, True, records[:2]),
                encode_payload("gw-fuzz", 7, 42, False, records, anchor=(12.5, 1000.0)))
    corpus = tuple(sign(p, key) for p in payloads)

    def payload_path(data):
        """Past the signature: every mutated payload is signed with the trusted key, so only its parsing can fail."""
        return verify(sign(data, key), trust)

    def resolve(data):
        try:
            pack = cbor2.loads(data) if cbor_strict.item_end(data) == len(data) else None
        except cbor_strict.CBORStrictError as exc:
            raise VerifyError(str(exc)) from None
        if pack is None:
            raise VerifyError("bytes after the pack")
        return senml.resolve(pack)

    def checker(data):
        """The checker, and a differential: whatever it passes, cbor2 decodes and re-encodes without an error."""
        stop = cbor_strict.item_end(data, 0, top_tag=18)
        value = cbor2.loads(data[:stop])
        cbor_strict.check(cbor2.dumps(value), top_tag=18)
        return stop

    return [Target("wire.verify", lambda data: verify(data, trust), corpus, (VerifyError,)),
            Target("wire.payload", payload_path, payloads, (VerifyError,)),
            Target("senml.resolve", resolve, tuple(cbor2.dumps(r) for r in (records, records[:1])), (VerifyError,)),
            Target("cbor_strict", checker, corpus + payloads, (cbor_strict.CBORStrictError,))]


def _receiver_targets():
    return []


def _driver_targets():
    return []


def _config_targets():
    return []


def targets():
    return _wire_targets() + _receiver_targets() + _driver_targets() + _config_targets()
