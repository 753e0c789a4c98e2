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
    """Lowercase alphanumerics only: "Galaxy S24-Ultra" -> "galaxy s24 ultra"; a plural of
    a model number is the number ("two pixel 9s" -> "two pixel 9")."""
    return " ".join(re.sub(r"^(\d+)s$", r"\1", w) for w in re.findall(r"[a-z0-9]+", text.lower()))


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


_WORD_NUM = r"(\d{1,2}|" + "|".join(sorted({"one", "two", "three", "four", "five", "six", "seven",
                                             "eight", "nine", "ten", "eleven", "twelve"},
                                            key=len, reverse=True)) + r")"
_HOURS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
          "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}


def _hour_word(word: str) -> int | None:
    return int(word) if word.isdigit() else _HOURS.get(word)


def parse_time(text: str, bare: bool = False) -> str | None:
    """"3pm", "at 15:30", "10 am", "noon", "half past two", "quarter to one", "twenty past
    9", "2:30 in the afternoon" -> "HH:MM". An hour under 7 without am/pm is afternoon
    (office hours). ``bare``: a time is what the message answers, so "10 is fine" or "make
    it 11" is a time too."""
    low = text.lower()
    afternoon = re.search(r"(?:in the )?(?:afternoon|evening)\b|\bpm\b", low) is not None
    if re.search(r"\bnoon\b|\bmidday\b", low):
        return "12:00"
    m = re.search(r"\b(\d{1,2})(?::|\.)?(\d{2})?\s*(a\.?m\.?|p\.?m\.?)(?![a-z])", low)
    if m:
        hour, minute = int(m.group(1)) % 12, int(m.group(2) or 0)
        if m.group(3).startswith("p"):
            hour += 12
        return _valid_hhmm(hour, minute)
    m = re.search(r"\b([01]?\d|2[0-3]):([0-5]\d)\b", low)
    if m:
        return _office(int(m.group(1)), int(m.group(2)), afternoon)
    m = re.search(r"\b(half|quarter|ten|twenty|twenty five|five) (past|to|after) " + _WORD_NUM
                  + r"\b", low)
    if m:
        minutes = {"half": 30, "quarter": 15, "ten": 10, "twenty": 20, "twenty five": 25,
                   "five": 5}[m.group(1)]
        said = _hour_word(m.group(3))
        if said is not None and 1 <= said <= 12:
            if m.group(2) == "to":
                said, minutes = (said - 1) or 12, 60 - minutes
            return _office(said, minutes, afternoon)
    m = re.search(r"\b(?:at|around|by|for)\s+" + _WORD_NUM + r"(?:\s*o'?clock)?\b"
                  r"(?!\s*(?:(?:th|st|nd|rd)\b|/|-|people|of|units|pcs))", low)
    if m is None and bare:
        m = re.search(r"(?:^|\b(?:it|make it|instead|the|ok|okay|yes|fine|sure|then|so) )\s*"
                      + _WORD_NUM
                      + r"(?:\s*o'?clock)?\b(?!\s*(?:(?:th|st|nd|rd)\b|/|-|days?|weeks?))", low)
    if m:
        said = _hour_word(m.group(1))
        if said is not None and 1 <= said <= 12:
            return _office(said, 0, afternoon)
    return None


def _office(hour: int, minute: int, afternoon: bool) -> str | None:
    """A 12-hour reading in office hours: 1-6 is afternoon, as is any hour said with
    "afternoon"/"evening"."""
    if hour <= 12 and (afternoon or hour < 7) and hour < 12:
        hour += 12
    return _valid_hhmm(hour, minute)


def _valid_hhmm(hour: int, minute: int) -> str | None:
    return _hhmm(hour, minute) if 0 <= hour < 24 and 0 <= minute < 60 else None


def _hhmm(hour: int, minute: int) -> str:
    return f"{hour:02d}:{minute:02d}"


_PARTS = (("morning", ("morning", "first thing", "before work", "before lunch", "early",
                       " am ")),
          ("afternoon", ("afternoon", "after lunch", "lunchtime", "after school")),
          ("evening", ("evening", "after work", "tonight")))


def part_of_day(text: str) -> str | None:
    low = f" {text.lower()} "
    for part, cues in _PARTS:
        if any(c in low for c in cues):
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
    """The last weekday said that is not negated: "not tuesday, friday" is Friday."""
    found = [m for m in re.finditer(r"\b(next|this|on|coming)?\s*(" + "|".join(
        sorted(list(WEEKDAYS) + list(_WEEKDAY_SHORT), key=len, reverse=True)) + r")\b", low)
        if not re.search(r"\b(?:not|no|except|instead of|rather than)\s*(?:on\s+)?$",
                         low[:m.start(2)])]
    if not found:
        return None
    m = found[-1]
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


_ORDINALS = {"first": 0, "1st": 0, "second": 1, "2nd": 1, "third": 2, "3rd": 2, "fourth": 3,
             "4th": 3, "last": -1, "latest": -1, "earliest": 0}


def pick_listed(text: str, labels: list[str]) -> int | None:
    """Which of the items the last reply listed ``text`` refers to: "the second one", "the
    last", "the Brother one" (a word that names exactly one of them). None if it names
    none, or several."""
    if not labels:
        return None
    toks = words(text)
    for t in toks:
        if t in _ORDINALS and (t not in ("first", "last") or "one" in toks or len(toks) <= 4
                               or any(w in toks for w in ("the", "that"))):
            i = _ORDINALS[t]
            return i if i < len(labels) else None
    named = [i for i, label in enumerate(labels)
             if any(t in words(label) for t in toks if len(t) > 2 and t not in _COMMON)]
    distinct = {words(labels[i])[0] for i in named} if named else set()
    return named[0] if named and (len(named) == 1 or len(distinct) == 1) else None


_COMMON = frozenset(("the", "one", "with", "and", "for", "that", "this", "what", "about",
                     "have", "you", "how", "much", "black", "white", "blue", "red", "green",
                     "gray", "grey", "silver", "gold", "pink", "purple"))
