"""Deterministic slot extraction: words, quantities, dates, times and fuzzy names.

The model may propose arguments too (grammar-constrained JSON), but what these functions
find is checked against the catalog and the schedule, so it is the safer first choice.
"""

from __future__ import annotations

import datetime as dt
import re
from difflib import SequenceMatcher

_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")
NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "pair": 2, "couple": 2,
                "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
                "ten": 10, "eleven": 11, "twelve": 12, "dozen": 12, "fifteen": 15, "twenty": 20}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY_SHORT = {d[:3]: i for i, d in enumerate(WEEKDAYS)} | {"tues": 1, "thur": 3,
                                                               "thurs": 3}
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def normalize(text: str) -> str:
    """Lowercase alphanumerics only: "Galaxy S24-Ultra" -> "galaxy s24 ultra"."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def similarity(a: str, b: str) -> float:
    return SequenceMatcher(None, a, b).ratio()


def quantity(text: str) -> int | None:
    """The first quantity: "3 cables", "two of", "x4", "a pair of" (not "256GB", "3pm")."""
    low = text.lower()
    for m in re.finditer(r"(?<![$.\d])\b(\d{1,3})\b(?![.:,]\d)", low):
        after = low[m.end():m.end() + 6].lstrip()
        if not re.match(r"(?:gb|tb|mm|inch|am\b|pm\b|%|w\b|m\b|th\b|st\b|nd\b|rd\b)",
                        after):
            return int(m.group(1))
    times = re.search(r"\bx\s?(\d{1,3})\b", low)
    if times:
        return int(times.group(1))
    for w in words(low):
        if w in NUMBER_WORDS and w not in ("a", "an"):
            return NUMBER_WORDS[w]
    return None


def money(text: str) -> float | None:
    """A price cap: "under $500", "below 300 dollars", "less than 1,200"."""
    m = re.search(r"(?:under|below|less than|max(?:imum)?|up to|cheaper than|budget(?: of| is)?"
                  r"|no more than|within)\s*\$?\s*(\d[\d,]*(?:\.\d+)?)", text.lower())
    if not m:
        m = re.search(r"\$\s*(\d[\d,]*(?:\.\d+)?)", text)
    return float(m.group(1).replace(",", "")) if m else None


def parse_time(text: str) -> str | None:
    """"3pm", "at 15:30", "10 am", "noon", "half past two" -> "HH:MM"."""
    low = text.lower()
    if re.search(r"\bnoon\b|\bmidday\b", low):
        return "12:00"
    m = re.search(r"\b(\d{1,2})(?::|\.)?(\d{2})?\s*(a\.?m\.?|p\.?m\.?)(?![a-z])", low)
    if m:
        hour, minute = int(m.group(1)) % 12, int(m.group(2) or 0)
        if m.group(3).startswith("p"):
            hour += 12
        return _hhmm(hour, minute)
    m = re.search(r"\b([01]?\d|2[0-3]):([0-5]\d)\b", low)
    if m:
        return _hhmm(int(m.group(1)), int(m.group(2)))
    m = re.search(r"\b(?:at|around|by)\s+(\d{1,2})(?:\s*o'?clock)?\b(?!\s*(?:th|st|nd|rd|/|-))",
                  low)
    if m and 1 <= int(m.group(1)) <= 12:
        hour = int(m.group(1))
        return _hhmm(hour + 12 if hour < 7 else hour, 0)  # "at 3" in a clinic means 15:00
    m = re.search(r"\bhalf past (\w+)", low)
    if m and m.group(1) in NUMBER_WORDS:
        hour = NUMBER_WORDS[m.group(1)]
        return _hhmm(hour + 12 if hour < 7 else hour, 30)
    return None


def _hhmm(hour: int, minute: int) -> str:
    return f"{hour:02d}:{minute:02d}"


def part_of_day(text: str) -> str | None:
    low = text.lower()
    for part in ("morning", "afternoon", "evening"):
        if part in low:
            return part
    return None


def parse_date(text: str, today: dt.date) -> dt.date | None:
    """"today", "tomorrow", "next Tuesday", "on friday", "in 3 days", "March 3", "3/14",
    "2026-12-01", "the 5th"."""
    low = text.lower()
    for parser in (_iso_date, _relative_day, _weekday, _month_day, _slash_date, _ordinal_day):
        found = parser(low, today)
        if found is not None:
            return found
    return None


def _iso_date(low: str, today: dt.date) -> dt.date | None:
    m = re.search(r"\b(\d{4})-(\d{2})-(\d{2})\b", low)
    if not m:
        return None
    try:
        return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def _relative_day(low: str, today: dt.date) -> dt.date | None:
    if re.search(r"\bday after tomorrow\b", low):
        return today + dt.timedelta(days=2)
    if re.search(r"\btomorrow\b|\btmrw\b|\btomorow\b", low):
        return today + dt.timedelta(days=1)
    if re.search(r"\btoday\b|\btonight\b|\bthis (?:morning|afternoon|evening)\b", low):
        return today
    m = re.search(r"\bin (\w+) days?\b", low)
    if m:
        n = int(m.group(1)) if m.group(1).isdigit() else NUMBER_WORDS.get(m.group(1))
        if n:
            return today + dt.timedelta(days=n)
    if re.search(r"\bnext week\b", low):
        return today + dt.timedelta(days=7 - today.weekday())
    return None


def _weekday(low: str, today: dt.date) -> dt.date | None:
    m = re.search(r"\b(next|this|on|coming)?\s*(" + "|".join(
        sorted(list(WEEKDAYS) + list(_WEEKDAY_SHORT), key=len, reverse=True)) + r")\b", low)
    if not m:
        return None
    day = WEEKDAYS.index(m.group(2)) if m.group(2) in WEEKDAYS else _WEEKDAY_SHORT[m.group(2)]
    ahead = (day - today.weekday()) % 7 or 7  # "Tuesday" on a Tuesday means next week's
    if m.group(1) == "next" and ahead < 7 and (day - today.weekday()) % 7 <= 0:
        ahead += 7
    return today + dt.timedelta(days=ahead)


def _month_day(low: str, today: dt.date) -> dt.date | None:
    names = "|".join(sorted(list(MONTHS) + [m[:3] for m in MONTHS] + ["sept"],
                            key=len, reverse=True))
    m = re.search(rf"\b({names})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b", low)
    month_first = True
    if not m:
        m = re.search(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({names})\b", low)
        month_first = False
    if not m:
        return None
    month_text, day_text = (m.group(1), m.group(2)) if month_first else (m.group(2), m.group(1))
    month = next(i for i, name in enumerate(MONTHS, 1) if name.startswith(month_text[:3]))
    return _future(today, month, int(day_text))


def _slash_date(low: str, today: dt.date) -> dt.date | None:
    m = re.search(r"\b(\d{1,2})/(\d{1,2})\b", low)
    return _future(today, int(m.group(1)), int(m.group(2))) if m else None


def _ordinal_day(low: str, today: dt.date) -> dt.date | None:
    m = re.search(r"\bthe (\d{1,2})(?:st|nd|rd|th)\b", low)
    if not m:
        return None
    day = int(m.group(1))
    month, year = today.month, today.year
    if day < today.day:
        month, year = (1, year + 1) if month == 12 else (month + 1, year)
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


def _future(today: dt.date, month: int, day: int) -> dt.date | None:
    """The next such date on or after today (dates without a year mean the coming one)."""
    for year in (today.year, today.year + 1):
        try:
            found = dt.date(year, month, day)
        except ValueError:
            return None
        if found >= today:
            return found
    return None
