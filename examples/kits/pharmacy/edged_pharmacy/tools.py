"""The pharmacy kit's options, tools and dialogue hooks."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from edged.agents.kit import Meaning, Override
from edged.agents.tickets import Tickets
from edged.agents.tools import JSON, Limits, Tool, ToolContext, collect, tool
from edged.errors import ConfigError, NotFound
from edged.tomlreader import Table

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
Day = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_HOURS = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d-(?:[01]\d|2[0-3]):[0-5]\d")
_RX = re.compile(r"\b(?:rx[\s#:-]*)?(\d{5,8})\b", re.IGNORECASE)
# Asking how much of a medicine to take is for the pharmacist, whatever the wording.
_DOSING = re.compile(r"\b(dose|dosage|doses|how (?:much|many)\b.*\b(?:take|give)|"
                     r"mg\b|milligram|double up|overdose|twice as much)\b", re.IGNORECASE)
DOSING_REPLY = ("I can't give advice on doses or how to take a medicine. Please ask the "
                "pharmacist at the counter, or call us.")
DOSING_GROUP = "dosing"


@dataclass(frozen=True)
class PharmacyOptions:
    hours: dict[str, str]  # day -> "09:00-18:00", or "closed"
    prescriptions: Path  # JSON: {"RX number": {"medicine", "status", "ready"?}}


def parse_options(t: Table) -> PharmacyOptions:
    """``hours`` (a table of day -> "HH:MM-HH:MM" or "closed") and ``prescriptions_file``."""
    raw = t.raw("hours", {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{t.key('hours')}: expected a table of day = \"09:00-18:00\"")
    hours: dict[str, str] = {}
    for day, value in raw.items():
        if day not in DAYS:
            raise ConfigError(f"{t.key('hours')}.{day}: not a day (expected one of "
                              f"{', '.join(DAYS)})")
        if not isinstance(value, str) or not (value == "closed" or _HOURS.fullmatch(value)):
            raise ConfigError(f"{t.key('hours')}.{day}: expected \"HH:MM-HH:MM\" or "
                              f"\"closed\", got {value!r}")
        hours[day] = value
    path = t.path("prescriptions_file")
    if not path.is_file():
        raise ConfigError(f"{t.key('prescriptions_file')}: {path} is not a file")
    return PharmacyOptions(hours, path)


def load_prescriptions(path: Path) -> dict[str, JSON]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"prescriptions_file: cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"prescriptions_file: {path} must hold an object of RX numbers")
    return {str(k): v for k, v in data.items() if isinstance(v, dict)}


class PharmacyTools:
    handoff = "request_refill"

    def __init__(self, options: PharmacyOptions, prescriptions: dict[str, JSON],
                 tickets: Tickets) -> None:
        self._options = options
        self._rx = prescriptions
        self._tickets = tickets

    def tools(self) -> list[Tool]:
        return collect(self)

    @tool
    async def check_prescription(
            self, ctx: ToolContext,
            rx_number: Annotated[str, Limits(max_length=12)]) -> JSON:
        """The status of a prescription: received, being filled or ready to collect.

        Args:
            rx_number: the prescription number on the label (5 to 8 digits)
        Keywords: prescription, ready, status, pick up, collect
        """
        rx = self._find(rx_number)
        status = str(rx.get("status", "received"))
        ready = " It is ready to collect at the counter." if status == "ready" else ""
        return {"rx_number": rx_number, "status": status, "found": True,
                "summary": f"Prescription {rx_number} ({rx.get('medicine', 'your medicine')})"
                           f" is {status.replace('_', ' ')}.{ready}"}

    @tool
    async def request_refill(
            self, ctx: ToolContext,
            rx_number: Annotated[str, Limits(max_length=12)]) -> JSON:
        """Ask the pharmacy team to refill a prescription; they confirm when it is ready.

        Args:
            rx_number: the prescription number on the label (5 to 8 digits)
        Keywords: refill, renew, repeat, more, run out, ran out
        """
        self._find(rx_number)
        ticket = await self._tickets.open(ctx.agent, "refill", {"rx_number": rx_number})
        return {"ticket": ticket, "rx_number": rx_number, "found": True,
                "summary": f"I've asked the team to refill prescription {rx_number} "
                           f"(request {ticket}); they'll tell you when it is ready."}

    @tool
    async def opening_hours(self, ctx: ToolContext, day: Day | None = None) -> JSON:
        """When the pharmacy is open, today or on a given day.

        Args:
            day: a day of the week
        Keywords: open, opening, hours, close, closing, when
        """
        days = [day] if day else [d for d in DAYS if d in self._options.hours]
        parts = [f"{d.capitalize()} {self._options.hours.get(d, 'closed')}" for d in days]
        return {"hours": {d: self._options.hours.get(d, "closed") for d in days},
                "summary": "We are open: " + "; ".join(parts) + "."}

    def _find(self, rx_number: str) -> JSON:
        rx = self._rx.get(rx_number)
        if rx is None:
            raise NotFound(f"I can't find prescription {rx_number}; please check the number "
                           "on the label.", code="unknown_prescription")
        return rx

    # -- dialogue hooks -------------------------------------------------------------------

    def extract(self, tool_name: str, text: str, state: JSON) -> JSON:
        if tool_name == "opening_hours":
            day = next((d for d in DAYS if d in text.lower()), None)
            return {"day": day} if day else {}
        m = _RX.search(text)
        if m:
            return {"rx_number": m.group(1)}
        last = state.get("rx_number")  # "is it ready?" after the refill: the same number
        return {"rx_number": last} if isinstance(last, str) else {}

    def check(self, tool_name: str, args: JSON) -> bool:
        return True  # an unknown number is answered by the tool itself, clearly

    def remember(self, tool_name: str, args: JSON, result: JSON, state: JSON) -> None:
        if "rx_number" in args:
            state["rx_number"] = args["rx_number"]

    def mask(self, text: str) -> str:
        return _RX.sub("RX", text)

    def mentions(self, text: str) -> bool:
        return bool(_RX.search(text)) or any(d in text.lower() for d in DAYS)

    def question(self, tool_name: str, slot: str) -> str | None:
        if slot == "rx_number":
            return "What is the prescription number on the label?"
        return None

    def exemplars(self) -> dict[str, list[str]]:
        return {DOSING_GROUP: [
            "how much of this should I take", "can I take two tablets instead of one",
            "what dose is right for my child", "is it safe to double the dose",
            "how many pills can I take a day", "should I take it with food or not",
            "can I take ibuprofen with my prescription", "I missed a dose, what do I do"]}

    def override(self, text: str, meaning: Meaning) -> Override | None:
        if _DOSING.search(text) or meaning.near(DOSING_GROUP, 0.72):
            return Override(None, {}, (DOSING_REPLY,))
        return None
