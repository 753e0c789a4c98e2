"""Deterministic slot extraction: dates, times, quantities, prices."""

from __future__ import annotations

import datetime as dt

import pytest

from edged.agents.slots import money, parse_date, parse_time, quantity

TUESDAY = dt.date(2026, 11, 24)


@pytest.mark.parametrize(("text", "want"), [
    ("tomorrow at 3pm", dt.date(2026, 11, 25)),
    ("today please", TUESDAY),
    ("day after tomorrow", dt.date(2026, 11, 26)),
    ("next Tuesday", dt.date(2026, 12, 1)),
    ("on friday", dt.date(2026, 11, 27)),
    ("this thurs", dt.date(2026, 11, 26)),
    ("in 3 days", dt.date(2026, 11, 27)),
    ("December 3rd", dt.date(2026, 12, 3)),
    ("3 March", dt.date(2027, 3, 3)),
    ("2026-12-01", dt.date(2026, 12, 1)),
    ("12/24", dt.date(2026, 12, 24)),
    ("the 5th", dt.date(2026, 12, 5)),
    ("whenever", None),
])
def test_dates(text: str, want: dt.date | None) -> None:
    assert parse_date(text, TUESDAY) == want


@pytest.mark.parametrize(("text", "want"), [
    ("at 3pm", "15:00"), ("10 am", "10:00"), ("9:30", "09:30"), ("at 14:45", "14:45"),
    ("noon", "12:00"), ("at 3", "15:00"), ("at 9", "09:00"), ("7.30 p.m.", "19:30"),
    ("half past two", "14:30"), ("Dr. Kim on the 12th", None),
])
def test_times(text: str, want: str | None) -> None:
    assert parse_time(text) == want


@pytest.mark.parametrize(("text", "want"), [
    ("5 cables", 5), ("two of them", 2), ("a pair", 2), ("x4", 4), ("the 256GB model", None),
    ("the 65 inch", None), ("at 3pm", None),
])
def test_quantities(text: str, want: int | None) -> None:
    assert quantity(text) == want


def test_money() -> None:
    assert money("a laptop under $1,200") == 1200.0
    assert money("less than 300 dollars") == 300.0
    assert money("a good one") is None
