"""Patient portal tokens: HMAC-SHA256 over ``{patient_ref, exp}``, with a key in the keys folder.

A token is ``v1.<payload>.<mac>`` (base64url). The clinic's own system mints them with the
same shared key (or ``edged portal-token`` does, on the box); edged only verifies. A missing,
malformed, forged or expired token is refused before any patient data is read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from pathlib import Path

from edged.durable import fsync_dir
from edged.errors import Unauthorized

TOKEN_RE = re.compile(r"\bv1\.[A-Za-z0-9_-]{10,400}\.[A-Za-z0-9_-]{20,100}\b")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_key(path: Path) -> bytes:
    """The 32-byte key, which must exist: minting never makes a key the daemon does not use."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        raise Unauthorized(f"no portal key at {path}: start the daemon once (it makes the key) "
                           "or pass --key / --state-dir", code="no_portal_key") from None
    if len(key) != 32:
        raise Unauthorized(f"{path}: a key must be 32 bytes")
    return key


def load_or_create_key(path: Path) -> bytes:
    """The 32-byte key; made (0600) on first use so a fresh box works out of the box."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(path.parent)  # sessions sealed with it are unreadable if the name is lost
    if len(key) != 32:
        raise Unauthorized(f"{path}: a key must be 32 bytes")
    return key


def mint(key: bytes, patient_ref: str, ttl: float, now: float | None = None) -> str:
    payload = json.dumps({"patient_ref": patient_ref,
                          "exp": int((now or time.time()) + ttl)}, separators=(",", ":"))
    body = _b64(payload.encode())
    mac = hmac.new(key, b"v1." + body.encode(), hashlib.sha256).digest()
    return f"v1.{body}.{_b64(mac)}"


def verify(key: bytes, token: str | None, now: float | None = None) -> str:
    """The patient reference the token grants, or ``Unauthorized``."""
    if not token:
        raise Unauthorized("a patient portal token is required", code="token_missing")
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != "v1":
        raise Unauthorized("the portal token is malformed", code="token_invalid")
    expected = hmac.new(key, f"v1.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        given = _unb64(parts[2])
        claims = json.loads(_unb64(parts[1]))
    except (ValueError, json.JSONDecodeError):
        raise Unauthorized("the portal token is malformed", code="token_invalid") from None
    if not hmac.compare_digest(expected, given):
        raise Unauthorized("the portal token's signature is not valid", code="token_invalid")
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int):
        raise Unauthorized("the portal token is malformed", code="token_invalid")
    if claims["exp"] < (now or time.time()):
        raise Unauthorized("the portal token has expired", code="token_expired")
    return str(claims.get("patient_ref", ""))


def find_token(text: str) -> str | None:
    """A token pasted into a message (the CLI user's way to present one)."""
    m = TOKEN_RE.search(text)
    return m.group(0) if m else None
