"""Bundles: the canonical encoding other languages must reproduce, signing, verifying."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.errors import BadRequest, Unauthorized
from edged.remote.bundle import FleetKeys, canonical_message, key_id, parse_bundle, sign_bundle
from tests.remote.fleet import bundle, trust

# RFC 8032 test 1 secret key: a fixed key gives fixed signatures to compare against.
RFC8032_SECRET = bytes.fromhex(
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")


def test_canonical_message_is_netstrings_in_a_fixed_order() -> None:
    msg = canonical_message(7, "2026-11-24T17:00:00Z", "0123456789abcdef", ("box-1", "ü"),
                            ("kiosk",), '[models]\ndefault = "a"\n')
    assert msg == (b"21:edged-config-bundle/1,1:7,20:2026-11-24T17:00:00Z,16:0123456789abcdef,"
                   b"1:2,5:box-1,2:\xc3\xbc,1:1,5:kiosk,23:[models]\ndefault = \"a\"\n,")


def test_signature_over_the_documented_vector_is_stable() -> None:
    # The same vector is in docs/config-bundles.md for fleet backends to test against.
    key = Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET)
    b = sign_bundle(key, version=1, config='[budget]\nmemory = "1GiB"\n', devices=("box-1",),
                    tags=(), issued_at="2026-01-01T00:00:00Z")
    assert b.key_id == key_id(key.public_key()) == "21fe31dfa154a261"
    assert base64.b64encode(b.signature).decode() == (
        "BD6oG4GIsh3zCCtoWVXJp/1VLFsu/Q/mBUBJ50On9KBMfvRyZm64zpkZxIdW5pSsIjGnlu1WCdTY5eeQoCLsBw==")
    # Ed25519 is deterministic: the signature is over exactly these documented bytes.
    key.public_key().verify(b.signature, (
        b'21:edged-config-bundle/1,1:1,20:2026-01-01T00:00:00Z,16:21fe31dfa154a261,'
        b'1:1,5:box-1,1:0,25:[budget]\nmemory = "1GiB"\n,'))


def test_a_signed_bundle_verifies_and_a_changed_byte_does_not(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    trust(tmp_path, key)
    keys = FleetKeys(tmp_path / "fleet")
    raw = bundle(key, "[budget]\n", 3)
    keys.verify(parse_bundle(raw))
    doc = json.loads(raw)
    for field, value in (("config", "[budget]\nmemory = '9GiB'\n"), ("version", 4),
                         ("selector", {"devices": ["*"], "tags": []}),
                         ("issued_at", "2030-01-01T00:00:00Z")):
        tampered = json.dumps({**doc, field: value}).encode()
        with pytest.raises(Unauthorized) as err:
            keys.verify(parse_bundle(tampered))
        assert err.value.code == "bad_signature", field


def test_unknown_key_unsigned_and_malformed_bundles_name_the_problem(tmp_path: Path) -> None:
    trusted, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trust(tmp_path, trusted)
    keys = FleetKeys(tmp_path / "fleet")
    with pytest.raises(Unauthorized) as err:
        keys.verify(parse_bundle(bundle(stranger, "", 1)))
    assert err.value.code == "unknown_fleet_key"
    doc = json.loads(bundle(trusted, "", 1))
    cases = {
        "unsigned": {k: v for k, v in doc.items() if k != "signature"},
        "bundle.version": {**doc, "version": "2"},
        "bundle.selector": {**doc, "selector": {"devices": [], "tags": []}},
        "bundle.extra": {**doc, "extra": 1},
        "bundle.format": {**doc, "format": "other/1"},
        "bundle.signature: not base64": {**doc, "signature": "***"},
    }
    for expected, data in cases.items():
        with pytest.raises(BadRequest) as bad:
            parse_bundle(json.dumps(data).encode())
        assert expected in bad.value.message or bad.value.code == expected, expected
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_bundle(b"{nope")


def test_fleet_keys_are_read_at_each_verification(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pub = trust(tmp_path, key)
    keys = FleetKeys(tmp_path / "fleet")
    b = parse_bundle(bundle(key, "", 1))
    keys.verify(b)
    pub.unlink()
    with pytest.raises(Unauthorized, match="not a trusted fleet key"):
        keys.verify(b)


@pytest.mark.parametrize(("raw", "fragment"), [
    (b'{"format": 1, "version": ' + b"9" * 5000 + b"}", "number too large"),
    (b'{"format": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
])
def test_unreadable_bundle_json_is_a_clear_refusal(raw: bytes, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_bundle(raw)
    assert caught.value.code == "bad_bundle" and fragment in caught.value.message


def test_a_version_past_sqlite_integers_is_refused() -> None:
    doc = json.loads(bundle(Ed25519PrivateKey.generate(), "", 1))
    doc["version"] = 2**63
    with pytest.raises(BadRequest, match=r"bundle\.version"):
        parse_bundle(json.dumps(doc).encode())
