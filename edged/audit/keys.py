"""The audit key (AES-256-GCM) and the device signing key (Ed25519), in the keys folder.

``audit.key`` is the current audit key (32 raw bytes); ``keys rotate`` keeps each retired key
as ``audit-<key id>.key`` so old segments still verify and export. ``device.key`` is the
Ed25519 private key (PKCS#8 PEM) that signs checkpoints; ``device.pub`` its public half for
auditors and the cloud. Secret files are 0600 and refused when group or others may read them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edged.durable import fsync_dir
from edged.errors import ConfigError, Conflict, IntegrityError

log = logging.getLogger(__name__)

AUDIT_KEY = "audit.key"
DEVICE_KEY = "device.key"
DEVICE_PUB = "device.pub"
_RETIRED = re.compile(r"audit-([0-9a-f]{8})\.key")


def key_id(key: bytes) -> int:
    """The 32-bit id a frame carries to name its key: the head of SHA-256 over a label + key."""
    return int.from_bytes(hashlib.sha256(b"edged-audit-key-id" + key).digest()[:4], "big")


def kid_text(kid: int) -> str:
    return f"{kid:08x}"


class UnknownKey(IntegrityError):
    code = "unknown_key"


@dataclass(frozen=True)
class AuditKeys:
    current_id: int
    keys: Mapping[int, bytes]
    public: Ed25519PublicKey
    device: Ed25519PrivateKey | None  # absent for an auditor who has only device.pub
    # One cipher object per key: building one per frame costs as much as opening the frame.
    _ciphers: dict[int, AESGCM] = field(default_factory=dict, compare=False, repr=False)

    def aead(self, kid: int) -> AESGCM:
        cipher = self._ciphers.get(kid)
        if cipher is not None:
            return cipher
        key = self.keys.get(kid)
        if key is None:
            known = ", ".join(kid_text(k) for k in sorted(self.keys))
            raise UnknownKey(f"written with audit key id {kid_text(kid)}, which is not in the "
                             f"keys folder (known: {known}); is this the right audit.key?")
        cipher = self._ciphers[kid] = AESGCM(key)
        return cipher


def check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: key file is accessible by group or others (mode "
                          f"{stat.S_IMODE(mode):04o}); run `chmod 600 {path}`",
                          code="key_permissions")


def _read_secret(path: Path) -> bytes:
    check_private(path)
    return path.read_bytes()


def _read_audit_key(path: Path) -> bytes:
    raw = _read_secret(path)
    if len(raw) != 32:
        raise ConfigError(f"{path}: an audit key is 32 bytes, this file has {len(raw)}",
                          code="bad_key")
    return raw


def _missing(folder: Path, name: str) -> ConfigError:
    return ConfigError(f"{folder / name}: no such key file. If the daemon runs with another "
                       "state folder or config, pass the same --state-dir or --config; on a "
                       "box that has never run it, create the keys with `edged keys init` "
                       "(daemon.keys_dir names the folder)", code="no_keys")


def load_keys(folder: Path, *, need_device: bool = True) -> AuditKeys:
    """Every audit key (current and retired) and the device key; checks file modes."""
    current_path = folder / AUDIT_KEY
    if not current_path.exists():
        raise _missing(folder, AUDIT_KEY)
    current = _read_audit_key(current_path)
    keys = {key_id(current): current}
    for path in folder.glob("audit-*.key"):
        if _RETIRED.fullmatch(path.name):
            old = _read_audit_key(path)
            keys[key_id(old)] = old
    device, public = _load_device(folder, need_device)
    return AuditKeys(key_id(current), keys, public, device)


def _load_device(folder: Path, need_device: bool
                 ) -> tuple[Ed25519PrivateKey | None, Ed25519PublicKey]:
    path = folder / DEVICE_KEY
    if path.exists():
        private = serialization.load_pem_private_key(_read_secret(path), password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"{path}: not an Ed25519 private key", code="bad_key")
        return private, private.public_key()
    pub_path = folder / DEVICE_PUB
    if need_device or not pub_path.exists():
        raise _missing(folder, DEVICE_KEY)
    public = serialization.load_pem_public_key(pub_path.read_bytes())
    if not isinstance(public, Ed25519PublicKey):
        raise ConfigError(f"{pub_path}: not an Ed25519 public key", code="bad_key")
    return None, public


def _write_new(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create (never overwrite) and fsync; the mode is set at creation, never widened."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def init_keys(folder: Path) -> list[Path]:
    """Create the audit key and the device key pair; refuse if either exists."""
    existing = [folder / n for n in (AUDIT_KEY, DEVICE_KEY) if (folder / n).exists()]
    if existing:
        raise Conflict(f"{existing[0]} already exists; refusing to overwrite a key "
                       "(use `edged keys rotate` for a new audit key)", code="key_exists")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    device = Ed25519PrivateKey.generate()
    _write_new(folder / AUDIT_KEY, AESGCM.generate_key(bit_length=256))
    _write_new(folder / DEVICE_KEY, device.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    _write_new(folder / DEVICE_PUB, device.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    fsync_dir(folder)
    return [folder / AUDIT_KEY, folder / DEVICE_KEY, folder / DEVICE_PUB]


def rotate_audit_key(folder: Path) -> tuple[int, int]:
    """Retire the current audit key under its id and make a new one; returns (old, new) ids.

    The retired copy is a hard link made before the swap, so a crash at any point leaves
    either the old or the new key current and the old one always on disk."""
    current_path = folder / AUDIT_KEY
    if not current_path.exists():
        raise _missing(folder, AUDIT_KEY)
    old = _read_audit_key(current_path)
    retired = folder / f"audit-{kid_text(key_id(old))}.key"
    if not retired.exists():
        os.link(current_path, retired)
    fresh = AESGCM.generate_key(bit_length=256)
    staging = folder / (AUDIT_KEY + ".new")
    staging.unlink(missing_ok=True)
    _write_new(staging, fresh)
    os.replace(staging, current_path)
    fsync_dir(folder)
    return key_id(old), key_id(fresh)


def ensure_keys(folder: Path, audit_dir: Path) -> bool:
    """First start on a fresh box: create the keys when neither they nor any audit segment
    exist. With segments but no key, create nothing: a new key could not read them."""
    if (folder / AUDIT_KEY).exists() or (folder / DEVICE_KEY).exists():
        return False
    if audit_dir.exists() and any(audit_dir.glob("segment-*.log")):
        raise _missing(folder, AUDIT_KEY)
    try:
        init_keys(folder)
    except OSError as e:
        raise ConfigError(f"{folder}: cannot create the audit keys ({e.strerror}); create them "
                          "with `edged keys init`", code="no_keys") from None
    log.warning("created new audit and device keys in %s (first start)", folder)
    return True
