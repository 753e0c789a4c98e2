"""Portal tokens: HMAC over {patient_ref, exp}; forged, malformed and expired are refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edged.agents import portal
from edged.errors import Unauthorized


def test_key_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "portal.key"
    key = portal.load_or_create_key(path)
    assert len(key) == 32 and portal.load_or_create_key(path) == key
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_round_trip_and_refusals() -> None:
    key, other = b"k" * 32, b"o" * 32
    token = portal.mint(key, "P-1", ttl=60, now=1000)
    assert portal.verify(key, token, now=1030) == "P-1"
    cases = [(None, "token_missing"), ("v1.abc", "token_invalid"),
             (portal.mint(other, "P-1", 60, now=1000), "token_invalid"),
             (token.replace(token.split(".")[1], portal.mint(key, "P-2", 60, 1000).split(".")[1]),
              "token_invalid"),
             (token, "token_expired")]
    for bad, code in cases:
        with pytest.raises(Unauthorized) as e:
            portal.verify(key, bad, now=1030 if code != "token_expired" else 2000)
        assert e.value.code == code


def test_token_found_in_text() -> None:
    token = portal.mint(b"k" * 32, "P-1", ttl=60)
    assert portal.find_token(f"my token is {token} thanks") == token
    assert portal.find_token("no token here") is None
