"""The signed update manifest (gateway.core.update): what verifies, what is refused and why, and the version rules
(admit: no downgrade, the bundle's minimum, the pin)."""

import hashlib

import cbor2
import pytest

from gateway.adapters.keys import SigningKey
from gateway.core import commands, wire
from gateway.core.update import (CT_UPDATE, UpdateError, admit, encode_payload, parse_version, protected_header,
                                 sign_manifest, verify_manifest)

pytestmark = pytest.mark.unit

KEY = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(range(1, 33)))
OPS = {KEY.kid_bytes: KEY.public}
FILES = [("edge_gateway-0.2.0-py3-none-any.whl", hashlib.sha256(b"agent").digest(), 5),
         ("pip-23.2.1-py3-none-any.whl", hashlib.sha256(b"pip").digest(), 3)]


def reason(data, operators=OPS):
    with pytest.raises(UpdateError) as err:
        verify_manifest(data, operators)
    return err.value.reason


def test_a_signed_manifest_verifies_with_every_field():
    m = verify_manifest(sign_manifest(KEY, "0.2.0", "0.1.0", 1798761600, FILES), OPS)
    assert (m.kid, m.version, m.min_version, m.created) == (KEY.kid, "0.2.0", "0.1.0", 1798761600)
    assert [(f.name, f.sha256, f.size) for f in m.files] == FILES
    assert m.entry("pip-23.2.1-py3-none-any.whl").size == 3 and m.entry("nope.whl") is None


def test_refusals_name_their_reason():
    good = sign_manifest(KEY, "0.2.0", "0.1.0", 0, FILES)
    assert reason(cbor2.dumps(cbor2.loads(cbor2.loads(good).value[2]))) == "unsigned"  # the bare map
    assert reason(good, {OTHER.kid_bytes: OTHER.public}) == "unknown_key"
    assert reason(good[:-1] + bytes([good[-1] ^ 1])) == "bad_signature"
    assert reason(good, {}) == "no_operators"
    assert reason(b"\xff" * 10) == "malformed"
    # A command, or a batch, signed by the very same key is no manifest: the content type tells them apart.
    cmd = commands.sign_command(KEY, "gw-01", 1, 2 ** 40, "restart")
    assert reason(cmd) == "malformed"
    batch = wire.sign(encode_payload("0.2.0", "0.1.0", 0, FILES), KEY)
    assert reason(batch) == "malformed"


@pytest.mark.parametrize("change, why", [
    ({"version": "2.0-beta"}, "version"), ({"min_version": ""}, "min_version"), ({"project": "other"}, "other"),
    ({"files": []}, "1 to"), ({"files": [{"name": "../x.whl", "sha256": bytes(32), "size": 1}]}, "file name"),
    ({"files": [{"name": "pip-1-py3-none-any.whl", "sha256": bytes(31), "size": 1}]}, "32 bytes"),
    ({"files": [{"name": "pip-1-py3-none-any.whl", "sha256": bytes(32), "size": 1}]}, "no edge-gateway wheel"),
    ({"extra": 1}, "exactly"), ({"v": 2}, "version 2"),
])
def test_payloads_that_break_the_cddl_are_malformed_even_when_signed(change, why):
    body = cbor2.loads(encode_payload("0.2.0", "0.1.0", 0, FILES))
    body.update(change)
    data = wire.sign(cbor2.dumps(body, canonical=True), KEY, protected_header(KEY.kid_bytes))
    with pytest.raises(UpdateError, match=why) as err:
        verify_manifest(data, OPS)
    assert err.value.reason == "malformed"


def test_the_content_type_is_protected_and_its_own():
    header = cbor2.loads(protected_header(KEY.kid_bytes))
    assert header == {1: -8, 3: CT_UPDATE, 4: KEY.kid_bytes} and CT_UPDATE != commands.CT_COMMAND


def test_versions_compare_as_numbers():
    assert parse_version("0.1.10") > parse_version("0.1.9") and parse_version("1") == parse_version("1.0.0.0")
    for bad in ("", "1.2.3.4.5", "v1", "1.2-rc1", None):
        with pytest.raises(ValueError):
            parse_version(bad)


def test_admit_refuses_downgrades_reinstalls_too_old_gateways_and_other_versions_than_the_pin():
    m = verify_manifest(sign_manifest(KEY, "0.2.0", "0.1.5", 0, FILES), OPS)
    admit(m, "0.1.5")
    admit(m, "0.1.9", pin="0.2.0")
    for running, pin, why in (("0.2.0", "", "downgrade"), ("0.3.0", "", "downgrade"), ("0.1.4", "", "below_minimum"),
                              ("0.1.9", "0.1.9", "pinned"), ("garbage", "", "below_minimum")):
        with pytest.raises(UpdateError) as err:
            admit(m, running, pin)
        assert err.value.reason == why, (running, pin)
