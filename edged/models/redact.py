"""What leaves the box: phone numbers, e-mail addresses and card numbers masked.

Applied to every text a remote alias sends (message contents, tool arguments and
results, embedding inputs). Card numbers are checked with the Luhn sum, so an order number
or a SKU of the same length stays; a phone number needs at least 8 digits and is not a
date, so prices, quantities and dates stay. Cards are masked before phones: a card number
also looks like a phone.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_PHONE = re.compile(r"(?<![\w+])(?:\+|00)?\d[\d ().-]{6,}\d(?!\w)")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> str | None:
    digits = re.sub(r"\D", "", m.group())
    return "[card]" if 13 <= len(digits) <= 19 and _luhn(digits) else None


_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")


def _phone(m: re.Match[str]) -> str | None:
    if _DATE.fullmatch(m.group().strip()):
        return None
    digits = re.sub(r"\D", "", m.group())
    return "[phone]" if 8 <= len(digits) <= 15 else None


class Redactor:
    def __init__(self, names: Sequence[str], patterns: Sequence[str]) -> None:
        self._rules: list[tuple[str, re.Pattern[str], Any]] = []
        if "email" in names:
            self._rules.append(("email", _EMAIL, lambda _m: "[email]"))
        if "card" in names:
            self._rules.append(("card", _CARD, _card))
        if "phone" in names:
            self._rules.append(("phone", _PHONE, _phone))
        for pattern in patterns:
            self._rules.append(("pattern", re.compile(pattern), lambda _m: "[redacted]"))

    def text(self, text: str, counts: Counter[str]) -> str:
        for name, pattern, replace in self._rules:
            def sub(m: re.Match[str], name: str = name, replace: Any = replace) -> str:
                out = replace(m)
                if out is None:
                    return m.group()
                counts[name] += 1
                return str(out)
            text = pattern.sub(sub, text)
        return text

    def messages(self, messages: list[dict[str, Any]], counts: Counter[str]
                 ) -> list[dict[str, Any]]:
        return [self._message(m, counts) for m in messages]

    def _message(self, m: dict[str, Any], counts: Counter[str]) -> dict[str, Any]:
        out = dict(m)
        content = m.get("content")
        if isinstance(content, str):
            out["content"] = self.text(content, counts)
        elif isinstance(content, list):
            out["content"] = [dict(p, text=self.text(p["text"], counts))
                              if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                              for p in content]
        if isinstance(m.get("tool_calls"), list):
            out["tool_calls"] = [self._call(c, counts) for c in m["tool_calls"]]
        if isinstance(m.get("function_call"), dict):
            out["function_call"] = self._function(m["function_call"], counts)
        return out

    def _call(self, call: Any, counts: Counter[str]) -> Any:
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            return call
        return dict(call, function=self._function(call["function"], counts))

    def _function(self, fn: dict[str, Any], counts: Counter[str]) -> dict[str, Any]:
        args = fn.get("arguments")
        return dict(fn, arguments=self.text(args, counts)) if isinstance(args, str) else fn
