"""What leaves the box: phones, e-mail addresses and card numbers masked; the rest kept."""

from __future__ import annotations

from collections import Counter

import pytest

from edged.models.redact import Redactor

ALL = Redactor(("phone", "email", "card"), ())


@pytest.mark.parametrize(("text", "expected"), [
    ("call +1 (415) 555-0123 today", "call [phone] today"),
    ("ring 0044 20 7946 0958", "ring [phone]"),
    ("mail ana.lopez+kiosk@mail.example.co.uk now", "mail [email] now"),
    ("card 4111 1111 1111 1111.", "card [card]."),
    ("card 5500-0000-0000-0004", "card [card]"),
    ("pan 4111111111111111", "pan [card]"),
])
def test_masks(text: str, expected: str) -> None:
    counts: Counter[str] = Counter()
    assert ALL.text(text, counts) == expected
    assert sum(counts.values()) == 1


@pytest.mark.parametrize("text", [
    "2 units at 19.99 each", "order 12345", "SKU LAP-XPS13-512", "ticket 2026-12-01",
    "a 16-digit number that fails Luhn: 4111 1111 1111 1112 is no card",
])
def test_keeps_what_is_not_personal(text: str) -> None:
    counts: Counter[str] = Counter()
    out = ALL.text(text, counts)
    assert "[card]" not in out and "[email]" not in out
    if "Luhn" not in text:
        assert out == text


def test_only_the_named_patterns_and_custom_ones() -> None:
    r = Redactor(("email",), (r"MRN-\d+",))
    counts: Counter[str] = Counter()
    assert r.text("a@b.io MRN-1234 +1 415 555 0123", counts) == "[email] [redacted] +1 415 555 0123"
    assert counts == {"email": 1, "pattern": 1}


def test_messages_tool_calls_and_parts() -> None:
    counts: Counter[str] = Counter()
    out = ALL.messages([
        {"role": "user", "content": [{"type": "text", "text": "x@y.org"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "1", "type": "function",
             "function": {"name": "f", "arguments": '{"phone": "+44 20 7946 0958"}'}}]},
        {"role": "tool", "tool_call_id": "1", "content": "card 4111111111111111"},
    ], counts)
    assert out[0]["content"][0]["text"] == "[email]"
    assert out[1]["tool_calls"][0]["function"]["arguments"] == '{"phone": "[phone]"}'
    assert out[2]["content"] == "card [card]"
