"""Signed config bundles: the canonical encoding, signing, and verification.

A bundle is a JSON object carrying a TOML config document, a version, a device selector,
the issue time, the id of the fleet key that signed it, and an Ed25519 signature over the
canonical encoding below. docs/config-bundles.md defines the same encoding for fleet
backends written in other languages; keep the two in step.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edged.errors import BadRequest, Unauthorized
from edged.tomlreader import Table, shown

log = logging.getLogger(__name__)

FORMAT = "edged-config-bundle/1"
ALL_DEVICES = "*"


@dataclass(frozen=True)
class Bundle:
    version: int
    issued_at: str
    key_id: str
    devices: tuple[str, ...]
    tags: tuple[str, ...]
    config: str
    signature: bytes

    def signed_message(self) -> bytes:
        return canonical_message(self.version, self.issued_at, self.key_id, self.devices,
                                 self.tags, self.config)

    def matches(self, device_id: str, device_tags: tuple[str, ...]) -> bool:
        return (ALL_DEVICES in self.devices or device_id in self.devices
                or bool(set(self.tags) & set(device_tags)))


def _netstring(value: str) -> bytes:
    raw = value.encode("utf-8")
    return str(len(raw)).encode() + b":" + raw + b","


MAX_VERSION = 2**63 - 1


def canonical_message(version: int, issued_at: str, key_id: str, devices: tuple[str, ...],
                      tags: tuple[str, ...], config: str) -> bytes:
    """Netstrings in a fixed order; lists are a count followed by their items. Lengths make
    the encoding unambiguous without any escaping, so any language can rebuild it."""
    fields = [FORMAT, str(version), issued_at, key_id, str(len(devices)), *devices,
              str(len(tags)), *tags, config]
    return b"".join(_netstring(f) for f in fields)


MAX_KEY_ID = 64  # ours are 16 hex digits


def _key_id(t: Table) -> str:
    kid: str = t.str("key_id")
    if not 0 < len(kid) <= MAX_KEY_ID:
        raise BadRequest(f"bundle.key_id: expected 1 to {MAX_KEY_ID} characters, got "
                         f"{len(kid)}", code="bad_bundle")
    return kid


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_bundle(raw: bytes) -> Bundle:
    """Bytes -> Bundle, checking shape only (not the signature). Errors name the field."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"bundle is not valid JSON: {e}", code="bad_bundle") from None
    except ValueError as e:  # an integer past Python's int-string limit
        raise BadRequest(f"bundle has a number too large to read: {str(e)[:80]}",
                         code="bad_bundle") from None
    except RecursionError:
        raise BadRequest("bundle is nested too deeply", code="bad_bundle") from None
    if not isinstance(data, dict):
        raise BadRequest("bundle must be a JSON object", code="bad_bundle")
    t = Table(data, "bundle", error=BadRequest)
    fmt = t.str("format")
    if fmt != FORMAT:
        raise BadRequest(f"bundle.format: {shown(fmt)} is not {FORMAT!r}", code="bad_bundle")
    if "signature" not in t:
        raise BadRequest("bundle.signature: the bundle is not signed", code="unsigned")
    selector = t.table("selector", required=True)
    bundle = Bundle(
        version=t.int("version", min=1, max=MAX_VERSION),  # SQLite's INTEGER holds it
        issued_at=t.str("issued_at"),
        key_id=_key_id(t),
        devices=selector.str_list("devices", ()),
        tags=selector.str_list("tags", ()),
        config=t.str("config"),
        signature=_decode_signature(t.str("signature")),
    )
    selector.done()
    t.done()
    if not bundle.devices and not bundle.tags:
        raise BadRequest("bundle.selector: names no device and no tag", code="bad_bundle")
    return bundle


def _decode_signature(text: str) -> bytes:
    try:
        sig = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("bundle.signature: not base64", code="bad_signature") from None
    if not sig:
        raise BadRequest("bundle.signature: the bundle is not signed", code="unsigned")
    return sig


def encode_bundle(bundle: Bundle) -> bytes:
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": bundle.version,
        "issued_at": bundle.issued_at,
        "key_id": bundle.key_id,
        "selector": {"devices": list(bundle.devices), "tags": list(bundle.tags)},
        "config": bundle.config,
        "signature": base64.b64encode(bundle.signature).decode(),
    }
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


def sign_bundle(private_key: Ed25519PrivateKey, *, version: int, config: str,
                devices: tuple[str, ...], tags: tuple[str, ...],
                issued_at: str | None = None) -> Bundle:
    issued = issued_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    kid = key_id(private_key.public_key())
    message = canonical_message(version, issued, kid, devices, tags, config)
    return Bundle(version=version, issued_at=issued, key_id=kid, devices=devices, tags=tags,
                  config=config, signature=private_key.sign(message))


class FleetKeys:
    """The trusted fleet public keys: every ``*.pub`` in ``<keys_dir>/fleet``. Read at each
    verification, so adding or removing a file (key rotation) needs no restart."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load(self) -> dict[str, Ed25519PublicKey]:
        keys: dict[str, Ed25519PublicKey] = {}
        for path in sorted(self.folder.glob("*.pub")):
            try:
                key = serialization.load_pem_public_key(path.read_bytes())
            except (OSError, ValueError) as e:
                log.warning("ignoring fleet key %s: %s", path, e)
                continue
            if isinstance(key, Ed25519PublicKey):
                keys[key_id(key)] = key
            else:
                log.warning("ignoring fleet key %s: not an Ed25519 public key", path)
        return keys

    def verify(self, bundle: Bundle) -> None:
        key = self.load().get(bundle.key_id)
        if key is None:
            raise Unauthorized(f"bundle.key_id: {bundle.key_id!r} is not a trusted fleet key "
                               f"(none in {self.folder} has that id)", code="unknown_fleet_key")
        try:
            key.verify(bundle.signature, bundle.signed_message())
        except InvalidSignature:
            raise Unauthorized("bundle.signature: does not verify with fleet key "
                               f"{bundle.key_id}; the bundle was altered or signed by "
                               "another key", code="bad_signature") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise BadRequest(f"{path}: cannot read the fleet key: {e.strerror}") from None
    except (ValueError, TypeError):
        raise BadRequest(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadRequest(f"{path}: not an Ed25519 private key")
    return key
