"""Test support for config bundles: a fleet key, signing, and pushed documents."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.remote.admission import LOCKED_KEYS
from edged.remote.bundle import encode_bundle, key_id, sign_bundle
from tests.edgedtest import base_config, deep_merge, dump_toml


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def trust(keys_dir: Path, key: Ed25519PrivateKey) -> Path:
    """Put a key's public half in <keys_dir>/fleet, as an operator would."""
    folder = keys_dir / "fleet"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"fleet-{key_id(key.public_key())}.pub"
    path.write_bytes(public_pem(key))
    return path


def pushed_doc(state_dir: Path, extra: dict[str, Any] | None = None) -> str:
    """The test base config as a push would carry it: without the keys only the local
    file may set, with an [agents] section (`edged config sign` wants one)."""
    doc = deep_merge(deep_merge(base_config(state_dir), {"agents": {}}), extra or {})
    doc = copy.deepcopy(doc)
    for section, key in LOCKED_KEYS:
        doc.get(section, {}).pop(key, None)
    return dump_toml(doc)


def bundle(key: Ed25519PrivateKey, text: str, version: int, *,
           devices: tuple[str, ...] = ("test-box",), tags: tuple[str, ...] = ()) -> bytes:
    return encode_bundle(sign_bundle(key, version=version, config=text, devices=devices,
                                     tags=tags))


def as_json(raw: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw)
    return data
