"""The checks a model-written reply must pass, and the grounding of model-proposed slots."""

from __future__ import annotations

import pytest

from edged.agents.reply import acceptable
from edged.agents.slotfill import grounded

FACTS = "Yes, we have the Pixel 9 in stock here: Google Pixel 9 128GB Obsidian (3 left, $798.99)."


@pytest.mark.parametrize(("reply", "ok"), [
    ("Yes, we have the Pixel 9 in stock.", False),  # the "9" of a name is no fact (QA G6)
    ("Yes! The Pixel 9 is $798.99 and we have 3 left.", True),
    ("Yes, the Pixel 9 is $699.", False),  # an invented price
    ("Sorry, the Pixel 9 is not in stock.", False),  # the opposite of the facts
    ("I like turtles very much.", False),  # off topic
    ("I am a customer of the Pixel 9 store, 3 of them.", False),  # speaks as the customer
    ("We have the Obsidian Pixel in stock.", False),  # drops every number of the facts
    ("", False),
])
def test_reply_checks(reply: str, ok: bool) -> None:
    assert acceptable(reply, FACTS) is ok


def test_reply_keeps_references() -> None:
    facts = "I've asked a staff member to help (ticket T-8F2A91C0DE)."
    assert not acceptable("A staff member will help you soon.", facts)
    assert acceptable("I've asked a staff member to help, ticket T-8F2A91C0DE.", facts)


def test_model_slots_must_come_from_the_request() -> None:
    text = "book me with dermatology for Ana Silva"
    assert grounded("patient_name", "Ana Silva", text)
    assert not grounded("patient_name", "John Smith", text)
    assert not grounded("date", "2026-11-25", text)  # dates only from the parser
    assert not grounded("product", "https://www.amazon.com/gp/product/1", "a pixel 9")
    assert grounded("items", [{"product": "pixel 9", "quantity": 2}], "two pixel 9 please")
